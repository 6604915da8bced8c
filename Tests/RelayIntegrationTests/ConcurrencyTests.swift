import NIOCore
import RelayCore
import Testing

/// Many sessions at once, and several agents with several services each.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ConcurrencyTests {
    init() { DaemonSupport.raiseDescriptorLimit() }

    @Test func fiveHundredConcurrentSessionsToOneService() async throws {
        let target = try await TargetServer.start(.echo)
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "echo", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["echo": target.port])
            let proxyBaseline = relay.proxy.openDescriptors
            let agentBaseline = agent.openDescriptors
            let port = relay.servicePort("echo")
            let sessions = 500
            let start = ContinuousClock.now
            let correct = try await withThrowingTaskGroup(of: Bool.self) { group in
                for _ in 0..<sessions {
                    group.addTask {
                        let message = TestData.random(4096)
                        return try await TestClient.exchange(port: port, request: message) == message
                    }
                }
                return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
            }
            print("figure: \(sessions) concurrent echo sessions in \(ContinuousClock.now - start)")
            #expect(correct == sessions)
            try await relay.proxy.waitForLine(containing: "session closed", count: sessions)
            #expect(target.stats.accepted.load(ordering: .relaxed) == sessions)
            try await relay.proxy.waitForDescriptors(atMost: proxyBaseline)
            try await agent.waitForDescriptors(atMost: agentBaseline)
            try await relay.expectNothingLeftOpen(since: relay.baseline())
        }
    }

    @Test func twoAgentsWithSeveralServicesEachAtOnce() async throws {
        let echo = try await TargetServer.start(.echo)
        let hasher = try await TargetServer.start(.hashReply)
        let source = try await TargetServer.start(.source(bytes: 1_000_000))
        defer { Task { for server in [echo, hasher, source] { await server.close() } } }
        try await withFixture(
            agents: [
                .init(id: "alpha", secret: "alpha-secret-0123456789"),
                .init(id: "beta", secret: "beta-secret-0123456789"),
            ],
            services: [
                .init(name: "a-echo", agent: "alpha"), .init(name: "a-hash", agent: "alpha"),
                .init(name: "b-echo", agent: "beta"), .init(name: "b-source", agent: "beta"),
            ]
        ) { relay in
            try await relay.startProxy()
            try await relay.startAgent(id: "alpha", services: ["a-echo": echo.port, "a-hash": hasher.port])
            try await relay.startAgent(id: "beta", services: ["b-echo": echo.port, "b-source": source.port])
            let baseline = relay.baseline()
            let ports = relay.servicePorts
            let rounds = 20
            let results = try await withThrowingTaskGroup(of: (String, Bool).self) { group in
                for _ in 0..<rounds {
                    for service in ["a-echo", "b-echo"] {
                        group.addTask {
                            let message = TestData.random(10_000)
                            return (
                                service,
                                try await TestClient.exchange(port: ports[service]!, request: message) == message
                            )
                        }
                    }
                    group.addTask {
                        let message = TestData.random(50_000)
                        var digest = Digest()
                        digest.update(ByteBuffer(bytes: message))
                        let reply = try await TestClient.exchange(port: ports["a-hash"]!, request: message)
                        return ("a-hash", String(decoding: reply, as: UTF8.self) == digest.hex() + "\n")
                    }
                    group.addTask {
                        let reply = try await TestClient.exchange(port: ports["b-source"]!, request: [])
                        var digest = Digest()
                        digest.update(ByteBuffer(bytes: reply))
                        return (
                            "b-source",
                            reply.count == 1_000_000
                                && source.stats.sourceDigests.withLock { $0.contains(digest.hex()) }
                        )
                    }
                }
                var results: [String: Int] = [:]
                for try await (service, ok) in group where ok { results[service, default: 0] += 1 }
                return results
            }
            #expect(results == ["a-echo": rounds, "a-hash": rounds, "b-echo": rounds, "b-source": rounds])
            #expect(relay.proxy.lines(containing: "session open", "agent=alpha").count == 2 * rounds)
            #expect(relay.proxy.lines(containing: "session open", "agent=beta").count == 2 * rounds)
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }
}
