import NIOCore
import NIOPosix
import Synchronization

/// A TCP server inside the "firewall", run in the test process on 127.0.0.1 with an
/// OS-chosen port.
final class TargetServer: Sendable {
    /// What the server does with each connection.
    enum Behaviour: Sendable {
        /// Writes back whatever it reads; passes a half-close on after the echo.
        case echo
        /// Reads until end of stream, then writes the SHA-256 (hex) of what it read and a newline, then closes.
        case hashReply
        /// Writes `bytes` of ``TestData`` as fast as the peer takes them (honouring
        /// writability), then closes; ignores what it reads.
        case source(bytes: Int)
        /// Writes `bytesPerTick` bytes of ``TestData`` every `interval` until the peer closes:
        /// a slow, endless download for watching a live session.
        case trickle(bytesPerTick: Int, interval: Duration)
        /// Resets the connection (an abortive close) as soon as anything arrives.
        case resetOnRead
        /// Reads and drops everything, writes nothing, and stays open after the peer's FIN:
        /// only a close from the agent ends the connection.
        case silent
        /// Writes `greeting` and half-closes at once, then reads until end of stream, records
        /// the SHA-256 of what it read in ``Stats/sourceDigests``, and closes.
        case greetThenRead(greeting: String)
    }

    /// Counters shared by all connections.
    final class Stats: Sendable {
        let accepted = Atomic<Int>(0)
        let closed = Atomic<Int>(0)
        let bytesWritten = Atomic<Int>(0)
        let sourceDigests = Mutex<[String]>([])
        /// Signalled whenever a connection closes.
        let changes = Changes()
    }

    let channel: any Channel
    let stats: Stats
    var port: Int { self.channel.localAddress!.port! }

    private init(channel: any Channel, stats: Stats) {
        self.channel = channel
        self.stats = stats
    }

    static func start(_ behaviour: Behaviour, host: String = "127.0.0.1") async throws -> TargetServer {
        try await self.start(behaviour) { try await $0.bind(host: host, port: 0).get() }
    }

    /// Serves on a socket bound (not yet listening) elsewhere, e.g. inside a network
    /// namespace (``NetNamespace/boundSocket()``); the server owns the socket from now on.
    static func start(_ behaviour: Behaviour, boundSocket: NIOBSDSocket.Handle) async throws -> TargetServer {
        try await self.start(behaviour) { try await $0.withBoundSocket(boundSocket).get() }
    }

    private static func start(
        _ behaviour: Behaviour, listen: (ServerBootstrap) async throws -> any Channel
    ) async throws -> TargetServer {
        let stats = Stats()
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    stats.accepted.add(1, ordering: .relaxed)
                    channel.closeFuture.whenComplete { _ in
                        stats.closed.add(1, ordering: .relaxed)
                        stats.changes.notify()
                    }
                    let handler: any ChannelHandler =
                        switch behaviour {
                        case .echo: EchoHandler()
                        case .hashReply: HashReplyHandler()
                        case .source(let bytes): SourceHandler(total: bytes, stats: stats)
                        case .trickle(let bytes, let interval): TrickleHandler(bytesPerTick: bytes, interval: interval)
                        case .resetOnRead: ResetHandler()
                        case .silent: SilentHandler()
                        case .greetThenRead(let greeting): GreetThenReadHandler(greeting: greeting, stats: stats)
                        }
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        let channel = try await listen(bootstrap)
        return TargetServer(channel: channel, stats: stats)
    }

    /// A port on which nothing listens (bound, then closed again).
    static func closedPort() async throws -> Int {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).get()
        let port = channel.localAddress!.port!
        try await channel.close()
        return port
    }

    /// Waits until `count` connections have closed (counted when their close completes).
    func waitForClosed(_ count: Int, timeout: Duration = .seconds(5)) async throws {
        let reached = await self.stats.changes.wait(timeout: timeout) {
            self.stats.closed.load(ordering: .relaxed) >= count ? true : nil
        }
        if reached == nil {
            throw HarnessError(
                "only \(self.stats.closed.load(ordering: .relaxed)) of \(count) target connections closed")
        }
        let closed = self.stats.closed.load(ordering: .relaxed)
        if closed != count { throw HarnessError("\(closed) target connections closed, expected \(count)") }
    }

    func close() async {
        try? await self.channel.close()
    }
}

