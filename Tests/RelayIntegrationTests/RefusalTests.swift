import NIOCore
import Testing

/// Each way a client cannot be served closes it promptly with a logged reason, while the
/// sessions that can be served go on.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct RefusalTests {
    static let prompt = Duration.seconds(2)

    @Test func everyRefusalClosesTheClientPromptlyAndOthersGoOn() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        let deadPort = try await TargetServer.closedPort()
        try await withFixture(
            agents: [
                .init(id: "office", secret: "right"), .init(id: "intruder", secret: "right-too"),
                .init(id: "absent", secret: "x"),
            ],
            services: [
                .init(name: "web", agent: "office"), .init(name: "down", agent: "office"),
                .init(name: "ghost", agent: "office"), .init(name: "guarded", agent: "intruder"),
                .init(name: "lonely", agent: "absent"),
            ]
        ) { relay in
            try await relay.startProxy()
            let office = try await relay.startAgent(
                id: "office", services: ["web": echo.port, "down": deadPort, "extra": echo.port])
            let proxyBaseline = relay.proxy.openDescriptors
            let officeBaseline = office.openDescriptors

            // A session that stays open through everything below.
            let survivor = try await TestClient.connect(port: relay.servicePort("web"))
            try await survivor.executeThenClose { inbound, outbound in
                var replies = inbound.makeAsyncIterator()
                try await outbound.write(ByteBuffer(string: "before"))
                #expect(try await replies.next().map { String(buffer: $0) } == "before")

                // The agent offered a service the relay does not assign to it.
                try await relay.proxy.waitForLine(containing: "agent registration refused a service", "service=extra")
                try await office.waitForLine(containing: "relay refused a service", "service=extra")

                // Wrong secret: the agent is refused, so its service has no agent.
                let intruder = try await relay.startAgent(
                    id: "intruder", secret: "wrong", services: ["guarded": echo.port], waitForRegistration: false)
                try await relay.proxy.waitForLine(
                    containing: "agent authentication failed: wrong secret", "agent=intruder")
                try await intruder.waitForLine(containing: "relay refused authentication")
                try await self.expectPromptClose(
                    relay, service: "guarded", reason: "no agent connected for this service")

                // Unknown agent id.
                let stranger = try await relay.startAgent(
                    id: "stranger", secret: "whatever", services: [:], waitForRegistration: false)
                try await relay.proxy.waitForLine(
                    containing: "agent authentication failed: unknown agent id", "agent=stranger")
                await stranger.stop()
                await intruder.stop()

                // A service the relay assigns to the agent, but the agent does not serve.
                try await self.expectPromptClose(relay, service: "ghost", reason: "no agent connected for this service")
                // A service whose agent is offline.
                try await self.expectPromptClose(
                    relay, service: "lonely", reason: "no agent connected for this service")
                // The target is down: the agent refuses with the reason.
                try await self.expectPromptClose(
                    relay, service: "down", reason: "refused by agent (target_unreachable)")
                try await office.waitForLine(
                    containing: "session refused: cannot connect to 127.0.0.1:\(deadPort): connection refused")

                try await outbound.write(ByteBuffer(string: "after"))
                #expect(try await replies.next().map { String(buffer: $0) } == "after")
            }
            try await relay.proxy.waitForDescriptors(atMost: proxyBaseline)
            try await office.waitForDescriptors(atMost: officeBaseline)
            try await relay.expectNothingLeftOpen(since: relay.baseline())
            #expect(relay.proxy.isRunning)
        }
    }

    private func expectPromptClose(_ relay: RelayFixture, service: String, reason: String) async throws {
        let elapsed = try await TestClient.timeUntilClosed(port: relay.servicePort(service))
        print("figure: client of '\(service)' closed after \(elapsed)")
        #expect(elapsed < Self.prompt, "client of \(service) closed after \(elapsed)")
        try await relay.proxy.waitForLine(containing: reason, "service=\(service)")
    }
}
