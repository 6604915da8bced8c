import Testing

/// IPv6 and host names everywhere: listeners, the relay address and targets.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct AddressTests {
    @Test func everythingOverIPv6() async throws {
        let echo = try await TargetServer.start(.echo, host: "::1")
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "v6", secret: "s3cret")], services: [.init(name: "web", agent: "v6")], host: "::1"
        ) {
            relay in
            try await relay.startProxy()
            #expect(relay.proxy.lines(containing: "listening", "address=[::1]:").count == 2)
            try await relay.startAgent(id: "v6", services: ["web": echo.port], targetHost: "::1")
            let baseline = relay.baseline()
            let message = TestData.random(50_000)
            #expect(
                try await TestClient.exchange(port: relay.servicePort("web"), request: message, host: "::1") == message)
            try await relay.proxy.waitForLine(containing: "session open", "client=[::1]:")
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }

    @Test func hostNamesAreResolvedWhenDialled() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "named", secret: "s3cret")], services: [.init(name: "web", agent: "named")]
        ) {
            relay in
            relay.relayHost = "localhost"
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "named", services: ["web": echo.port], targetHost: "localhost")
            #expect(agent.lines(containing: "relay-agent starting", "relay=localhost:").count == 1)
            let baseline = relay.baseline()
            let message = TestData.random(1000)
            #expect(try await TestClient.exchange(port: relay.servicePort("web"), request: message) == message)
            try await agent.waitForLine(containing: "session open", "target=localhost:\(echo.port)")
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }
}
