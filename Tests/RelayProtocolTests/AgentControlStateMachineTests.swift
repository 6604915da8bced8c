import RelayProtocol
import Testing

@Suite struct AgentControlStateMachineTests {
    typealias Machine = AgentControlStateMachine
    static let secret = Secret("correct horse battery staple")

    static func make() -> Machine {
        Machine(agentID: "office", secret: Self.secret, services: ["web", "ssh"])
    }

    /// A machine driven to `state`: "idle", "challenge", "welcome", "registered", "ready", "closed".
    static func machine(in state: String) -> Machine {
        var machine = Self.make()
        if state == "idle" { return machine }
        _ = machine.start()
        if state == "challenge" { return machine }
        _ = machine.receive(.challenge(.init(nonce: "bm9uY2U=")))
        if state == "welcome" { return machine }
        _ = machine.receive(.welcome(.init(heartbeatSeconds: 10)))
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
        #expect(machine.start() == [.send(.hello(.init(version: 1, agent: "office")))])
        #expect(machine.state == .awaitingChallenge)
        #expect(machine.start() == [])

        let proof = Authenticator.proof(secret: Self.secret, nonce: "bm9uY2U=", agentID: "office")
        #expect(machine.receive(.challenge(.init(nonce: "bm9uY2U="))) == [.send(.auth(.init(proof: proof)))])
        #expect(machine.state == .awaitingWelcome)

        #expect(
            machine.receive(.welcome(.init(heartbeatSeconds: 10))) == [
                .send(.register(.init(services: ["web", "ssh"])))
            ])
        #expect(machine.state == .awaitingRegistered)

        let refused = [ControlMessage.RefusedService(service: "ssh", code: .unknownService, message: "no")]
        #expect(
            machine.receive(.registered(.init(accepted: ["web"], refused: refused)))
                == [.registered(accepted: ["web"], refused: refused)])
        #expect(machine.state == .ready(services: ["web"]))
    }

    @Test func theProofIsOverTheNonceAsSent() {
        var machine = Self.machine(in: "challenge")
        let nonce = Authenticator.makeNonce()
        let actions = machine.receive(.challenge(.init(nonce: nonce)))
        guard case .send(.auth(let auth)) = actions.first else {
            Issue.record("expected auth, got \(actions)")
            return
        }
        #expect(Authenticator.verify(proof: auth.proof, secret: Self.secret, nonce: nonce, agentID: "office"))
        #expect(!Authenticator.verify(proof: auth.proof, secret: Self.secret, nonce: "other", agentID: "office"))
    }

    @Test func anAgentWithoutServicesRegistersNone() {
        var machine = Machine(agentID: "empty", secret: Secret("s"), services: [])
        _ = machine.start()
        _ = machine.receive(.challenge(.init(nonce: "n")))
        #expect(machine.receive(.welcome(.init(heartbeatSeconds: 1))) == [.send(.register(.init(services: [])))])
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
            #expect(!actions.contains { if case .fail = $0 { true } else { false } })
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
