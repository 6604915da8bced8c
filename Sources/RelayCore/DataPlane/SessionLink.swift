import NIOCore
import Synchronization

/// One side of a session as a data plane takes it: a socket the daemon owns (which the
/// splice plane can join in the kernel), or a connection already adopted into NIO, such as
/// a TLS data channel, whose bytes can only be pumped in user space.
public enum SessionLink: Sendable, CustomStringConvertible {
    /// An owned descriptor; bytes read past its handshake line are its ``OwnedSocket/pending``.
    case socket(OwnedSocket)
    /// A connection in NIO; bytes read past its handshake line wait in its reader.
    case adopted(AdoptedConnection)

    /// The peer's address, as logged.
    public var remote: String {
        switch self {
        case .socket(let socket): socket.remote
        case .adopted(let connection): connection.remote
        }
    }

    /// The connection's own address, as logged.
    public var local: String {
        switch self {
        case .socket(let socket): socket.local
        case .adopted(let connection): connection.local
        }
    }

    /// Aborts the connection (the peer sees a reset); safe from any thread at any moment.
    public func reset() {
        switch self {
        case .socket(let socket): socket.reset()
        case .adopted(let connection): connection.reset()
        }
    }

    /// Closes the connection unless a data plane took it (the owner's last step).
    public func close() {
        switch self {
        case .socket(let socket): socket.close()
        case .adopted(let connection): connection.release()
        }
    }

    public var description: String { self.remote }
}

/// A connection adopted into NIO that runs inside its own `executeThenClose` until it is
/// released: the handshake reads and writes through its ``endpoint()``, then a data plane
/// pumps the same endpoint (bytes already read past the handshake line come first) and
/// releases it when the pump ends. Releasing closes it; so does a close of its channel.
/// Every owner path must end in ``release()`` or ``reset()``.
public final class AdoptedConnection: Sendable {
    /// The channel, for resets and timers.
    public let channel: any Channel
    /// The peer's address, as logged.
    public let remote: String
    /// The connection's own address, as logged.
    public let local: String
    private let ready: EventLoopPromise<PumpEndpoint>
    private let released: EventLoopPromise<Void>
    private let isReleased = Mutex(false)

    /// Takes `connection` and enters its `executeThenClose` at once.
    public init(_ connection: TCPConnection) {
        let channel = connection.channel
        self.channel = channel
        self.remote = channel.remoteAddress?.displayString ?? "?"
        self.local = channel.localAddress?.displayString ?? "?"
        self.ready = channel.eventLoop.makePromise()
        self.released = channel.eventLoop.makePromise()
        let (ready, released) = (self.ready, self.released)
        Task {
            do {
                try await connection.executeThenClose { inbound, outbound in
                    ready.succeed(PumpEndpoint(channel: channel, reader: InboundReader(inbound), writer: outbound))
                    try? await released.futureResult.get()
                }
            } catch {
                ready.fail(error)
            }
            ready.fail(SocketIOError.closed)
        }
        channel.closeFuture.whenComplete { [weak self] _ in self?.release() }
    }

    /// The connection's reader and writer, once its `executeThenClose` runs.
    public func endpoint() async throws -> PumpEndpoint {
        try await self.ready.futureResult.get()
    }

    /// Ends the connection's `executeThenClose`, which closes it; once, from any thread.
    public func release() {
        let first = self.isReleased.withLock { released in
            defer { released = true }
            return !released
        }
        if first { self.released.succeed() }
    }

    /// Aborts the connection (the peer sees a reset) and releases it.
    public func reset() {
        self.channel.abort()
        self.release()
    }
}
