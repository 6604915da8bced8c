import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Testing

@testable import RelayCore

/// TLS 1.3 session resumption between swift-nio-ssl's own server and the agent's client side
/// (`TLSResumption`), on real loopback connections.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct TLSResumptionTests {
    static let serverName = "relay.test"

    @Test func theSSLObjectOfAHandlerIsReachable() throws {
        // Fails loudly when swift-nio-ssl's private layout changes (NIOSSLHandler+SSLPointer.swift).
        let identity = try TLSTestIdentity(name: Self.serverName)
        let handler = try NIOSSLClientHandler(context: try identity.clientContext(), serverHostname: Self.serverName)
        #expect(NIOSSLInternals.sslPointer(of: handler) != nil)
        #expect(TLSResumption(context: try identity.clientContext()).unavailableReason == nil)
    }

    @Test func theSecondConnectionResumes() async throws {
        let identity = try TLSTestIdentity(name: Self.serverName)
        let server = try await TLSEchoServer.start(context: try identity.serverContext())
        let resumption = TLSResumption(context: try identity.clientContext())
        _ = try await TLSProbe.firstByte(port: server.port, resumption: resumption)
        #expect(resumption.cache.count > 0, "the relay's tickets reached the cache")
        #expect(resumption.fullHandshakes == 1 && resumption.resumed == 0)
        _ = try await TLSProbe.firstByte(port: server.port, resumption: resumption)
        #expect(resumption.resumed == 1, "the second connection resumed")
        #expect(resumption.fullHandshakes == 1)
        try await server.close()
    }

    @Test func aTicketTheRelayCannotReadFallsBackToAFullHandshake() async throws {
        // A relay restarted with new ticket keys (a new server context) refuses the ticket:
        // the connection still succeeds, in full.
        let identity = try TLSTestIdentity(name: Self.serverName)
        let first = try await TLSEchoServer.start(context: try identity.serverContext())
        let resumption = TLSResumption(context: try identity.clientContext())
        _ = try await TLSProbe.firstByte(port: first.port, resumption: resumption)
        try await first.close()
        let second = try await TLSEchoServer.start(context: try identity.serverContext())
        _ = try await TLSProbe.firstByte(port: second.port, resumption: resumption)
        #expect(resumption.resumed == 0 && resumption.fullHandshakes == 2)
        try await second.close()
    }

    @Test func aTicketNeverExcusesAnotherServerFromVerification() async throws {
        // An impostor on the relay's address with its own certificate gets the ticket offered,
        // cannot use it, and fails the full handshake's verification.
        let identity = try TLSTestIdentity(name: Self.serverName)
        let relay = try await TLSEchoServer.start(context: try identity.serverContext())
        let resumption = TLSResumption(context: try identity.clientContext())
        _ = try await TLSProbe.firstByte(port: relay.port, resumption: resumption)
        #expect(resumption.cache.count > 0)
        let impostor = try await TLSEchoServer.start(
            context: try TLSTestIdentity(name: Self.serverName).serverContext())
        await #expect(throws: (any Error).self) {
            _ = try await TLSProbe.firstByte(port: impostor.port, resumption: resumption)
        }
        #expect(resumption.resumed == 0)
        try await relay.close()
        try await impostor.close()
    }

    @Test func theCacheIsBoundedInEntriesAndAge() async throws {
        let identity = try TLSTestIdentity(name: Self.serverName)
        let server = try await TLSEchoServer.start(context: try identity.serverContext())
        let bounded = TLSResumption(context: try identity.clientContext(), cache: TLSSessionCache(maxEntries: 1))
        for _ in 0..<3 { _ = try await TLSProbe.firstByte(port: server.port, resumption: bounded) }
        #expect(bounded.cache.count == 1)
        let expiring = TLSResumption(context: try identity.clientContext(), cache: TLSSessionCache(maxAge: .zero))
        _ = try await TLSProbe.firstByte(port: server.port, resumption: expiring)
        _ = try await TLSProbe.firstByte(port: server.port, resumption: expiring)
        #expect(expiring.resumed == 0 && expiring.fullHandshakes == 2, "an expired ticket is not offered")
        #expect(expiring.cache.take() == nil)
        try await server.close()
    }

    @Test func timeToFirstByteWithAndWithoutResumption() async throws {
        // Printed, not asserted on: performance goals live in scripts/bench. The two kinds
        // alternate, so that both see the same machine.
        let sessions = 60
        let identity = try TLSTestIdentity(name: Self.serverName)
        let server = try await TLSEchoServer.start(context: try identity.serverContext())
        let context = try identity.clientContext()
        let resumption = TLSResumption(context: try identity.clientContext())
        _ = try await TLSProbe.firstByte(port: server.port, resumption: resumption)
        var full: [Duration] = []
        var resumed: [Duration] = []
        for _ in 0..<sessions {
            full.append(try await TLSProbe.firstByte(port: server.port, context: context))
            resumed.append(try await TLSProbe.firstByte(port: server.port, resumption: resumption))
        }
        #expect(resumption.resumed == sessions)
        print(
            "TTFB on loopback (swift-nio-ssl server, P-256 certificate): full handshake \(median(full)), "
                + "resumed \(median(resumed)) (medians over \(sessions) sessions each)")
        try await server.close()
    }

    private func median(_ values: [Duration]) -> String {
        let sorted = values.sorted()
        let middle = sorted[sorted.count / 2]
        let ms = Double(middle.components.seconds) * 1000 + Double(middle.components.attoseconds) / 1e15
        return "\((ms * 1000).rounded() / 1000) ms"
    }
}

