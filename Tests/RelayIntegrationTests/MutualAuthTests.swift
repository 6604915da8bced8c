import Foundation
import NIOCore
import NIOPosix
import RelayProtocol
import Testing

/// Protocol version 2 against real daemons: a data channel must prove it comes from the
/// agent its session was offered to (a seen token is worthless), the relay must prove
/// itself to the agent (a fake relay gets no session), and a stranger learns nothing from
/// the relay's answers.
@Suite(.serialized) struct MutualAuthTests {
    static let fakeSecret = "fake-secret-0123456789"
    static let otherSecret = "other-agent-secret-0123456789"

    /// An attach is accepted only with the session's token AND a proof made with the secret of
    /// the agent it was offered to: a token alone, a proof made with another agent's secret,
    /// or the real attach line replayed (sniffed) from another connection get nothing, and
    /// the client's bytes go to the real data channel only.
    @Test func anAttachMustProveItsAgentAndIsWorthlessReplayed() async throws {
        try await withFixture(
            agents: [.init(id: "fake", secret: Self.fakeSecret), .init(id: "other", secret: Self.otherSecret)],
            services: [.init(name: "fk", agent: "fake"), .init(name: "ot", agent: "other")]
        ) { relay in
            try await relay.startProxy()
            let control = try await FakeAgent.connect(port: relay.agentPort)
            try await control.session { lines in
                guard
                    case .registered? = try await lines.handshake(id: "fake", secret: Self.fakeSecret, services: ["fk"])
                else { throw HarnessError("the fake agent did not register") }
                // The other agent is registered too: its secret is a real, live one.
                let other = try await FakeAgent.connect(port: relay.agentPort)
                try await other.session { otherLines in
                    guard
                        case .registered? = try await otherLines.handshake(
                            id: "other", secret: Self.otherSecret, services: ["ot"])
                    else { throw HarnessError("the other agent did not register") }

                    let client = try await TestClient.connect(port: relay.servicePort("fk"))
                    try await client.executeThenClose { clientIn, clientOut in
                        try await clientOut.write(ByteBuffer(string: "secret bytes"))
                        guard case .connect(let connect)? = try await lines.receive() else {
                            throw HarnessError("no connect for the client")
                        }
                        #expect(connect.at != nil)
                        #expect(connect.expiresIn == 10_000)
                        // 1. The token alone (a well-formed proof that is not the right one).
                        let tokenOnly = ControlMessage.Attach(
                            session: connect.session, token: connect.token, proof: String(repeating: "0", count: 64))
                        #expect(try await Self.attachAnswer(relay, tokenOnly) == .badToken)
                        // 2. The token with a proof made with another agent's secret.
                        let crossAgent = ControlMessage.Attach.proved(connect, secret: Self.otherSecret)
                        #expect(try await Self.attachAnswer(relay, crossAgent) == .badToken)
                        // 3. The token with the attach line of version 1 (no proof at all).
                        let v1 =
                            #"{"type":"attach","version":1,"session":"\#(connect.session)","token":"\#(connect.token)"}"#
                        #expect(try await Self.attachAnswer(relay, raw: v1 + "\n") == .unsupportedVersion)
                        // The session still waits: the real attach joins it.
                        let real = ControlCodec.encode(.attach(.proved(connect, secret: Self.fakeSecret)))
                        let data = try await FakeAgent.connect(port: relay.agentPort)
                        try await data.session { dataLines in
                            try await dataLines.sendRaw(Array(real.readableBytesView))
                            #expect(try await dataLines.receive() == .attached(.init(session: connect.session)))
                            var got = ""
                            while got.count < "secret bytes".count, let chunk = try await dataLines.receiveBytes() {
                                got += String(buffer: chunk)
                            }
                            #expect(got == "secret bytes")
                            // 4. The very same line, sniffed and replayed from another connection.
                            let replayed = try await Self.attachAnswer(relay, raw: String(buffer: real))
                            #expect(replayed == .unknownSession)
                            try await dataLines.sendRaw("reply")
                            var replies = clientIn.makeAsyncIterator()
                            #expect(try await replies.next().map { String(buffer: $0) } == "reply")
                        }
                    }
                }
            }
            try await relay.proxy.waitForLine(containing: "data channel refused: bad_token", count: 2)
            try await relay.proxy.waitForLine(containing: "data channel refused: unknown_session")
        }
    }

