import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import RelayCore
import ServiceLifecycle
import Synchronization

/// Serves the Prometheus text at `GET /metrics` over plain HTTP/1.1 for a scraper (the
/// optional `metrics` config key). Anything else is answered 404 (or 405 for other methods).
public final class MetricsHTTPServer: Service, Sendable {
    /// The path served.
    public static let path = "/metrics"

    private let channel: any Channel
    /// The bound address (port chosen by the OS when 0 was asked).
    public let address: String

    private init(channel: any Channel) {
        self.channel = channel
        self.address = channel.localAddress?.displayString ?? "?"
    }

    /// Binds `address`; `render` produces the exposition text for each scrape. Connections
    /// past ``MetricsLimits/maxConnections`` are closed at once, idle ones after
    /// ``MetricsLimits/idleTimeout``, and a client that does not read its responses is not
    /// read from either (each hit counted in `limits`); a non-loopback address is warned about.
    /// `idleTimeout` is for tests; the daemons keep the default.
    public static func bind(
        _ address: HostPort,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger,
        limits: LimitCounters = LimitCounters(),
        idleTimeout: Duration = MetricsLimits.idleTimeout,
        render: @escaping @Sendable () -> String
    ) async throws -> MetricsHTTPServer {
        let channel: any Channel
        let open = Atomic<Int>(0)
        limits.declare([
            (MetricsLimits.connectionsName, Double(MetricsLimits.maxConnections)),
            (MetricsLimits.idleTimeoutName, idleTimeout.inSeconds),
        ])
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    if open.add(1, ordering: .relaxed).newValue > MetricsLimits.maxConnections {
                        open.subtract(1, ordering: .relaxed)
                        limits.hit(
                            MetricsLimits.connectionsName, logger: logger,
                            "metrics connection refused: \(MetricsLimits.maxConnections) are open")
                        return channel.close()
                    }
                    channel.closeFuture.whenComplete { _ in open.subtract(1, ordering: .relaxed) }
                    return channel.eventLoop.makeCompletedFuture {
                        let sync = channel.pipeline.syncOperations
                        try sync.addHandler(ReadOnlyWhenWritable())
                        try sync.addHandler(
                            IdleStateHandler(allTimeout: .nanoseconds(Int64(idleTimeout.inSeconds * 1e9)))
                        )
                        try sync.addHandler(CloseWhenIdle(idleTimeout: idleTimeout, limits: limits, logger: logger))
                        try sync.configureHTTPServerPipeline()
                        try sync.addHandler(MetricsHTTPHandler(render: render))
                    }
                }
                .bind(to: try address.resolve()).get()
        } catch {
            throw DaemonError("cannot listen on \(address) for metrics: \(Network.describe(error))")
        }
        let server = MetricsHTTPServer(channel: channel)
        logger.info("metrics listening", metadata: ["address": "\(server.address)", "path": "\(Self.path)"])
        if let warning = address.metricsExposureWarning { logger.warning("\(warning)") }
        return server
    }

    /// Serves until graceful shutdown or cancellation.
    public func run() async throws {
        try await withTaskCancellationOrGracefulShutdownHandler {
            try await self.channel.closeFuture.get()
        } onCancelOrGracefulShutdown: {
            self.channel.close(promise: nil)
        }
    }

    /// Closes the listener.
    public func close() {
        self.channel.close(promise: nil)
    }
}

/// The metrics endpoint's limits (named constants: the endpoint is for one scraper).
public enum MetricsLimits {
    /// The most connections open at once; more are closed as they are accepted.
    public static let maxConnections = 16
    /// A connection with no read or write for this long is closed.
    public static let idleTimeout = Duration.seconds(30)
    /// The most requests read but not yet answered on one connection (pipelined while the
    /// client reads no response); past it the connection is closed.
    public static let maxQueuedRequests = 1024
    /// The limits' names in `status` and metrics.
    public static let connectionsName = "metricsMaxConnections"
    public static let idleTimeoutName = "metricsIdleTimeoutSeconds"
    public static let queuedRequestsName = "metricsMaxQueuedRequests"
}

/// Backpressure: holds the next read from the socket while the channel is not writable (the
/// client does not read its responses), so pipelined requests stay in the client's socket
/// instead of becoming responses in memory.
private final class ReadOnlyWhenWritable: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    private var readHeld = false

    func read(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            context.read()
        } else {
            self.readHeld = true
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && self.readHeld {
            self.readHeld = false
            context.read()
        }
        context.fireChannelWritabilityChanged()
    }
}

/// Closes a connection on the idle event of its `IdleStateHandler`.
private final class CloseWhenIdle: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let idleTimeout: Duration
    private let limits: LimitCounters
    private let logger: Logger

    /// The timeout as the log line says it: "30", or "0.25" for a test's.
    private var idleSeconds: String {
        let seconds = self.idleTimeout.inSeconds
        return seconds == seconds.rounded() ? "\(Int(seconds))" : "\(seconds)"
    }

    init(idleTimeout: Duration, limits: LimitCounters, logger: Logger) {
        self.idleTimeout = idleTimeout
        self.limits = limits
        self.logger = logger
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            self.limits.hit(
                MetricsLimits.idleTimeoutName, logger: self.logger,
                "metrics connection closed: idle for \(self.idleSeconds)s")
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// One HTTP connection of the metrics endpoint. Requests are answered in order, each only
/// while the channel is writable: the others wait (as heads) until the client reads.
private final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let render: @Sendable () -> String
    private var head: HTTPRequestHead?
    private var queued: [HTTPRequestHead] = []

    init(render: @escaping @Sendable () -> String) {
        self.render = render
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            guard self.queued.count < MetricsLimits.maxQueuedRequests else {
                context.close(promise: nil)
                return
            }
            self.queued.append(head)
            self.answerQueued(context: context)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.answerQueued(context: context)
        context.fireChannelWritabilityChanged()
    }

    private func answerQueued(context: ChannelHandlerContext) {
        while context.channel.isWritable && context.channel.isActive && !self.queued.isEmpty {
            self.respond(to: self.queued.removeFirst(), context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        let status: HTTPResponseStatus
        let body: String
        var headers = HTTPHeaders()
        if path != MetricsHTTPServer.path {
            (status, body) = (.notFound, "not found: try \(MetricsHTTPServer.path)\n")
            headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        } else if head.method != .GET && head.method != .HEAD {
            (status, body) = (.methodNotAllowed, "use GET\n")
            headers.add(name: "Allow", value: "GET, HEAD")
            headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        } else {
            (status, body) = (.ok, self.render())
            headers.add(name: "Content-Type", value: RelayMetrics.contentType)
        }
        let bytes = ByteBuffer(string: body)
        headers.add(name: "Content-Length", value: "\(bytes.readableBytes)")
        if !head.isKeepAlive { headers.add(name: "Connection", value: "close") }
        context.write(
            self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
            promise: nil)
        if head.method != .HEAD { context.write(self.wrapOutboundOut(.body(.byteBuffer(bytes))), promise: nil) }
        let keepAlive = head.isKeepAlive
        let channel = context.channel
        context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }
}