/// A TLS server on 127.0.0.1 that writes one byte to each client once its handshake is done.
struct TLSEchoServer {
    let channel: Channel
    var port: Int { channel.localAddress?.port ?? 0 }

    static func start(context: NIOSSLContext) async throws -> TLSEchoServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                    try child.pipeline.syncOperations.addHandler(GreetOnHandshake())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return TLSEchoServer(channel: channel)
    }

    func close() async throws { try await channel.close() }

    final class GreetOnHandshake: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let tls = event as? TLSUserEvent, case .handshakeCompleted = tls {
                context.writeAndFlush(NIOAny(context.channel.allocator.buffer(string: "!")), promise: nil)
            }
            context.fireUserInboundEventTriggered(event)
        }
        func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
    }
}

/// One client connection: the time from dialling to the server's first byte.
enum TLSProbe {
    static func firstByte(port: Int, resumption: TLSResumption) async throws -> Duration {
        try await firstByte(port: port, make: { resumption.context }, prepare: { resumption.prepare($0) })
    }

    static func firstByte(port: Int, context: NIOSSLContext) async throws -> Duration {
        try await firstByte(port: port, make: { context }, prepare: { _ in nil })
    }

    private static func firstByte(
        port: Int, make: () throws -> NIOSSLContext,
        prepare: @escaping @Sendable (NIOSSLClientHandler) -> TLSResumptionRecorder?
    ) async throws -> Duration {
        let context = try make()
        let started = ContinuousClock.now
        let promise = MultiThreadedEventLoopGroup.singleton.any().makePromise(of: Void.self)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let tls = try NIOSSLClientHandler(context: context, serverHostname: TLSResumptionTests.serverName)
                    let recorder = prepare(tls)
                    try channel.pipeline.syncOperations.addHandler(tls)
                    if let recorder { try channel.pipeline.syncOperations.addHandler(recorder) }
                    try channel.pipeline.syncOperations.addHandler(FirstByte(promise: promise))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        defer { channel.close(promise: nil) }
        try await promise.futureResult.get()
        return ContinuousClock.now - started
    }

    final class FirstByte: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let promise: EventLoopPromise<Void>
        var settled = false
        init(promise: EventLoopPromise<Void>) { self.promise = promise }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { settle(.success(())) }
        func errorCaught(context: ChannelHandlerContext, error: Error) {
            settle(.failure(error))
            context.close(promise: nil)
        }
        func channelInactive(context: ChannelHandlerContext) {
            settle(.failure(ChannelError.inputClosed))
            context.fireChannelInactive()
        }
        private func settle(_ result: Result<Void, Error>) {
            guard !settled else { return }
            settled = true
            promise.completeWith(result)
        }
    }
}