    /// An unknown agent id and a known one with a wrong proof get the same bytes back (and
    /// the relay checks as many HMACs for both; see ProxyControlStateMachineTests); neither
    /// ever sees a `welcome`, so a stranger never obtains a relay proof to guess from.
    @Test func unknownAndKnownWrongAnswerTheSameBytes() async throws {
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "web", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            var answers: [String] = []
            for agent in ["ghost", "office"] {
                let connection = try await FakeAgent.connect(port: relay.agentPort)
                let answer = try await connection.session { lines -> String in
                    try await lines.send(.hello(.init(agent: agent, nonce: Authenticator.makeNonce())))
                    guard case .challenge? = try await lines.receive() else { throw HarnessError("no challenge") }
                    try await lines.send(.auth(.init(proof: String(repeating: "ab", count: 32))))
                    var raw = ""
                    while let chunk = try await lines.iterator.next() { raw += String(buffer: chunk) }
                    return raw
                }
                answers.append(answer)
            }
            print("figure: answer to an unknown id and to a wrong proof: \(answers[0].debugDescription)")
            #expect(answers[0] == answers[1])
            #expect(answers[0].contains(#""code":"auth_failed""#))
            #expect(!answers[0].contains("welcome"))
            try await relay.proxy.waitForLine(
                containing: "agent authentication failed: unknown agent id", "agent=ghost")
            try await relay.proxy.waitForLine(containing: "agent authentication failed: wrong secret", "agent=office")
        }
    }

    /// An agent of protocol version 1 is told, in words, that the versions differ.
    @Test func aVersion1AgentIsToldTheVersionsDiffer() async throws {
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "web", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let connection = try await FakeAgent.connect(port: relay.agentPort)
            let reply = try await connection.session { lines in
                try await lines.sendRaw(#"{"type":"hello","version":1,"agent":"office"}"# + "\n")
                return try await lines.receive()
            }
            guard case .error(let report)? = reply else {
                Issue.record("expected an error, got \(String(describing: reply))")
                return
            }
            #expect(report.code == .unsupportedVersion)
            #expect(report.message.contains("protocol version 2, the agent 1"))
        }
    }

    /// A relay that does not know the agent's secret (a test server speaking the protocol,
    /// sending a made-up proof in `welcome`) gets an error, never `register`; it cannot make
    /// the agent dial a target; the agent says why and tries again after its backoff.
    @Test func aFakeRelayGetsNoRegisterAndNoSession() async throws {
        let target = try await TargetServer.start(.echo)
        defer { Task { await target.close() } }
        let (listener, port) = try await FakeRelay.listen()
        try await withFixture(agents: [], services: []) { fixture in
            let agent = try fixture.startAgent(
                relayPort: port, secret: "the real secret, not known to the fake", target: "127.0.0.1:\(target.port)",
                options: ["reconnectInitialDelaySeconds": 0.2, "reconnectMaxDelaySeconds": 0.5])
            do {
                let seen = try await listener.executeThenClose { connections in
                    var accepted = connections.makeAsyncIterator()
                    var seen: [String] = []
                    for _ in 0..<2 {
                        guard let control = try await accepted.next() else { throw HarnessError("no control channel") }
                        let after = try await control.executeThenClose { inbound, outbound in
                            let lines = FakeAgent.Lines(iterator: inbound.makeAsyncIterator(), outbound: outbound)
                            let register = try await lines.serveAgent(secret: nil)
                            #expect(register == nil, "the agent registered with a relay that did not prove itself")
                            // A connect the fake pushes anyway (with any token) is not acted on.
                            try? await lines.send(
                                .connect(
                                    .init(
                                        session: SessionIDs.make(), service: "web", token: Tokens.make(),
                                        client: "203.0.113.9:1")))
                            var types = [lines.last?.type ?? "nothing"]
                            while let message = try? await lines.receive() { types.append(message.type) }
                            return types
                        }
                        seen += after
                    }
                    return seen
                }
                print("figure: what a fake relay got from the agent after its welcome: \(seen)")
                #expect(!seen.contains("register"))
                #expect(seen.first == "error")
                try await agent.waitForLine(containing: "relay failed to prove it knows the secret")
                try await agent.waitForLine(
                    containing: "relay connection lost", "relay failed to prove it knows the secret")
                #expect(target.stats.accepted.load(ordering: .relaxed) == 0)
                #expect(agent.lines(containing: "registered with relay").isEmpty)
                await agent.stop()
            } catch {
                await agent.stop()
                throw error
            }
        }
    }

    /// The code of the `error` the relay answers `attach` with on a fresh connection, or nil
    /// if it answered something else.
    static func attachAnswer(_ relay: RelayFixture, _ attach: ControlMessage.Attach) async throws -> ErrorCode? {
        try await self.attachAnswer(relay, raw: String(buffer: ControlCodec.encode(.attach(attach))))
    }

    static func attachAnswer(_ relay: RelayFixture, raw line: String) async throws -> ErrorCode? {
        let connection = try await FakeAgent.connect(port: relay.agentPort)
        return try await connection.session { lines in
            try await lines.sendRaw(line)
            let reply = try await lines.receive()
            guard case .error(let report)? = reply else {
                Issue.record("an attach was answered \(String(describing: reply))")
                return nil
            }
            #expect(await lines.expectClosed())
            return report.code
        }
    }
}
