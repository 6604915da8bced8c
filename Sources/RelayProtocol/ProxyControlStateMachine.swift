/// What the relay knows of one configured agent when it authenticates it.
public struct AgentCredentials: Sendable {
    /// The agent's shared secret.
    public var secret: Secret
    /// The services the relay's config assigns to this agent.
    public var services: Set<String>
    /// Secrets still accepted during a rotation window (the one a reload replaced).
    public var previousSecrets: [Secret]

    /// Creates the credentials of one agent.
    public init(secret: Secret, services: Set<String>, previousSecrets: [Secret] = []) {
        self.secret = secret
        self.services = services
        self.previousSecrets = previousSecrets
    }
}

/// The relay's side of one control channel (S1–S4, then S7–S8 and heartbeats), as a pure
/// state machine: feed it each received message, perform the actions it returns.
///
/// awaitingHello → awaitingAuth → awaitingRegister → ready → closed. Any violation sends an
/// `error` and closes; nothing in here does I/O.
///
/// The agent proves its secret first (over both nonces), so a stranger never obtains a relay
/// proof to guess a secret from offline; only then does `welcome` carry the relay's proof. An
/// unknown agent id is checked against a dummy key, exactly as many HMACs as a known one, and
/// answered with the same bytes.
public struct ProxyControlStateMachine: Sendable {
    /// The states of a control channel at the relay.
    public enum State: Equatable, Sendable {
        /// Waiting for the agent's `hello`.
        case awaitingHello
        /// Sent `challenge` with this nonce to the agent claiming this id, whose `hello`
        /// carried `agentNonce`.
        case awaitingAuth(agent: String, nonce: String, agentNonce: String)
        /// Authenticated; waiting for `register`.
        case awaitingRegister(agent: String)
        /// Registered: the agent serves these services and answers `connect`.
        case ready(agent: String, services: [String])
        /// Closed after an error; every further event is ignored.
        case closed
    }

    /// Why authentication failed: told apart in the relay's log, never on the wire.
    public enum AuthFailure: Equatable, Sendable {
        /// No agent with this id is configured.
        case unknownAgent
        /// The agent is configured but its proof is wrong (wrong secret).
        case badProof
    }

    /// What the I/O layer must do.
    public enum Action: Equatable, Sendable {
        /// Write this message.
        case send(ControlMessage)
        /// Write this `error` message, then close the channel.
        case fail(ProtocolError)
        /// Authentication failed for this claimed id; an `error` follows as `.fail`.
        case authenticationFailed(agent: String, AuthFailure)
        /// The agent is registered and serves `services` (of all it `offered`): make it
        /// reachable. It comes before the `registered` answer, so that an agent never hears it
        /// is registered before the relay routes clients to it.
        case agentReady(agent: String, services: [String], offered: [String])
        /// The agent refused a session.
        case sessionRefused(ControlMessage.Refuse)
        /// The agent answered a ping.
        case pongReceived(seq: UInt64)
        /// The agent reported an error and will close.
        case peerError(ControlMessage.ErrorReport)
        /// The agent is restarting and will register again soon: hold its clients meanwhile.
        case agentRestarting(agent: String)
    }

    /// The current state.
    public private(set) var state: State = .awaitingHello
    private let lookup: @Sendable (String) -> AgentCredentials?
    private let makeNonce: @Sendable () -> String
    private let heartbeatSeconds: Double
    private let verify: Verifier

    /// Checks an agent's proof against one candidate secret (injectable, so a test can
    /// count the checks an unknown id costs).
    public typealias Verifier = @Sendable (_ proof: String, _ secret: Secret, Authenticator.Handshake) -> Bool

    /// How many secrets every `auth` is checked against, whoever claims to send it: the
    /// current one and one from a rotation window, padded with the dummy key.
    public static let proofChecks = 2

    /// Creates the machine for a fresh connection; `lookup` answers from the relay's config.
    public init(
        heartbeatSeconds: Double,
        lookup: @escaping @Sendable (String) -> AgentCredentials?,
        makeNonce: @escaping @Sendable () -> String = Authenticator.makeNonce,
        verify: @escaping Verifier = { Authenticator.verifyAgent(proof: $0, secret: $1, $2) }
    ) {
        self.heartbeatSeconds = heartbeatSeconds
        self.lookup = lookup
        self.makeNonce = makeNonce
        self.verify = verify
    }

    /// The secret the agent proved it holds: the current one, or one still accepted
    /// during a rotation window.
    public private(set) var provedSecret: Secret?

    /// The agent id, once it has authenticated.
    public var authenticatedAgent: String? {
        switch self.state {
        case .awaitingRegister(let agent), .ready(let agent, _): agent
        default: nil
        }
    }

