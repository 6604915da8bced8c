import CRelayTLS
import NIOCore
import NIOSSL
import NIOTLS
import Synchronization

/// TLS 1.3 session resumption for the agent's connections to one relay: the relay's tickets go
/// into a `TLSSessionCache`, and each new data channel offers one, so its handshake skips the
/// relay's certificate (no signature, no chain or pin check) while still agreeing fresh keys
/// (PSK with (EC)DHE). Why it reaches inside swift-nio-ssl: docs/architecture.md, "TLS session
/// resumption".
///
/// Make one per client `NIOSSLContext`, right after creating the context and before any
/// handshake uses it (it turns on BoringSSL's client session callbacks on the context). Every
/// handler passed to `prepare` must come from that context and verify the relay the same way
/// (server name, pin): a ticket only exists after a handshake that verified the relay, and is
/// only offered on the context, and so to the relay and verification, it came from.
/// Whatever fails on the way (an unexpected swift-nio-ssl, a ticket the relay refuses), the
/// connection makes a full handshake with full verification.
public final class TLSResumption: Sendable {
    /// Why resumption is off, or nil when it is on.
    public let unavailableReason: String?
    public let cache: TLSSessionCache
    /// The client context whose connections resume.
    public let context: NIOSSLContext
    // The context's SSL_CTX, only compared with each handler's (never dereferenced here).
    private let contextAddress: UInt
    private let resumedCount = Atomic<Int>(0)
    private let fullCount = Atomic<Int>(0)

    /// Handshakes that resumed a session.
    public var resumed: Int { resumedCount.load(ordering: .relaxed) }
    /// Handshakes made in full (no ticket, a ticket refused, or resumption off).
    public var fullHandshakes: Int { fullCount.load(ordering: .relaxed) }

    /// `enabled` false: every handshake is a full one (still counted), as with `tls.resumption`
    /// false in relay-agent.json.
    public init(context: NIOSSLContext, enabled: Bool = true, cache: TLSSessionCache = TLSSessionCache()) {
        self.context = context
        self.cache = cache
        var reason: String? = nil
        var address: UInt = 0
        if !enabled {
            reason = "turned off (tls.resumption is false)"
        } else if relay_tls_setup(tlsTicketArrived, tlsTicketSinkReleased) != 1 {
            reason = "BoringSSL has no ex_data index left"
        } else if let probe = try? NIOSSLClientHandler(context: context, serverHostname: nil),
            let ssl = NIOSSLInternals.sslPointer(of: probe),
            relay_tls_is_fresh_client(UnsafeRawPointer(ssl)) == 1,
            let ctx = relay_tls_ssl_context(UnsafeRawPointer(ssl))
        {
            relay_tls_enable_client_sessions(ctx)
            address = UInt(bitPattern: ctx)
        } else {
            reason = "this swift-nio-ssl does not expose its SSL object the way relay expects"
        }
        self.unavailableReason = reason
        self.contextAddress = address
    }

    /// Readies `handler` (new, from this context, not yet in a pipeline) to resume a session and
    /// to hand its tickets to the cache. Returns the handler to add right after it, which
    /// counts whether the handshake resumed.
    public func prepare(_ handler: NIOSSLClientHandler) -> TLSResumptionRecorder {
        guard unavailableReason == nil, let ssl = NIOSSLInternals.sslPointer(of: handler),
            relay_tls_is_fresh_client(UnsafeRawPointer(ssl)) == 1,
            let ctx = relay_tls_ssl_context(UnsafeRawPointer(ssl)), UInt(bitPattern: ctx) == contextAddress
        else { return TLSResumptionRecorder(owner: self, ssl: nil) }
        let sink = Unmanaged.passRetained(TLSTicketSink(cache: cache)).toOpaque()
        if relay_tls_attach_sink(UnsafeMutableRawPointer(ssl), sink) != 1 {
            Unmanaged<TLSTicketSink>.fromOpaque(sink).release()
        }
        if let ticket = cache.take() {
            // BoringSSL takes its own reference; the ticket's is released with it.
            _ = relay_tls_set_session(UnsafeMutableRawPointer(ssl), UnsafeMutableRawPointer(ticket.session))
        }
        return TLSResumptionRecorder(owner: self, ssl: ssl)
    }

    fileprivate func record(resumed: Bool) {
        if resumed {
            resumedCount.add(1, ordering: .relaxed)
        } else {
            fullCount.add(1, ordering: .relaxed)
        }
    }
}

/// Counts, once the TLS handshake before it in the pipeline finishes, whether it resumed.
public final class TLSResumptionRecorder: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    // @unchecked: used on its channel's event loop only, like every channel handler; the
    // pointer is only read while the NIOSSLHandler that owns it delivers the event.
    public typealias InboundIn = NIOAny
    private let owner: TLSResumption
    private var ssl: OpaquePointer?
    private var recorded = false

    fileprivate init(owner: TLSResumption, ssl: OpaquePointer?) {
        self.owner = owner
        self.ssl = ssl
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tls = event as? TLSUserEvent, case .handshakeCompleted = tls, !recorded {
            recorded = true
            owner.record(resumed: ssl.map { relay_tls_session_reused(UnsafeRawPointer($0)) == 1 } ?? false)
            ssl = nil
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Where one connection's tickets go: retained by its `SSL` (ex_data), released when it is freed.
final class TLSTicketSink: Sendable {
    let cache: TLSSessionCache
    init(cache: TLSSessionCache) { self.cache = cache }

    func receive(_ session: OpaquePointer) -> Bool {
        guard relay_tls_session_is_resumable(UnsafeRawPointer(session)) == 1 else { return false }
        cache.store(TLSTicket(taking: session, lifetime: cache.maxAge, now: .now))
        return true
    }
}

private let tlsTicketArrived: relay_tls_session_sink_fn = { sink, session in
    guard let sink, let session else { return 0 }
    return Unmanaged<TLSTicketSink>.fromOpaque(sink).takeUnretainedValue().receive(OpaquePointer(session)) ? 1 : 0
}

private let tlsTicketSinkReleased: relay_tls_sink_release_fn = { sink in
    guard let sink else { return }
    Unmanaged<TLSTicketSink>.fromOpaque(sink).release()
}
