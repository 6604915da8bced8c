import FoundationEssentials
import Glibc
import NIOCore
import NIOPosix
import NIOSSL
import RelayDataPlane
import Synchronization

/// A TCP connection as the async code sees it: raw bytes in, raw bytes out.
public typealias TCPConnection = NIOAsyncChannel<ByteBuffer, ByteBuffer>

/// A listening socket yielding accepted connections.
public typealias TCPListener = NIOAsyncChannel<AcceptedConnection, Never>

/// A connection a listener accepted, until a handler takes it.
///
/// An `NIOAsyncChannel` must end in `executeThenClose`: dropped, its writer traps. NIO
/// drops the connections a listener accepted in the moment it closes (SIGTERM, a reload
/// that removes a service), and a cancelled accept loop drops those still queued. This
/// owner closes a connection nobody took, properly, so such a moment costs nothing more.
public final class AcceptedConnection: Sendable {
    private let connection: Mutex<TCPConnection?>

    init(_ connection: TCPConnection) {
        self.connection = Mutex(connection)
    }

    /// The connection, once: whoever takes it must run it through `executeThenClose`.
    public func take() -> TCPConnection? {
        self.connection.withLock { connection in
            defer { connection = nil }
            return connection
        }
    }

    deinit {
        if let untaken = self.connection.withLock({ $0 }) {
            Task { try? await untaken.executeThenClose { _, _ in } }
        }
    }
}

/// Making listeners and outgoing connections configured the same way everywhere.
public enum Network {
    /// The accept queue length asked of the kernel for every listener.
    public static let listenBacklog: Int32 = 1024

    /// How many received chunks a connection buffers before it stops reading from the
    /// socket (and the kernel's window closes): the bound on a session's buffered bytes,
    /// together with the largest read (64 KiB).
    public static let inboundHighWatermark = 8

    /// Every connection: half-close passed through as such, bounded inbound buffering.
    static let connectionConfiguration = NIOAsyncChannel<ByteBuffer, ByteBuffer>.Configuration(
        backPressureStrategy: .init(lowWatermark: 2, highWatermark: inboundHighWatermark),
        isOutboundHalfClosureEnabled: true,
        inboundType: ByteBuffer.self,
        outboundType: ByteBuffer.self
    )

    /// Binds a TCP listener on `address`; every accepted connection gets the `tuning` in
    /// force when it arrives (a reload changes it for new connections).
    public static func listen(
        on address: SocketAddress,
        group: any EventLoopGroup,
        tuning: @escaping @Sendable () -> TCPTuning = { TCPTuning() }
    ) async throws -> TCPListener {
        try await self.serverBootstrap(group: group).bind(to: address) { channel in
            self.wrapAccepted(channel, tuning: tuning())
        }
    }

    /// Connects to `address`, failing after `timeout`. A host name is resolved now, except
    /// `localhost` (and `*.localhost`), which is the loopback address whatever `/etc/hosts`
    /// says or lacks (RFC 6761): 127.0.0.1 first, then ::1. `prepare` runs on the new channel
    /// before it is wrapped (TLS puts its handler there).
    public static func dial(
        _ address: HostPort,
        timeout: TimeAmount,
        group: any EventLoopGroup,
        tuning: TCPTuning = TCPTuning(),
        role: TCPTuning.Role = .data,
        prepare: (@Sendable (any Channel) throws -> Void)? = nil
    ) async throws -> TCPConnection {
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
        // An address literal needs no resolver: NIO's would start a thread for each dial
        // (a TLS data channel is dialled once per session).
        if let literal = try? SocketAddress(ipAddress: address.host, port: address.port) {
            return try await bootstrap.connect(to: literal) { channel in
                self.wrap(channel, tuning: tuning, role: role, prepare: prepare)
            }
        }
        guard address.isLocalhost else {
            return try await bootstrap.connect(host: address.host, port: address.port) { channel in
                self.wrap(channel, tuning: tuning, role: role, prepare: prepare)
            }
        }
        var firstError: (any Error)?
        for loopback in ["127.0.0.1", "::1"] {
            do {
                let socketAddress = try SocketAddress(ipAddress: loopback, port: address.port)
                return try await bootstrap.connect(to: socketAddress) { channel in
                    self.wrap(channel, tuning: tuning, role: role, prepare: prepare)
                }
            } catch {
                firstError = firstError ?? error
            }
        }
        throw firstError!
    }

    /// Adopts a connected socket the daemon owns into NIO (a control channel, or a session
    /// pumped in user space): NIO owns the descriptor from then on and closes it.
    /// `prepare` runs on the new channel before it is wrapped (TLS puts its handler there).
    public static func adopt(
        _ socket: OwnedSocket, group: any EventLoopGroup, prepare: (@Sendable (any Channel) throws -> Void)? = nil
    ) async throws -> TCPConnection {
        guard let descriptor = socket.take() else { throw SocketIOError.closed }
        return try await ClientBootstrap(group: group)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .withConnectedSocket(descriptor.rawValue) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try prepare?(channel)
                    return try TCPConnection(
                        wrappingChannelSynchronously: channel, configuration: self.connectionConfiguration)
                }
            }
    }

    /// A network error in a few lowercase words ("connection refused", "timed out").
    public static func describe(_ error: any Error) -> String {
        if let error = error as? SocketIOError { return error.description }
        if error is NIOSSLError || error is BoringSSLError { return "TLS: " + TLSFailure.common(error) }
        if let error = error as? SystemError { return SystemError.describe(error.code) }
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)).lowercased() }
        if let error = error as? ChannelError, case .connectTimeout = error { return "timed out" }
        if let error = error as? NIOConnectionError {
            if let first = error.connectionErrors.first { return self.describe(first.error) }
            if error.dnsAAAAError != nil || error.dnsAError != nil { return "cannot resolve the host name" }
        }
        return "\(error)"
    }

    private static func serverBootstrap(group: any EventLoopGroup) -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: self.listenBacklog)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
    }

    private static func wrap(
        _ channel: any Channel, tuning: TCPTuning, role: TCPTuning.Role,
        prepare: (@Sendable (any Channel) throws -> Void)?
    ) -> EventLoopFuture<TCPConnection> {
        channel.eventLoop.makeCompletedFuture {
            try tuning.apply(to: channel, role: role)
            try prepare?(channel)
            return try TCPConnection(wrappingChannelSynchronously: channel, configuration: self.connectionConfiguration)
        }
    }

    /// An accepted child, wrapped as soon as it exists (so no read is missed) and owned
    /// until a handler takes it; a TCP child gets `tuning` for a session connection (the
    /// agent port upgrades a control channel's once it knows).
    static func wrapAccepted(
        _ channel: any Channel,
        tuning: TCPTuning? = nil,
        configuration: TCPConnection.Configuration = Network.connectionConfiguration
    ) -> EventLoopFuture<AcceptedConnection> {
        channel.eventLoop.makeCompletedFuture {
            try tuning?.apply(to: channel, role: .data)
            return AcceptedConnection(
                try TCPConnection(wrappingChannelSynchronously: channel, configuration: configuration))
        }
    }
}

extension TimeAmount {
    /// A time amount from seconds given as a `Double` (config values).
    public static func fromSeconds(_ seconds: Double) -> TimeAmount {
        .nanoseconds(Int64(seconds * 1_000_000_000))
    }
}

extension Duration {
    /// The duration in seconds, as a `Double`.
    public var inSeconds: Double {
        let parts = self.components
        return Double(parts.seconds) + Double(parts.attoseconds) / 1e18
    }
}
