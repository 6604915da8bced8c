import NIOCore
import NIOPosix
import RelayProtocol
import Testing

/// Each way a client cannot be served closes it promptly with a logged reason, while the
/// sessions that can be served go on.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct RefusalTests {
    static let prompt = Duration.seconds(2)
    /// Sessions whose data channel cannot be opened, in one run.
    static let dataChannelAttempts = 20

    @Test func everyRefusalClosesTheClientPromptlyAndOthersGoOn() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        let deadPort = try await TargetServer.closedPort()
        try await withFixture(
            agents: [
                .init(id: "office", secret: "right-secret-0123456789"),
                .init(id: "intruder", secret: "right-too-secret-0123456789"),
                .init(id: "absent", secret: "absent-secret-0123456789"),
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
                    id: "intruder", secret: "wrong-secret-0123456789", services: ["guarded": echo.port],
                    waitForRegistration: false)
                try await relay.proxy.waitForLine(
                    containing: "agent authentication failed: wrong secret", "agent=intruder")
                try await intruder.waitForLine(containing: "relay refused authentication")
                try await self.expectPromptClose(
                    relay, service: "guarded", reason: "no agent connected for this service")

                // Unknown agent id.
                let stranger = try await relay.startAgent(
                    id: "stranger", secret: "whatever-secret-0123456789", services: [:], waitForRegistration: false)
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

    /// An agent that reaches the target but cannot open a data channel says so on the
    /// control channel (`refuse data_channel_failed`), so the relay need not wait out its
    /// attach timeout. A hand-driven relay closes its listener after the control channel,
    /// so the agent's data channel is refused.
    @Test func dataChannelThatCannotBeOpenedIsRefusedPromptly() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        let (listener, port) = try await FakeRelay.listen()
        try await withFixture(agents: [], services: []) { fixture in
            let agent = try fixture.startAgent(
                relayPort: port, secret: "s3cret-s3cret-s3cret", target: "127.0.0.1:\(echo.port)")
            do {
                let (refusal, elapsed) = try await listener.executeThenClose { connections in
                    var accepted = connections.makeAsyncIterator()
                    guard let control = try await accepted.next() else { throw HarnessError("no control channel") }
                    try await listener.channel.close()
                    return try await control.executeThenClose { inbound, outbound in
                        let lines = FakeAgent.Lines(iterator: inbound.makeAsyncIterator(), outbound: outbound)
                        guard try await lines.serveAgent(secret: "s3cret-s3cret-s3cret") != nil else {
                            throw HarnessError("no register")
                        }
                        // Several sessions, one after another: a failure path that leaks or traps shows.
                        var slowest = Duration.zero
                        var last: ControlMessage.Refuse?
                        for _ in 0..<Self.dataChannelAttempts {
                            let session = SessionIDs.make()
                            let asked = ContinuousClock.now
                            try await lines.send(
                                .connect(
                                    .init(session: session, service: "web", token: Tokens.make(), client: "127.0.0.1:1")
                                ))
                            last = nil
                            while last == nil, let message = try await lines.receive() {
                                if case .refuse(let refuse) = message, refuse.session == session { last = refuse }
                            }
                            guard last != nil else {
                                throw HarnessError("the agent closed the control channel without refusing")
                            }
                            slowest = max(slowest, ContinuousClock.now - asked)
                        }
                        return (last!, slowest)
                    }
                }
                print("figure: data channel refused \(Self.dataChannelAttempts) times, agent said so within \(elapsed)")
                #expect(refusal.code == .dataChannelFailed)
                #expect(refusal.message.contains("connection refused"), "\(refusal.message)")
                #expect(elapsed < Self.prompt)
                try await agent.waitForLine(containing: "session refused", "cannot open a data channel")
                try await echo.waitForClosed(Self.dataChannelAttempts)
                // The failed sessions took nothing else down: the agent still answers relayctl.
                let status = try await Relayctl.run(["--socket", fixture.directory + "/agent.sock", "status"])
                #expect(status.status == 0, "\(status)")
                #expect(agent.process.isRunning)
                await agent.stop()
            } catch {
                await agent.stop()
                throw error
            }
        }
    }
}