private final class EchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            context.close(mode: .output, promise: nil)
        }
    }
}

private final class HashReplyHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private var digest = Digest()

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.digest.update(self.unwrapInboundIn(data))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            let reply = ByteBuffer(string: self.digest.hex() + "\n")
            let channel = context.channel
            context.writeAndFlush(self.wrapOutboundOut(reply)).whenComplete { _ in
                channel.close(promise: nil)
            }
        }
    }
}

private final class SourceHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    static let chunk = 64 * 1024
    private let total: Int
    private let stats: TargetServer.Stats
    private var sent = 0
    private var finished = false
    private var digest = Digest()

    init(total: Int, stats: TargetServer.Stats) {
        self.total = total
        self.stats = stats
    }

    func channelActive(context: ChannelHandlerContext) {
        self.pump(context: context)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.pump(context: context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    private func pump(context: ChannelHandlerContext) {
        // A closed channel fails each write at once and stays "writable": without the
        // isActive check, an endless source whose peer died (its pending writes failed, which
        // raises writability) would loop here forever, hashing.
        while context.channel.isActive && context.channel.isWritable && self.sent < self.total {
            let count = min(Self.chunk, self.total - self.sent)
            let slice = TestData.slice(offset: self.sent, length: count)
            self.digest.update(slice)
            self.sent += count
            self.stats.bytesWritten.add(count, ordering: .relaxed)
            context.write(self.wrapOutboundOut(slice), promise: nil)
            // A write can re-enter `pump` (writability goes down, a flush drains the socket,
            // it comes back up), and the inner call may finish the stream: finish once.
            if self.sent == self.total && !self.finished {
                self.finished = true
                self.stats.sourceDigests.withLock { $0.append(self.digest.hex()) }
                let channel = context.channel
                context.writeAndFlush(self.wrapOutboundOut(ByteBuffer())).whenComplete { _ in
                    channel.close(promise: nil)
                }
                return
            }
        }
        context.flush()
    }
}

private final class TrickleHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let bytesPerTick: Int
    private let interval: TimeAmount
    private var sent = 0
    private var task: RepeatedTask?

    init(bytesPerTick: Int, interval: Duration) {
        self.bytesPerTick = bytesPerTick
        self.interval = .nanoseconds(
            Int64(interval.components.seconds) * 1_000_000_000 + interval.components.attoseconds / 1_000_000_000)
    }

    func channelActive(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        self.task = context.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: self.interval) { _ in
            let (handler, context) = loopBound.value
            let slice = TestData.slice(offset: handler.sent, length: handler.bytesPerTick)
            handler.sent += handler.bytesPerTick
            context.writeAndFlush(handler.wrapOutboundOut(slice), promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.task?.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

private final class ResetHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        TestClient.reset(context.channel)
    }
}

private final class SilentHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {}
}

private final class GreetThenReadHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let greeting: String
    private let stats: TargetServer.Stats
    private var digest = Digest()
    private var recorded = false

    init(greeting: String, stats: TargetServer.Stats) {
        self.greeting = greeting
        self.stats = stats
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: self.greeting)), promise: nil)
        context.close(mode: .output, promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.digest.update(self.unwrapInboundIn(data))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            self.record()
            context.close(promise: nil)
        }
    }

    /// With its output already shut, NIO may end the channel at the peer's FIN without an
    /// `inputClosed` first; an error ends it too, and then nothing is recorded.
    func channelInactive(context: ChannelHandlerContext) {
        self.record()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.recorded = true
        context.close(promise: nil)
    }

    private func record() {
        guard !self.recorded else { return }
        self.recorded = true
        let hex = self.digest.hex()
        self.stats.sourceDigests.withLock { $0.append(hex) }
    }
}
