import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import RelayCore
import ServiceLifecycle

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

    /// Binds `address`; `render` produces the exposition text for each scrape.
    public static func bind(
        _ address: HostPort,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger,
        render: @escaping @Sendable () -> String
    ) async throws -> MetricsHTTPServer {
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                        try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(render: render))
                    }
                }
                .bind(to: try address.resolve()).get()
        } catch {
            throw DaemonError("cannot listen on \(address) for metrics: \(Network.describe(error))")
        }
        let server = MetricsHTTPServer(channel: channel)
        logger.info("metrics listening", metadata: ["address": "\(server.address)", "path": "\(Self.path)"])
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

/// One HTTP connection of the metrics endpoint.
private final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let render: @Sendable () -> String
    private var head: HTTPRequestHead?

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
            self.respond(to: head, context: context)
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
