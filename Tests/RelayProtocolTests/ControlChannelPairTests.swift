import NIOCore
import RelayProtocol
import Testing

/// Both ends of a control channel, run against each other with no sockets: every message
/// goes through the codec and a line framer, as it would on the wire.
struct ChannelPair {
    var agent: AgentControlStateMachine
    var proxy: ProxyControlStateMachine
    /// Every line that crossed, prefixed with "A>" (agent to relay) or "P>" (relay to agent).
    var transcript: [String] = []
    /// What the agent machine reported besides sending.
    var agentEvents: [AgentControlStateMachine.Action] = []
    /// What the proxy machine reported besides sending.
    var proxyEvents: [ProxyControlStateMachine.Action] = []
    private var toProxy: [ControlMessage] = []
    private var toAgent: [ControlMessage] = []

    init(agent: AgentControlStateMachine, proxy: ProxyControlStateMachine) {
        self.agent = agent
        self.proxy = proxy
    }

    /// The message types in the transcript, in order.
    var types: [String] { self.transcript.map { line in String(line.prefix(2)) + " " + Self.type(of: line) } }

    static func type(of line: String) -> String {
        (try? ControlCodec.decode(ByteBuffer(string: String(line.dropFirst(3)))).type) ?? "?"
    }

    /// Encodes, frames and decodes one message, as the wire would.
    mutating func cross(_ message: ControlMessage, prefix: String) throws -> ControlMessage {
        let bytes = ControlCodec.encode(message)
        var framer = LineFramer()
        framer.append(bytes)
        let next = try framer.nextLine()
        let line = try #require(next)
        let rest = framer.takeRemainder()
        #expect(rest == nil)
        self.transcript.append("\(prefix) \(String(buffer: line))")
        return try ControlCodec.decode(line)
    }

    mutating func fromAgent(_ actions: [AgentControlStateMachine.Action]) {
        for action in actions {
            switch action {
            case .send(let message): self.toProxy.append(message)
            case .fail(let error): self.toProxy.append(error.errorMessage)
            default: self.agentEvents.append(action)
            }
        }
    }

    mutating func fromProxy(_ actions: [ProxyControlStateMachine.Action]) {
        for action in actions {
            switch action {
            case .send(let message): self.toAgent.append(message)
            case .fail(let error): self.toAgent.append(error.errorMessage)
            default: self.proxyEvents.append(action)
            }
        }
    }

    /// Delivers queued messages both ways until both ends are quiet.
    mutating func run() throws {
        var rounds = 0
        while !self.toProxy.isEmpty || !self.toAgent.isEmpty {
            rounds += 1
            try #require(rounds < 100, "the two machines keep talking")
            if !self.toProxy.isEmpty {
                let message = try self.cross(self.toProxy.removeFirst(), prefix: "A>")
                self.fromProxy(self.proxy.receive(message))
            } else {
                let message = try self.cross(self.toAgent.removeFirst(), prefix: "P>")
                self.fromAgent(self.agent.receive(message))
            }
        }
    }

    /// Starts the agent and runs the handshake to its end.
    mutating func handshake() throws {
        self.fromAgent(self.agent.start())
        try self.run()
    }

    /// The relay sends `message` (as its I/O layer would) and both ends react.
    mutating func relaySends(_ message: ControlMessage) throws {
        self.toAgent.append(message)
        try self.run()
    }

    /// The agent sends `message` (as its I/O layer would) and both ends react.
    mutating func agentSends(_ message: ControlMessage) throws {
        self.toProxy.append(message)
        try self.run()
    }
}

@Suite struct ControlChannelPairTests {
    static let secret = Secret("correct horse battery staple")

    static func proxy() -> ProxyControlStateMachine {
        ProxyControlStateMachine(heartbeatSeconds: 10) { id in
            id == "office" ? AgentCredentials(secret: Self.secret, services: ["web", "ssh"]) : nil
        }
    }

    static func pair(id: String = "office", secret: Secret = Self.secret) -> ChannelPair {
        ChannelPair(
            agent: AgentControlStateMachine(agentID: id, secret: secret, services: ["web", "ssh", "db"]),
            proxy: Self.proxy())
    }

