import RelayProtocol
import Testing

@Suite struct AgentControlStateMachineTests {
    typealias Machine = AgentControlStateMachine
    static let secret = Secret("correct horse battery staple")
    static let agentNonce = "YWdlbnQgbm9uY2U="
    static let relayNonce = "bm9uY2U="
    static let handshake = Authenticator.Handshake(relayNonce: relayNonce, agentNonce: agentNonce, agentID: "office")
    /// The `welcome` of a relay that knows the secret.
    static var goodWelcome: ControlMessage {
        .welcome(.init(heartbeatSeconds: 10, proof: Authenticator.relayProof(secret: secret, handshake)))
    }

    static func make() -> Machine {
        Machine(agentID: "office", secret: Self.secret, services: ["web", "ssh"], agentNonce: Self.agentNonce)
    }

    /// A machine driven to `state`: "idle", "challenge", "welcome", "registered", "ready", "closed".
    static func machine(in state: String) -> Machine {
        var machine = Self.make()
        if state == "idle" { return machine }
        _ = machine.start()
        if state == "challenge" { return machine }
        _ = machine.receive(.challenge(.init(nonce: Self.relayNonce)))
        if state == "welcome" { return machine }
        _ = machine.receive(Self.goodWelcome)
        if state == "registered" { return machine }
        _ = machine.receive(.registered(.init(accepted: ["web"], refused: [])))
        if state == "ready" { return machine }
        _ = machine.receive(.error(.init(code: .shuttingDown, message: "bye")))
        return machine
    }

    // MARK: the happy path

    @Test func fullHandshake() {
        var machine = Self.make()
        #expect(machine.state == .idle)
        #expect(machine.start() == [.send(.hello(.init(version: 2, agent: "office", nonce: Self.agentNonce)))])
        #expect(machine.state == .awaitingChallenge)
        #expect(machine.start() == [])

        let proof = Authenticator.agentProof(secret: Self.secret, Self.handshake)
        #expect(machine.receive(.challenge(.init(nonce: Self.relayNonce))) == [.send(.auth(.init(proof: proof)))])
        #expect(machine.state == .awaitingWelcome)

        #expect(
            machine.receive(Self.goodWelcome) == [
                .send(.register(.init(services: ["web", "ssh"])))
            ])
        #expect(machine.state == .awaitingRegistered)

