import CRelayTLS

/// One TLS 1.3 session ticket from a relay (BoringSSL's `SSL_SESSION`, one reference owned),
/// with the time after which relay no longer offers it. Its contents never reach a log: it
/// describes itself without them.
final class TLSTicket: @unchecked Sendable, CustomStringConvertible {
    // @unchecked: BoringSSL's SSL_SESSION is immutable once issued and reference-counted
    // atomically, so one may be offered from any thread; the pointer itself never changes.
    let session: OpaquePointer
    let expires: ContinuousClock.Instant
    /// TLS 1.3 tickets are offered at most once (RFC 8446, appendix C.4).
    let singleUse: Bool

    /// Takes over one reference to `session`; `lifetime` caps the relay's own ticket lifetime.
    init(taking session: OpaquePointer, lifetime: Duration, now: ContinuousClock.Instant) {
        self.session = session
        let raw = UnsafeRawPointer(session)
        let own = Duration.seconds(Int64(relay_tls_session_timeout(raw)))
        self.expires = now + min(lifetime, own)
        self.singleUse = relay_tls_session_single_use(raw) == 1
    }

    deinit { relay_tls_session_free(UnsafeMutableRawPointer(session)) }

    var description: String { "TLSTicket(redacted)" }
}
