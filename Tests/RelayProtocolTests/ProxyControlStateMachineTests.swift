import RelayProtocol
import Synchronization
import Testing

@Suite struct ProxyControlStateMachineTests {
    typealias Machine = ProxyControlStateMachine
    static let secret = Secret("correct horse battery staple")
    static let nonce = "bm9uY2Ugbm9uY2U="

    static func make(heartbeatSeconds: Double = 10) -> Machine {
        Machine(
            heartbeatSeconds: heartbeatSeconds,
            lookup: { id in
                id == "office" ? AgentCredentials(secret: Self.secret, services: ["web", "ssh"]) : nil
            },
            makeNonce: { Self.nonce }
        )
    }

    static var goodProof: String { Authenticator.proof(secret: secret, nonce: nonce, agentID: "office") }

    /// A machine driven to `state`: "hello", "auth", "register", "ready", "closed".
    static func machine(in state: String) -> Machine {
        var machine = Self.make()
        if state == "hello" { return machine }
        _ = machine.receive(.hello(.init(agent: "office")))
        if state == "auth" { return machine }
        _ = machine.receive(.auth(.init(proof: Self.goodProof)))
        if state == "register" { return machine }
        _ = machine.receive(.register(.init(services: ["web"])))
        if state == "ready" { return machine }
        _ = machine.receive(.error(.init(code: .shuttingDown, message: "bye")))
        return machine
    }

    static let descriptions = [
        "hello": "before 'hello'",
        "auth": "while waiting for 'auth'",
        "register": "while waiting for 'register'",
        "ready": "on a registered control channel",
    ]

    // MARK: the happy path

