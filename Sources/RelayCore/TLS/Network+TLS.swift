import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization

/// One side of TLS on the agent port: the handler it puts on a connection, and how it
/// words a failed handshake.
public protocol TLSSide: Sendable {
    /// A TLS handler for one connection, made on the connection's event loop; a check of its
    /// own that fails the handshake leaves its reason in `slot`.
    func makeHandler(slot: TLSHandshakeSlot) throws -> any ChannelHandler
    /// A failed handshake with `peer`, as the one log line that says why.
    func explain(_ error: any Error, peer: String) -> String
    /// A handler to put right after `handler` (made by ``makeHandler(slot:)``, not yet in a
    /// pipeline), if any: the agent's resumption recorder.
    func companion(for handler: any ChannelHandler) -> (any ChannelHandler)?
}

extension TLSSide {
    public func companion(for handler: any ChannelHandler) -> (any ChannelHandler)? { nil }
}

/// Completes when the TLS handshake of its channel is done, or fails with its error.
final class TLSHandshakeWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    let done: EventLoopPromise<Void>

    init(eventLoop: any EventLoop) {
        self.done = eventLoop.makePromise()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event { self.done.succeed() }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.done.fail(error)
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.done.fail(ChannelError.eof)
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.done.fail(ChannelError.ioOnClosedChannel)
    }
}

/// The handshake promise of a connection being made, handed from its channel initializer
/// to the task that waits for it.
public final class TLSHandshakeSlot: Sendable {
    private let promise = Mutex<EventLoopPromise<Void>?>(nil)
    private let verdict = Mutex<(any Error)?>(nil)

    var value: EventLoopPromise<Void>? {
        get { self.promise.withLock { $0 } }
        set { self.promise.withLock { $0 = newValue } }
    }

    /// Why a check of the TLS side's own (a pin) failed the handshake: the reason to log
    /// rather than the TLS library's generic one.
    var failure: (any Error)? {
        get { self.verdict.withLock { $0 } }
        set { self.verdict.withLock { $0 = newValue } }
    }
}

extension Network {
    /// Puts `tls`'s handler and a handshake watcher on a new channel (on its event loop).
    static func addTLS(_ tls: any TLSSide, to channel: any Channel, slot: TLSHandshakeSlot) throws {
        let operations = channel.pipeline.syncOperations
        let watcher = TLSHandshakeWatcher(eventLoop: channel.eventLoop)
        let handler = try tls.makeHandler(slot: slot)
        let companion = tls.companion(for: handler)
        try operations.addHandler(handler)
        if let companion { try operations.addHandler(companion) }
        try operations.addHandler(watcher)
        slot.value = watcher.done
    }

    /// Waits for the TLS handshake of `connection` until `timeout`; on a failure closes the
    /// connection and throws a ``TLSFailure`` worded by `tls` for `peer`.
    static func completeHandshake(
        _ connection: TCPConnection, slot: TLSHandshakeSlot, tls: any TLSSide, peer: String, timeout: TimeAmount
    ) async throws -> TCPConnection {
        let channel = connection.channel
        do {
            guard let done = slot.value else { throw ChannelError.ioOnClosedChannel }
            let timer = channel.eventLoop.scheduleTask(in: timeout) {
                done.fail(TLSFailure("no TLS handshake within \(timeout.nanoseconds / 1_000_000) ms"))
            }
            defer { timer.cancel() }
            try await done.futureResult.get()
            return connection
        } catch {
            channel.close(promise: nil)
            try? await connection.executeThenClose { _, _ in }
            throw TLSFailure(tls.explain(slot.failure ?? error, peer: peer))
        }
    }

    /// Connects to `address` as ``dial(_:timeout:group:tuning:role:prepare:)`` does, then
    /// runs the TLS handshake of `tls` within the same `timeout`; throws a ``TLSFailure``
    /// saying why the relay was not talked to.
    public static func dial(
        _ address: HostPort, timeout: TimeAmount, group: any EventLoopGroup, tuning: TCPTuning = TCPTuning(),
        role: TCPTuning.Role = .data, tls: (any TLSSide)?
    ) async throws -> TCPConnection {
        guard let tls else {
            return try await self.dial(address, timeout: timeout, group: group, tuning: tuning, role: role)
        }
        let slot = TLSHandshakeSlot()
        let connection = try await self.dial(
            address, timeout: timeout, group: group, tuning: tuning, role: role,
            prepare: { try self.addTLS(tls, to: $0, slot: slot) })
        return try await self.completeHandshake(connection, slot: slot, tls: tls, peer: "\(address)", timeout: timeout)
    }

    /// Adopts an accepted socket into NIO with `tls`'s handler and runs the handshake until
    /// `deadline`; throws a ``TLSFailure`` saying why (with the peer's address).
    public static func adopt(
        _ socket: OwnedSocket, group: any EventLoopGroup, tls: any TLSSide, until deadline: ContinuousClock.Instant
    ) async throws -> TCPConnection {
        let slot = TLSHandshakeSlot()
        let connection = try await self.adopt(
            socket, group: group, prepare: { try self.addTLS(tls, to: $0, slot: slot) })
        let left = max(.zero, ContinuousClock.now.duration(to: deadline))
        return try await self.completeHandshake(
            connection, slot: slot, tls: tls, peer: socket.remote, timeout: .fromSeconds(left.inSeconds))
    }
}
