import Foundation
import NIOCore
import RelayProtocol
import Testing

/// A `connect` carries the relay's clock stamp and how long the relay waits for it: an agent
/// that was stalled (SIGSTOP here; a swap storm in life) drops the ones whose clients are
/// long gone instead of dialling the target for each.
@Suite(.serialized) struct StaleConnectTests {
    static let clients = 20
    static let attachTimeout = 1.0

    @Test func aStalledAgentDropsConnectsWhoseClientsGaveUp() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "web", agent: "office")],
            proxyOptions: ["attachTimeoutSeconds": Self.attachTimeout]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["web": echo.port])
            // Warm: one session served, so that the channel has clock samples from heartbeats too.
            let hello = TestData.random(100)
            #expect(try await TestClient.exchange(port: relay.servicePort("web"), request: hello) == hello)
            #expect(echo.stats.accepted.load(ordering: .relaxed) == 1)

            agent.signal(SIGSTOP)
            var resumed = false
            defer { if !resumed { agent.signal(SIGCONT) } }
            // Clients that connect while the agent is stalled; the relay gives up on each
            // after its attach timeout and closes it.
            let started = ContinuousClock.now
            let port = relay.servicePort("web")
            try await withThrowingTaskGroup(of: Duration.self) { group in
                for _ in 0..<Self.clients {
                    group.addTask { try await TestClient.timeUntilClosed(port: port) }
                }
                for try await _ in group {}
            }
            try await relay.proxy.waitForLine(containing: "session failed", count: Self.clients)
            print(
                "figure: \(Self.clients) clients gave up after \(ContinuousClock.now - started) with the agent stopped")
            // Not a synchronisation: the stall goes on a while past the relay giving up, as a
            // real one would (a connect judged right at its expiry could go either way).
            try await Task.sleep(for: .milliseconds(500))
            agent.signal(SIGCONT)
            resumed = true

            try await agent.waitForLine(containing: "dropped stale connect", "target not dialled")
            // A fresh client afterwards is served; its connect came after all the stale ones
            // on the same control channel, so they have all been judged by now.
            let fresh = TestData.random(1000)
            #expect(try await TestClient.exchange(port: relay.servicePort("web"), request: fresh) == fresh)
            // Two target connections are the warm-up's and the fresh client's.
            let dialled = echo.stats.accepted.load(ordering: .relaxed) - 2
            print("figure: target connections for the \(Self.clients) stale connects: \(dialled)")
            #expect(dialled == 0, "the agent dialled the target for stale connects")
            #expect(agent.lines(containing: "session open").count == 2)
        }
    }
}