    @Test func fullHandshake() {
        var machine = Self.make(heartbeatSeconds: 7.5)
        #expect(machine.state == .awaitingHello)
        #expect(machine.authenticatedAgent == nil)

        #expect(machine.receive(.hello(.init(agent: "office"))) == [.send(.challenge(.init(nonce: Self.nonce)))])
        #expect(machine.state == .awaitingAuth(agent: "office", nonce: Self.nonce))
        #expect(machine.authenticatedAgent == nil)

        #expect(machine.receive(.auth(.init(proof: Self.goodProof))) == [.send(.welcome(.init(heartbeatSeconds: 7.5)))])
        #expect(machine.state == .awaitingRegister(agent: "office"))
        #expect(machine.authenticatedAgent == "office")

        #expect(
            machine.receive(.register(.init(services: ["web", "ssh"])))
                == [
                    .agentReady(agent: "office", services: ["web", "ssh"], offered: ["web", "ssh"]),
                    .send(.registered(.init(accepted: ["web", "ssh"], refused: []))),
                ])
        #expect(machine.state == .ready(agent: "office", services: ["web", "ssh"]))
        #expect(machine.authenticatedAgent == "office")
    }

    @Test func eachConnectionGetsTheNonceFromItsGenerator() {
        var machine = Machine(heartbeatSeconds: 10, lookup: { _ in nil })
        let actions = machine.receive(.hello(.init(agent: "office")))
        guard case .send(.challenge(let challenge)) = actions.first, case .awaitingAuth(_, let nonce) = machine.state
        else {
            Issue.record("expected a challenge, got \(actions)")
            return
        }
        #expect(challenge.nonce == nonce)
        #expect(challenge.nonce.count == 44)
    }

    // MARK: version and authentication

    @Test(arguments: [0, 2, -1, 100])
    func versionMismatch(_ version: Int) {
        var machine = Self.make()
        #expect(
            machine.receive(.hello(.init(version: version, agent: "office")))
                == [.fail(ProtocolError(.unsupportedVersion, "this relay speaks protocol version 1"))])
        #expect(machine.state == .closed)
    }

    static let authFailure = Machine.Action.fail(
        ProtocolError(.authFailed, "authentication failed: unknown agent id or wrong secret"))

    @Test func unknownAgent() {
        var machine = Self.make()
        _ = machine.receive(.hello(.init(agent: "ghost")))
        let proof = Authenticator.proof(secret: Self.secret, nonce: Self.nonce, agentID: "ghost")
        #expect(
            machine.receive(.auth(.init(proof: proof)))
                == [.authenticationFailed(agent: "ghost", .unknownAgent), Self.authFailure])
        #expect(machine.state == .closed)
        #expect(machine.authenticatedAgent == nil)
    }

    @Test func badProofWrongSecret() {
        var machine = Self.make()
        _ = machine.receive(.hello(.init(agent: "office")))
        let proof = Authenticator.proof(secret: Secret("wrong"), nonce: Self.nonce, agentID: "office")
        #expect(
            machine.receive(.auth(.init(proof: proof))) == [
                .authenticationFailed(agent: "office", .badProof), Self.authFailure,
            ])
        #expect(machine.state == .closed)
    }

    @Test func badProofOverAnotherNonce() {
        var machine = Self.make()
        _ = machine.receive(.hello(.init(agent: "office")))
        let proof = Authenticator.proof(secret: Self.secret, nonce: "another", agentID: "office")
        #expect(
            machine.receive(.auth(.init(proof: proof))) == [
                .authenticationFailed(agent: "office", .badProof), Self.authFailure,
            ])
    }

    @Test func badProofNotHex() {
        var machine = Self.make()
        _ = machine.receive(.hello(.init(agent: "office")))
        #expect(
            machine.receive(.auth(.init(proof: String(repeating: "z", count: 64))))
                == [.authenticationFailed(agent: "office", .badProof), Self.authFailure])
    }

    @Test func unknownAgentAndBadProofLookTheSameOnTheWire() {
        var first = Self.make()
        _ = first.receive(.hello(.init(agent: "ghost")))
        var second = Self.make()
        _ = second.receive(.hello(.init(agent: "office")))
        let one = first.receive(.auth(.init(proof: Fixture.proof))).filter {
            if case .fail = $0 { true } else { false }
        }
        let two = second.receive(.auth(.init(proof: Fixture.proof))).filter {
            if case .fail = $0 { true } else { false }
        }
        #expect(one == two)
        #expect(one == [Self.authFailure])
    }

    // MARK: registration

    @Test func registrationAcceptsOnlyAssignedServicesAndDedupes() {
        var machine = Self.machine(in: "register")
        let actions = machine.receive(.register(.init(services: ["db", "web", "db", "web", "ssh", "mail"])))
        let dbMessage = "service 'db' is not assigned to agent 'office' in the relay's config"
        let mailMessage = "service 'mail' is not assigned to agent 'office' in the relay's config"
        #expect(
            actions == [
                .agentReady(agent: "office", services: ["web", "ssh"], offered: ["web", "ssh", "db", "mail"]),
                .send(
                    .registered(
                        .init(
                            accepted: ["web", "ssh"],
                            refused: [
                                .init(service: "db", code: .unknownService, message: dbMessage),
                                .init(service: "mail", code: .unknownService, message: mailMessage),
                            ]))),
            ])
        #expect(machine.state == .ready(agent: "office", services: ["web", "ssh"]))
    }

    @Test func registeringNothingIsAllowed() {
        var machine = Self.machine(in: "register")
        #expect(
            machine.receive(.register(.init(services: [])))
                == [
                    .agentReady(agent: "office", services: [], offered: []),
                    .send(.registered(.init(accepted: [], refused: []))),
                ])
    }

    @Test func aConfigReloadBetweenAuthAndRegisterIsHonoured() {
        // The lookup is asked again at register time, so a reload that drops the agent refuses everything.
        let lookups = LookupCounter()
        var machine = Machine(
            heartbeatSeconds: 10,
            lookup: { id in
                lookups.next() == 0 ? AgentCredentials(secret: Self.secret, services: ["web"]) : nil
            },
            makeNonce: { Self.nonce })
        _ = machine.receive(.hello(.init(agent: "office")))
        _ = machine.receive(.auth(.init(proof: Self.goodProof)))
        let actions = machine.receive(.register(.init(services: ["web"])))
        #expect(actions.first == .agentReady(agent: "office", services: [], offered: ["web"]))
    }

    // MARK: ready

    @Test func readyHandlesRefusePingPong() {
        var machine = Self.machine(in: "ready")
        let refuse = ControlMessage.Refuse(session: Fixture.session, code: .targetUnreachable, message: "down")
        #expect(machine.receive(.refuse(refuse)) == [.sessionRefused(refuse)])
        #expect(machine.receive(.ping(.init(seq: 9))) == [.send(.pong(.init(seq: 9)))])
        #expect(machine.receive(.pong(.init(seq: 4))) == [.pongReceived(seq: 4)])
        #expect(machine.state == .ready(agent: "office", services: ["web"]))
    }

    @Test func heartbeatsAreAnsweredWhileWaitingForRegister() {
        var machine = Self.machine(in: "register")
        #expect(machine.receive(.ping(.init(seq: 1))) == [.send(.pong(.init(seq: 1)))])
        #expect(machine.receive(.pong(.init(seq: 2))) == [.pongReceived(seq: 2)])
        #expect(machine.state == .awaitingRegister(agent: "office"))
    }

    // MARK: errors, invalid lines, close

    @Test(arguments: ["hello", "auth", "register", "ready"])
    func peerErrorClosesInEveryState(_ state: String) {
        var machine = Self.machine(in: state)
        let report = ControlMessage.ErrorReport(code: .shuttingDown, message: "bye")
        #expect(machine.receive(.error(report)) == [.peerError(report)])
        #expect(machine.state == .closed)
    }

    @Test(arguments: ["hello", "auth", "register", "ready"])
    func invalidLineClosesInEveryState(_ state: String) {
        var machine = Self.machine(in: state)
        let error = ProtocolError(.lineTooLong, "line longer than 16384 bytes")
        #expect(machine.receiveInvalid(error) == [.fail(error)])
        #expect(machine.state == .closed)
        #expect(machine.receiveInvalid(error) == [])
    }

    @Test func closeFromOutside() {
        var machine = Self.machine(in: "ready")
        #expect(machine.close(.replaced, "newer channel") == [.fail(ProtocolError(.replaced, "newer channel"))])
        #expect(machine.state == .closed)
        #expect(machine.close(.timeout, "again") == [])
    }

    @Test(arguments: Fixture.everyMessage)
    func closedIgnoresEverything(_ message: ControlMessage) {
        var machine = Self.machine(in: "closed")
        #expect(machine.state == .closed)
        #expect(machine.receive(message) == [])
        #expect(machine.state == .closed)
    }

    /// Every message that is not legal in a state fails with unexpected_message and closes.
    @Test(arguments: ["hello", "auth", "register", "ready"], Fixture.everyMessage)
    func unexpectedMessages(_ state: String, _ message: ControlMessage) {
        let legal: [String: Set<String>] = [
            "hello": ["hello", "error"],
            "auth": ["auth", "error"],
            "register": ["register", "ping", "pong", "error"],
            "ready": ["refuse", "ping", "pong", "error"],
        ]
        var machine = Self.machine(in: state)
        let actions = machine.receive(message)
        if legal[state]!.contains(message.type) {
            #expect(!actions.contains { if case .fail(let e) = $0 { e.code == .unexpectedMessage } else { false } })
        } else {
            let expected = ProtocolError(
                .unexpectedMessage, "'\(message.type)' is not expected \(Self.descriptions[state]!)")
            #expect(actions == [.fail(expected)])
            #expect(machine.state == .closed)
        }
    }
}

/// Counts lookups from a `@Sendable` closure.
final class LookupCounter: Sendable {
    private let count = Mutex(0)
    func next() -> Int {
        self.count.withLock { value in
            defer { value += 1 }
            return value
        }
    }
}