        let refused = [ControlMessage.RefusedService(service: "ssh", code: .unknownService, message: "no")]
        #expect(
            machine.receive(.registered(.init(accepted: ["web"], refused: refused)))
                == [.registered(accepted: ["web"], refused: refused)])
        #expect(machine.state == .ready(services: ["web"]))
    }

    @Test func theProofIsOverBothNoncesAsSent() {
        var machine = Machine(agentID: "office", secret: Self.secret, services: [])
        guard case .send(.hello(let hello)) = machine.start().first, let agentNonce = hello.nonce else {
            Issue.record("expected hello with a nonce")
            return
        }
        #expect(agentNonce.count == 44)
        let nonce = Authenticator.makeNonce()
        let actions = machine.receive(.challenge(.init(nonce: nonce)))
        guard case .send(.auth(let auth)) = actions.first else {
            Issue.record("expected auth, got \(actions)")
            return
        }
        let handshake = Authenticator.Handshake(relayNonce: nonce, agentNonce: agentNonce, agentID: "office")
        #expect(Authenticator.verifyAgent(proof: auth.proof, secret: Self.secret, handshake))
        var other = handshake
        other.agentNonce = Authenticator.makeNonce()
        #expect(!Authenticator.verifyAgent(proof: auth.proof, secret: Self.secret, other))
    }

    /// Each connection attempt has its own nonce: a proof seen once is no use again.
    @Test func everyMachineHasAFreshNonce() {
        var nonces = Set<String>()
        for _ in 0..<20 {
            var machine = Machine(agentID: "office", secret: Self.secret, services: [])
            if case .send(.hello(let hello)) = machine.start().first, let nonce = hello.nonce { nonces.insert(nonce) }
        }
        #expect(nonces.count == 20)
    }

    @Test func anAgentWithoutServicesRegistersNone() {
        var machine = Machine(agentID: "empty", secret: Self.secret, services: [], agentNonce: "a")
        _ = machine.start()
        _ = machine.receive(.challenge(.init(nonce: "n")))
        let proof = Authenticator.relayProof(
            secret: Self.secret, .init(relayNonce: "n", agentNonce: "a", agentID: "empty"))
        #expect(
            machine.receive(.welcome(.init(heartbeatSeconds: 1, proof: proof))) == [
                .send(.register(.init(services: [])))
            ])
    }

    // MARK: the relay must prove itself

    /// A relay that does not know the secret (it can only guess, or replay a proof over other
    /// nonces, or reflect the agent's own proof) gets an error and a close, never `register`.
    @Test(arguments: ["zeros", "agent's own proof", "other nonce", "other secret", "other agent"])
    func aRelayWithoutTheSecretGetsNoRegister(_ forgery: String) {
        var machine = Self.machine(in: "welcome")
        let proof: String
        switch forgery {
        case "zeros": proof = String(repeating: "0", count: 64)
        case "agent's own proof": proof = Authenticator.agentProof(secret: Self.secret, Self.handshake)
        case "other nonce":
            proof = Authenticator.relayProof(
                secret: Self.secret, .init(relayNonce: Self.relayNonce, agentNonce: "other", agentID: "office"))
        case "other secret": proof = Authenticator.relayProof(secret: Secret("another secret, 16+"), Self.handshake)
        default:
            proof = Authenticator.relayProof(
                secret: Self.secret, .init(relayNonce: Self.relayNonce, agentNonce: Self.agentNonce, agentID: "lab"))
        }
        let actions = machine.receive(.welcome(.init(heartbeatSeconds: 10, proof: proof)))
        #expect(
            actions == [
                .relayNotProven, .fail(ProtocolError(.authFailed, "relay failed to prove it knows the secret")),
            ])
        #expect(machine.state == .closed)
        #expect(!sent(actions).contains { if case .register = $0 { true } else { false } })
        // Nothing it sends afterwards is acted on.
        #expect(machine.receive(.registered(.init(accepted: ["web"], refused: []))) == [])
        let connect = ControlMessage.Connect(
            session: Fixture.session, service: "web", token: Fixture.token, client: "c")
        #expect(machine.receive(.connect(connect)) == [])
    }

    // MARK: the age of a connect

    /// With clock stamps, a `connect` that arrives later than its `expiresIn` past the
    /// channel's quickest messages is refused `connect_expired` and never requested; a timely
    /// one is. The two hosts' clocks differ by an arbitrary offset, which cancels out.
    @Test(arguments: [UInt64(0), 5_000_000_000])
    func aConnectOlderThanItsExpiryIsDropped(_ offset: UInt64) {
        var machine = Self.make()
        _ = machine.start()
        // The relay's clock reads `relay`, the agent's `relay + offset + delay`.
        _ = machine.receive(.challenge(.init(nonce: Self.relayNonce, at: 1000)), receivedAt: offset + 1000 + 3)
        var welcome = Self.goodWelcome
        welcome = welcome.stamped(at: 1010)
        _ = machine.receive(welcome, receivedAt: offset + 1010 + 2)
        _ = machine.receive(.registered(.init(accepted: ["web"], refused: [])), receivedAt: offset + 1020)
        _ = machine.receive(.ping(.init(seq: 1, at: 2000)), receivedAt: offset + 2000 + 5)

        let timely = ControlMessage.Connect(
            session: Fixture.session, service: "web", token: Fixture.token, client: "c", at: 3000, expiresIn: 10_000)
        // 9 s late after a stall: still inside its 10 s.
        #expect(machine.receive(.connect(timely), receivedAt: offset + 3000 + 2 + 9_000) == [.connectRequested(timely)])

        let stale = ControlMessage.Connect(
            session: "0123456789ab", service: "web", token: Fixture.token, client: "c", at: 3000, expiresIn: 10_000)
        let actions = machine.receive(.connect(stale), receivedAt: offset + 3000 + 2 + 10_001)
        guard case .connectExpired(let dropped, let lag) = actions.first else {
            Issue.record("expected connectExpired, got \(actions)")
            return
        }
        #expect(dropped == stale)
        #expect(lag == 10_001)
        #expect(sent(actions).map(\.type) == ["refuse"])
        if case .refuse(let refuse) = sent(actions).first {
            #expect(refuse.code == .connectExpired)
            #expect(refuse.session == stale.session)
        }
        #expect(!actions.contains(.connectRequested(stale)))
        #expect(machine.state == .ready(services: ["web"]))
    }

    /// Late stale connects do not move the baseline: the hundredth is still dropped.
    @Test func aFloodOfStaleConnectsStaysStale() {
        var machine = Self.machine(in: "ready")
        _ = machine.receive(.ping(.init(seq: 1, at: 100)), receivedAt: 100)
        for index in 0..<100 {
            let connect = ControlMessage.Connect(
                session: Fixture.session, service: "web", token: Fixture.token, client: "c", at: UInt64(200 + index),
                expiresIn: 1000)
            let actions = machine.receive(.connect(connect), receivedAt: 60_000)
            #expect(actions.first.map { if case .connectExpired = $0 { true } else { false } } == true)
        }
    }

    /// Without stamps or without a receive time nothing is judged: the connect is served.
    @Test func aConnectWithoutStampsIsServed() {
        var machine = Self.machine(in: "ready")
        let bare = ControlMessage.Connect(session: Fixture.session, service: "web", token: Fixture.token, client: "c")
        #expect(machine.receive(.connect(bare), receivedAt: 1_000_000) == [.connectRequested(bare)])
        let stamped = ControlMessage.Connect(
            session: Fixture.session, service: "web", token: Fixture.token, client: "c", at: 1, expiresIn: 1)
        #expect(machine.receive(.connect(stamped)) == [.connectRequested(stamped)])
    }

    // MARK: ready

    @Test func connectForAnAcceptedService() {
        var machine = Self.machine(in: "ready")
        let connect = ControlMessage.Connect(
            session: Fixture.session, service: "web", token: Fixture.token, client: "c")
        #expect(machine.receive(.connect(connect)) == [.connectRequested(connect)])
        #expect(machine.state == .ready(services: ["web"]))
    }

    @Test func connectForAnOfferedServiceTheRelayDidNotAccept() {
        // "ssh" was offered but refused at registration; after a reload of the relay's config
        // the relay may assign it, so the agent takes it on.
        var machine = Self.machine(in: "ready")
        let connect = ControlMessage.Connect(
            session: Fixture.session, service: "ssh", token: Fixture.token, client: "c")
        #expect(machine.receive(.connect(connect)) == [.connectRequested(connect)])
    }

    @Test func connectForAServiceNotOfferedIsRefused() {
        var machine = Self.machine(in: "ready")
        let connect = ControlMessage.Connect(
            session: Fixture.session, service: "mail", token: Fixture.token, client: "c")
        #expect(
            machine.receive(.connect(connect))
                == [
                    .send(
                        .refuse(
                            .init(
                                session: Fixture.session, code: .unknownService,
                                message: "agent 'office' does not serve 'mail'")))
                ])
        #expect(machine.state == .ready(services: ["web"]))
    }

    @Test(arguments: ["registered", "ready"])
    func heartbeats(_ state: String) {
        var machine = Self.machine(in: state)
        let before = machine.state
        #expect(machine.receive(.ping(.init(seq: 3))) == [.send(.pong(.init(seq: 3)))])
        #expect(machine.receive(.pong(.init(seq: 8))) == [.pongReceived(seq: 8)])
        #expect(machine.state == before)
    }

    // MARK: errors

    @Test(arguments: ["idle", "challenge", "welcome", "registered", "ready"])
    func peerErrorClosesInEveryState(_ state: String) {
        var machine = Self.machine(in: state)
        let report = ControlMessage.ErrorReport(code: .authFailed, message: "authentication failed")
        #expect(machine.receive(.error(report)) == [.peerError(report)])
        #expect(machine.state == .closed)
        #expect(machine.start() == [])
    }

    @Test(arguments: ["challenge", "welcome", "registered", "ready"])
    func invalidLineCloses(_ state: String) {
        var machine = Self.machine(in: state)
        let error = ProtocolError(.badJSON, "invalid JSON")
        #expect(machine.receiveInvalid(error) == [.fail(error)])
        #expect(machine.state == .closed)
        #expect(machine.receiveInvalid(error) == [])
    }

    @Test(arguments: Fixture.everyMessage)
    func closedIgnoresEverything(_ message: ControlMessage) {
        var machine = Self.machine(in: "closed")
        #expect(machine.receive(message) == [])
        #expect(machine.state == .closed)
    }

    @Test(arguments: Fixture.everyMessage.filter { $0.type != "error" })
    func idleIgnoresMessagesBeforeStart(_ message: ControlMessage) {
        // Not started means no connection yet: nothing to answer, nothing to close.
        var machine = Self.machine(in: "idle")
        #expect(machine.receive(message) == [])
        #expect(machine.state == .idle)
    }

    /// Every message that is not legal in a state fails with unexpected_message and closes.
    @Test(arguments: ["challenge", "welcome", "registered", "ready"], Fixture.everyMessage)
    func unexpectedMessages(_ state: String, _ message: ControlMessage) {
        let legal: [String: Set<String>] = [
            "challenge": ["challenge", "error"],
            "welcome": ["welcome", "error"],
            "registered": ["registered", "ping", "pong", "error"],
            "ready": ["connect", "ping", "pong", "error"],
        ]
        var machine = Self.machine(in: state)
        let actions = machine.receive(message)
        if legal[state]!.contains(message.type) {
            // (The fixture's `welcome` carries a made-up proof: refused as such, not as unexpected.)
            #expect(!actions.contains { if case .fail(let error) = $0 { error.code != .authFailed } else { false } })
        } else {
            #expect(actions == [.fail(ProtocolError(.unexpectedMessage, "'\(message.type)' is not expected now"))])
            #expect(machine.state == .closed)
        }
    }

    // MARK: the relay's answer on a data channel

    @Test func attachedForTheSessionIsAccepted() {
        #expect(AttachReply.evaluate(.attached(.init(session: Fixture.session)), session: Fixture.session) == nil)
    }

    @Test func attachedForAnotherSessionIsUnexpected() {
        #expect(
            AttachReply.evaluate(.attached(.init(session: "000000000000")), session: Fixture.session)
                == ProtocolError(.unexpectedMessage, "expected 'attached' for session 3f9a0c12be47, got 'attached'"))
    }

    @Test(arguments: [ErrorCode.unknownSession, .badToken, .unsupportedVersion])
    func errorReplyCarriesItsCode(_ code: ErrorCode) {
        #expect(
            AttachReply.evaluate(.error(.init(code: code, message: "no")), session: Fixture.session)
                == ProtocolError(code, "no"))
    }

    @Test func anyOtherReplyIsUnexpected() {
        #expect(
            AttachReply.evaluate(.ping(.init(seq: 1)), session: Fixture.session)
                == ProtocolError(.unexpectedMessage, "expected 'attached' for session 3f9a0c12be47, got 'ping'"))
    }
}