    /// Handles one message received from the agent.
    public mutating func receive(_ message: ControlMessage) -> [Action] {
        switch (self.state, message) {
        case (.closed, _):
            return []
        case (_, .error(let report)):
            self.state = .closed
            return [.peerError(report)]
        case (.awaitingHello, .hello(let hello)):
            guard hello.version == ProtocolLimits.version else {
                return self.fail(.unsupportedVersion, Self.versionMismatch(hello.version))
            }
            guard let agentNonce = hello.nonce else {
                return self.fail(.badMessage, "missing field 'nonce'")
            }
            let nonce = self.makeNonce()
            self.state = .awaitingAuth(agent: hello.agent, nonce: nonce, agentNonce: agentNonce)
            return [.send(.challenge(.init(nonce: nonce)))]
        case (.awaitingAuth(let agent, let nonce, let agentNonce), .auth(let auth)):
            let handshake = Authenticator.Handshake(relayNonce: nonce, agentNonce: agentNonce, agentID: agent)
            let credentials = self.lookup(agent)
            // Every claim costs the same checks: a known id's secrets, padded with the dummy
            // key (an unknown id gets only that), each checked, none skipped.
            var candidates = credentials.map { [$0.secret] + $0.previousSecrets } ?? []
            let known = candidates.count
            while candidates.count < Self.proofChecks { candidates.append(Authenticator.dummySecret) }
            var proved: Secret?
            for (index, candidate) in candidates.enumerated() {
                let valid = self.verify(auth.proof, candidate, handshake)
                if valid && index < known && proved == nil { proved = candidate }
            }
            guard credentials != nil else {
                return [.authenticationFailed(agent: agent, .unknownAgent)] + self.authFailed()
            }
            guard let proved else {
                return [.authenticationFailed(agent: agent, .badProof)] + self.authFailed()
            }
            self.provedSecret = proved
            self.state = .awaitingRegister(agent: agent)
            let proof = Authenticator.relayProof(secret: proved, handshake)
            return [.send(.welcome(.init(heartbeatSeconds: self.heartbeatSeconds, proof: proof)))]
        case (.awaitingRegister(let agent), .register(let register)):
            let assigned = self.lookup(agent)?.services ?? []
            var accepted: [String] = []
            var refused: [ControlMessage.RefusedService] = []
            for name in register.services
            where !accepted.contains(name) && !refused.contains(where: { $0.service == name }) {
                if assigned.contains(name) {
                    accepted.append(name)
                } else {
                    refused.append(
                        .init(
                            service: name,
                            code: .unknownService,
                            message: "service '\(name)' is not assigned to agent '\(agent)' in the relay's config"
                        )
                    )
                }
            }
            self.state = .ready(agent: agent, services: accepted)
            return [
                .agentReady(agent: agent, services: accepted, offered: accepted + refused.map(\.service)),
                .send(.registered(.init(accepted: accepted, refused: refused))),
            ]
        case (.ready, .refuse(let refuse)):
            return [.sessionRefused(refuse)]
        case (.ready(let agent, _), .restarting):
            return [.agentRestarting(agent: agent)]
        case (.awaitingRegister, .ping(let ping)), (.ready, .ping(let ping)):
            return [.send(.pong(.init(seq: ping.seq)))]
        case (.awaitingRegister, .pong(let pong)), (.ready, .pong(let pong)):
            return [.pongReceived(seq: pong.seq)]
        default:
            return self.fail(.unexpectedMessage, "'\(message.type)' is not expected \(self.stateDescription)")
        }
    }

    /// Handles a line that could not be decoded (or was too long): report it and close.
    public mutating func receiveInvalid(_ error: ProtocolError) -> [Action] {
        guard self.state != .closed else { return [] }
        self.state = .closed
        return [.fail(error)]
    }

    /// Ends the machine for a reason decided outside it (heartbeat timeout, replacement, shutdown).
    public mutating func close(_ code: ErrorCode, _ message: String) -> [Action] {
        self.fail(code, message)
    }

    private mutating func fail(_ code: ErrorCode, _ message: String) -> [Action] {
        guard self.state != .closed else { return [] }
        self.state = .closed
        return [.fail(ProtocolError(code, message))]
    }

    /// What an agent speaking `version` is told.
    public static func versionMismatch(_ version: Int) -> String {
        "this relay speaks protocol version \(ProtocolLimits.version), the agent \(version): "
            + "install the same release of relay-agent as of relay-proxy"
    }

    private mutating func authFailed() -> [Action] {
        self.fail(.authFailed, "authentication failed: unknown agent id or wrong secret")
    }

    private var stateDescription: String {
        switch self.state {
        case .awaitingHello: "before 'hello'"
        case .awaitingAuth: "while waiting for 'auth'"
        case .awaitingRegister: "while waiting for 'register'"
        case .ready: "on a registered control channel"
        case .closed: "after close"
        }
    }
}
