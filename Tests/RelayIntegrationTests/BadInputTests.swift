import NIOCore
import RelayProtocol
import Testing

/// Hostile or broken peers on the agent port get a protocol error where one can be sent,
/// are disconnected, and never disturb anyone else.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct BadInputTests {
    /// Runs `body` against a relay with one real agent serving "web" (echo) and a spare
    /// service "fake" for a hand-driven agent; afterwards checks that the real tunnel still
    /// works, the relay still runs and no descriptor is left open.
    /// `handshakeTimeout` is short only for the test about a silent connection; elsewhere a
    /// short one would race the test's own first line on a loaded machine.
    private func withRelay(handshakeTimeout: Double = 10, _ body: (RelayFixture) async throws -> Void) async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [
                .init(id: "office", secret: "s3cret-s3cret-s3cret"),
                .init(id: "fake", secret: "fake-secret-0123456789"),
            ],
            services: [.init(name: "web", agent: "office"), .init(name: "fk", agent: "fake")],
            proxyOptions: ["handshakeTimeoutSeconds": handshakeTimeout, "attachTimeoutSeconds": 5]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["web": echo.port])
            let baseline = relay.baseline()
            try await body(relay)
            let message = TestData.random(1000)
            #expect(try await TestClient.exchange(port: relay.servicePort("web"), request: message) == message)
            #expect(relay.proxy.isRunning && agent.isRunning)
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }

    /// Sends `bytes` as a first line and expects an `error` with `code`, then a close.
    private func expectError(_ relay: RelayFixture, sending bytes: [UInt8], code: ErrorCode) async throws {
        let fake = try await FakeAgent.connect(port: relay.agentPort)
        try await fake.session { lines in
            try await lines.sendRaw(bytes)
            let reply = try await lines.receive()
            guard case .error(let report)? = reply else {
                Issue.record("expected an error \(code.rawValue), got \(String(describing: reply))")
                return
            }
            #expect(report.code == code)
            #expect(await lines.expectClosed())
        }
    }

    @Test func randomBytesGetBadJSON() async throws {
        try await self.withRelay { relay in
            var garbage = TestData.random(300).map { $0 == UInt8(ascii: "\n") ? 0 : $0 }
            garbage[0] = 0xff
            try await self.expectError(relay, sending: garbage + [UInt8(ascii: "\n")], code: .badJSON)
            try await relay.proxy.waitForLine(containing: "agent-port connection refused: bad_json")
        }
    }

    @Test func overlongLineGetsLineTooLong() async throws {
        try await self.withRelay { relay in
            let long = [UInt8](repeating: UInt8(ascii: "a"), count: ProtocolLimits.maxLineBytes + 10)
            try await self.expectError(relay, sending: long, code: .lineTooLong)
            try await self.expectError(relay, sending: long + [UInt8(ascii: "\n")], code: .lineTooLong)
        }
    }

    @Test func invalidJSONWrongTypesAndUnknownTypes() async throws {
        try await self.withRelay { relay in
            try await self.expectError(relay, sending: Array("{\"type\": hello}\n".utf8), code: .badJSON)
            try await self.expectError(relay, sending: Array("[1,2,3]\n".utf8), code: .badJSON)
            try await self.expectError(
                relay, sending: Array("{\"type\":\"hello\",\"version\":\"1\",\"agent\":5}\n".utf8), code: .badMessage)
            try await self.expectError(
                relay, sending: Array("{\"type\":\"hello\",\"version\":1}\n".utf8), code: .badMessage)
            try await self.expectError(
                relay, sending: Array("{\"type\":\"launch\",\"payload\":1}\n".utf8), code: .unknownType)
            try await self.expectError(
                relay, sending: Array("{\"type\":\"ping\",\"seq\":1}\n".utf8), code: .unexpectedMessage)
            try await self.expectError(
                relay, sending: Array("{\"type\":\"hello\",\"version\":99,\"agent\":\"office\"}\n".utf8),
                code: .unsupportedVersion)
        }
    }

    @Test func attachForABogusSessionIsRefused() async throws {
        try await self.withRelay { relay in
            let attach = ControlCodec.encode(
                .attach(
                    .init(session: SessionIDs.make(), token: Tokens.make(), proof: String(repeating: "0", count: 64))))
            try await self.expectError(relay, sending: Array(attach.readableBytesView), code: .unknownSession)
            try await relay.proxy.waitForLine(containing: "data channel refused: unknown_session")
        }
    }

    /// An attach needs the session's token, is accepted once, and joins the client.
    @Test func attachNeedsTheRightTokenAndIsAcceptedOnce() async throws {
        try await self.withRelay { relay in
            let control = try await FakeAgent.connect(port: relay.agentPort)
            try await control.session { lines in
                let registered = try await lines.handshake(
                    id: "fake", secret: "fake-secret-0123456789", services: ["fk"])
                #expect(registered == .registered(.init(accepted: ["fk"], refused: [])))
                let client = try await TestClient.connect(port: relay.servicePort("fk"))
                try await client.executeThenClose { clientIn, clientOut in
                    try await clientOut.write(ByteBuffer(string: "early bytes"))
                    guard case .connect(let connect)? = try await lines.receive() else {
                        Issue.record("no connect for the client")
                        return
                    }
                    #expect(connect.service == "fk")
                    // A wrong token is refused, and the session stays pending.
                    let wrong = ControlCodec.encode(
                        .attach(
                            .proved(session: connect.session, token: Tokens.make(), secret: "fake-secret-0123456789")))
                    try await self.expectError(relay, sending: Array(wrong.readableBytesView), code: .badToken)
                    // The right token joins the client; its early bytes come first.
                    let data = try await FakeAgent.connect(port: relay.agentPort)
                    try await data.session { dataLines in
                        try await dataLines.send(.attach(.proved(connect, secret: "fake-secret-0123456789")))
                        #expect(try await dataLines.receive() == .attached(.init(session: connect.session)))
                        var early = ""
                        while early.count < "early bytes".count, let chunk = try await dataLines.receiveBytes() {
                            early += String(buffer: chunk)
                        }
                        #expect(early == "early bytes")
                        try await dataLines.sendRaw("reply")
                        var clientReplies = clientIn.makeAsyncIterator()
                        #expect(try await clientReplies.next().map { String(buffer: $0) } == "reply")
                        // A second attach for the same session is refused.
                        let again = ControlCodec.encode(.attach(.proved(connect, secret: "fake-secret-0123456789")))
                        try await self.expectError(
                            relay, sending: Array(again.readableBytesView), code: .unknownSession)
                    }
                }
            }
            try await relay.proxy.waitForLine(containing: "data channel refused: bad_token")
            try await relay.proxy.waitForLine(containing: "session closed")
        }
    }

    @Test func connectionThatNeverSpeaksIsClosedAfterTheHandshakeTimeout() async throws {
        try await self.withRelay(handshakeTimeout: 0.5) { relay in
            let silent = try await FakeAgent.connect(port: relay.agentPort)
            let start = ContinuousClock.now
            let closed = try await silent.session { lines in await lines.expectClosed() }
            let elapsed = ContinuousClock.now - start
            #expect(closed)
            #expect(elapsed >= .milliseconds(400) && elapsed < .seconds(3), "closed after \(elapsed)")
            try await relay.proxy.waitForLine(containing: "sent nothing within 0.5s")
        }
    }

    /// A registered agent that turns bad loses its control channel, and only that.
    @Test func garbageOnARegisteredControlChannelClosesIt() async throws {
        try await self.withRelay { relay in
            let control = try await FakeAgent.connect(port: relay.agentPort)
            try await control.session { lines in
                _ = try await lines.handshake(id: "fake", secret: "fake-secret-0123456789", services: ["fk"])
                try await lines.sendRaw("this is not json\n")
                guard case .error(let report)? = try await lines.receive() else {
                    Issue.record("expected an error")
                    return
                }
                #expect(report.code == .badJSON)
                #expect(await lines.expectClosed())
            }
            try await relay.proxy.waitForLine(containing: "agent disconnected", "agent=fake", "bad_json")
        }
    }
}
