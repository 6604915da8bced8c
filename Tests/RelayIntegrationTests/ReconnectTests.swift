import Foundation
import NIOCore
import Testing

/// The agent comes back after it is killed, and finds the relay again after the relay restarts.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct ReconnectTests {
    /// Repeats an echo exchange until it succeeds, returning how long that took.
    private func timeUntilEchoWorks(port: Int, limit: Duration) async throws -> Duration {
        let start = ContinuousClock.now
        while ContinuousClock.now - start < limit {
            let message = TestData.random(100)
            if (try? await TestClient.exchange(port: port, request: message)) == message {
                return ContinuousClock.now - start
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw HarnessError("the tunnel did not work again within \(limit)")
    }

    @Test func agentKilledWithSIGKILLThenRestartedWorksWithinFiveSeconds() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret")], services: [.init(name: "web", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let first = try await relay.startAgent(id: "office", services: ["web": echo.port])
            let port = relay.servicePort("web")
            #expect(try await TestClient.exchange(port: port, request: Array("hello".utf8)) == Array("hello".utf8))
            first.signal(SIGKILL)
            try await first.waitForExit()
            try await relay.proxy.waitForLine(containing: "agent disconnected", "agent=office")
            // With the agent gone, clients are refused at once rather than left hanging.
            #expect(try await TestClient.timeUntilClosed(port: port) < .seconds(2))

            let restart = ContinuousClock.now
            try await relay.startAgent(id: "office", services: ["web": echo.port], waitForRegistration: false)
            _ = try await self.timeUntilEchoWorks(port: port, limit: .seconds(5))
            let elapsed = ContinuousClock.now - restart
            print("figure: tunnel working again \(elapsed) after the agent restart")
            #expect(elapsed < .seconds(5))
            let baseline = relay.baseline()
            #expect(try await TestClient.exchange(port: port, request: Array("again".utf8)) == Array("again".utf8))
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }

    @Test func agentReconnectsByItselfAfterARelayRestart() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret")], services: [.init(name: "web", agent: "office")]
        ) { relay in
            let firstRelay = try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["web": echo.port])
            let port = relay.servicePort("web")
            #expect(try await TestClient.exchange(port: port, request: Array("one".utf8)) == Array("one".utf8))

            firstRelay.signal(SIGKILL)
            try await firstRelay.waitForExit()
            try await agent.waitForLine(containing: "relay connection lost")
            let restart = ContinuousClock.now
            let secondRelay = try await relay.startProxy()
            try await secondRelay.waitForLine(containing: "agent connected", "agent=office")
            let elapsed =
                try await self.timeUntilEchoWorks(port: port, limit: .seconds(10)) + (ContinuousClock.now - restart)
            print("figure: agent back through the restarted relay within \(ContinuousClock.now - restart)")
            #expect(elapsed < .seconds(10))
            #expect(agent.lines(containing: "registered with relay").count == 2)
            let baseline = relay.baseline()
            #expect(try await TestClient.exchange(port: port, request: Array("two".utf8)) == Array("two".utf8))
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }

    /// Sessions are independent connections: losing the control channel does not end them.
    @Test func liveSessionSurvivesTheLossOfTheControlChannel() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret")], services: [.init(name: "web", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let first = try await relay.startAgent(id: "office", services: ["web": echo.port])
            let connection = try await TestClient.connect(port: relay.servicePort("web"))
            try await connection.executeThenClose { inbound, outbound in
                var replies = inbound.makeAsyncIterator()
                try await outbound.write(ByteBuffer(string: "one"))
                #expect(try await replies.next().map { String(buffer: $0) } == "one")
                // A second agent process with the same id takes over the control channel.
                try await relay.startAgent(id: "office", services: ["web": echo.port])
                try await relay.proxy.waitForLine(containing: "closing its previous control channel")
                try await first.waitForLine(containing: "relay connection lost", "replaced")
                try await outbound.write(ByteBuffer(string: "two"))
                #expect(try await replies.next().map { String(buffer: $0) } == "two")
            }
            await first.stop()
        }
    }
}