    @Test func handshakeBringsBothEndsToReady() throws {
        var pair = Self.pair()
        try pair.handshake()
        #expect(
            pair.types == [
                "A> hello", "P> challenge", "A> auth", "P> welcome", "A> register", "P> registered",
            ])
        #expect(pair.agent.state == .ready(services: ["web", "ssh"]))
        #expect(pair.proxy.state == .ready(agent: "office", services: ["web", "ssh"]))
        #expect(
            pair.proxyEvents == [
                .agentReady(agent: "office", services: ["web", "ssh"], offered: ["web", "ssh", "db"])
            ])
        let refusedDB = ControlMessage.RefusedService(
            service: "db", code: .unknownService,
            message: "service 'db' is not assigned to agent 'office' in the relay's config")
        #expect(pair.agentEvents == [.registered(accepted: ["web", "ssh"], refused: [refusedDB])])
        // The secret never crosses the wire.
        #expect(!pair.transcript.joined().contains("correct horse"))
    }

    @Test func connectRefuseAndHeartbeatsAfterTheHandshake() throws {
        var pair = Self.pair()
        try pair.handshake()
        pair.agentEvents = []
        pair.proxyEvents = []

        // S7–S8: a client wants "web"; the agent takes it on.
        let web = ControlMessage.Connect(
            session: SessionIDs.make(), service: "web", token: Tokens.make(), client: "203.0.113.9:51234")
        try pair.relaySends(.connect(web))
        #expect(pair.agentEvents == [.connectRequested(web)])

        // The relay asks for "mail", which the agent does not offer: the agent refuses, the relay is told.
        let mail = ControlMessage.Connect(
            session: SessionIDs.make(), service: "mail", token: Tokens.make(), client: "c")
        try pair.relaySends(.connect(mail))
        let refusal = ControlMessage.Refuse(
            session: mail.session, code: .unknownService, message: "agent 'office' does not serve 'mail'")
        #expect(pair.proxyEvents == [.sessionRefused(refusal)])

        // The agent refuses a session it could not serve (target down), from its I/O layer.
        let down = ControlMessage.Refuse(session: web.session, code: .targetUnreachable, message: "refused")
        try pair.agentSends(.refuse(down))
        #expect(pair.proxyEvents.last == .sessionRefused(down))

        // Heartbeats both ways, with a round trip measured at the agent.
        let start = ContinuousClock.now
        var beat = Heartbeat(interval: .seconds(10), timeout: .seconds(30), now: start)
        guard case .sendPing(let seq) = beat.tick(at: start + .seconds(10)) else {
            Issue.record("no ping due")
            return
        }
        try pair.agentSends(.ping(.init(seq: seq)))
        #expect(pair.agentEvents.last == .pongReceived(seq: seq))
        beat.pong(seq: seq, at: start + .seconds(10.5))
        #expect(beat.lastRoundTrip == .milliseconds(500))

        try pair.relaySends(.ping(.init(seq: 41)))
        #expect(pair.proxyEvents.last == .pongReceived(seq: 41))

        #expect(pair.agent.state == .ready(services: ["web", "ssh"]))
        #expect(pair.proxy.state == .ready(agent: "office", services: ["web", "ssh"]))
        #expect(
            Array(pair.types.dropFirst(6)) == [
                "P> connect", "P> connect", "A> refuse", "A> refuse", "A> ping", "P> pong", "P> ping", "A> pong",
            ])
    }

    @Test func wrongSecretEndsBothEnds() throws {
        var pair = Self.pair(secret: Secret("wrong"))
        try pair.handshake()
        #expect(pair.types == ["A> hello", "P> challenge", "A> auth", "P> error"])
        #expect(pair.proxyEvents == [.authenticationFailed(agent: "office", .badProof)])
        #expect(
            pair.agentEvents == [
                .peerError(.init(code: .authFailed, message: "authentication failed: unknown agent id or wrong secret"))
            ])
        #expect(pair.agent.state == .closed)
        #expect(pair.proxy.state == .closed)
    }

    @Test func unknownAgentEndsBothEnds() throws {
        var pair = Self.pair(id: "ghost")
        try pair.handshake()
        #expect(pair.types == ["A> hello", "P> challenge", "A> auth", "P> error"])
        #expect(pair.proxyEvents == [.authenticationFailed(agent: "ghost", .unknownAgent)])
        #expect(pair.agent.state == .closed)
        #expect(pair.proxy.state == .closed)
    }

    @Test func versionMismatchEndsBothEnds() throws {
        var pair = Self.pair()
        _ = pair.agent.start()  // the agent waits for a challenge; a newer agent said version 3
        try pair.agentSends(.hello(.init(version: 3, agent: "office", nonce: "bm9uY2U=")))
        #expect(pair.types == ["A> hello", "P> error"])
        #expect(
            pair.agentEvents == [
                .peerError(
                    .init(code: .unsupportedVersion, message: ProxyControlStateMachine.versionMismatch(3)))
            ])
        #expect(pair.agent.state == .closed)
        #expect(pair.proxy.state == .closed)
    }

    @Test func aRelayThatSkipsTheChallengeIsRejected() throws {
        var pair = Self.pair()
        _ = pair.agent.start()
        try pair.relaySends(.welcome(.init(heartbeatSeconds: 10, proof: Fixture.proof)))
        #expect(pair.types == ["P> welcome", "A> error"])
        #expect(pair.agent.state == .closed)
        // The agent's error reached the relay's machine, which closed too.
        #expect(
            pair.proxyEvents == [.peerError(.init(code: .unexpectedMessage, message: "'welcome' is not expected now"))])
        #expect(pair.proxy.state == .closed)
    }
}
