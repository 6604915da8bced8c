import NIOCore
import RelayProtocol
import Testing

/// An agent that restarts (`restarting`, then its next process registers) attaches the
/// sessions it accepted before it hands over; a `connect` that crossed its `restarting` line
/// is never attached by it, and the relay offers that client to the next process instead of
/// holding it until the attach timeout and closing it (docs/restart.md).
@Suite(.serialized, .timeLimit(.minutes(1)))
struct AgentRestartTests {
    static let secret = "fake-secret-0123456789"

    @Test func aConnectTheOldProcessNeverAttachedGoesToTheNextOne() async throws {
        try await withFixture(
            agents: [.init(id: "fake", secret: Self.secret)],
            services: [.init(name: "fk", agent: "fake")],
            // Far longer than the test: only a re-offer serves the orphaned client in time.
            proxyOptions: ["attachTimeoutSeconds": 40]
        ) { relay in
            try await relay.startProxy()
            let port = relay.servicePort("fk")
            let old = try await FakeAgent.connect(port: relay.agentPort)
            try await old.session { lines in
                _ = try await lines.handshake(id: "fake", secret: Self.secret, services: ["fk"])
                // Two clients; the old process accepted the first before it said `restarting`
                // (it attaches it below, after the line, as a real one does while it settles)
                // and never read the second's connect.
                try await TestClient.connect(port: port).executeThenClose { firstIn, firstOut in
                    guard case .connect(let accepted)? = try await lines.receive() else {
                        throw HarnessError("no connect for the first client")
                    }
                    try await TestClient.connect(port: port).executeThenClose { secondIn, secondOut in
                        guard case .connect(let orphan)? = try await lines.receive() else {
                            throw HarnessError("no connect for the second client")
                        }
                        try await lines.send(.restarting(.init()))
                        lines.outbound.finish()
                        try await relay.proxy.waitForLine(containing: "agent restarting")
                        try await relay.proxy.waitForLine(containing: "agent disconnected")
                        // The old process attaches what it accepted, before it exits.
                        try await Self.serve(accepted, relay: relay, clientIn: firstIn, clientOut: firstOut, "first")
                        // Its next process registers: the orphan's client is offered to it.
                        let next = try await FakeAgent.connect(port: relay.agentPort)
                        try await next.session { lines in
                            let registered = try await lines.handshake(
                                id: "fake", secret: Self.secret, services: ["fk"])
                            #expect(registered == .registered(.init(accepted: ["fk"], refused: [])))
                            let registeredAt = ContinuousClock.now
                            guard case .connect(let again)? = try await lines.receive() else {
                                throw HarnessError("the next process got no connect")
                            }
                            let waited = ContinuousClock.now - registeredAt
                            print(
                                "figure: the orphaned client was offered to the next process \(waited) after it registered"
                            )
                            #expect(again.session != orphan.session, "a new session id")
                            #expect(again.client == orphan.client, "for the same client")
                            #expect(waited < .seconds(5))
                            try await Self.serve(
                                again, relay: relay, clientIn: secondIn, clientOut: secondOut, "second")
                        }
                    }
                }
            }
            try await relay.proxy.waitForLine(
                containing:
                    "session failed: agent disconnected before attaching; offering it to the agent's next process")
            #expect(
                relay.proxy.lines(containing: "offering it to the agent's next process").count == 1,
                "only the connect the old process never attached")
        }
    }

    /// Attaches `connect` on a data channel and checks bytes both ways with its client.
    private static func serve(
        _ connect: ControlMessage.Connect, relay: RelayFixture, clientIn: NIOAsyncChannelInboundStream<ByteBuffer>,
        clientOut: NIOAsyncChannelOutboundWriter<ByteBuffer>, _ text: String
    ) async throws {
        let data = try await FakeAgent.connect(port: relay.agentPort)
        try await data.session { lines in
            try await lines.send(.attach(.proved(connect, secret: Self.secret)))
            #expect(try await lines.receive() == .attached(.init(session: connect.session)))
            try await clientOut.write(ByteBuffer(string: text))
            var received = ""
            while received.count < text.count, let chunk = try await lines.receiveBytes() {
                received += String(buffer: chunk)
            }
            #expect(received == text)
            try await lines.sendRaw("reply to \(text)")
            var replies = clientIn.makeAsyncIterator()
            #expect(try await replies.next().map { String(buffer: $0) } == "reply to \(text)")
        }
    }
}
