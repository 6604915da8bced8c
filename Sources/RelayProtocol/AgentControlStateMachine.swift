/// The agent's side of one control channel (S1–S4, then S7–S8 and heartbeats), as a pure
/// state machine: call ``start()``, feed it each received message, perform the actions.
///
/// idle → awaitingChallenge → awaitingWelcome → awaitingRegistered → ready → closed.
///
/// Authentication is mutual: `hello` carries the agent's nonce, `auth` proves the secret over
/// both nonces, and the relay's `welcome` must prove it too (with another label) before the
/// agent registers anything. A relay that cannot is an impostor, or holds another secret:
/// the channel closes (``Action/relayNotProven``) and no `register` is ever sent.
public struct AgentControlStateMachine: Sendable {
    /// The states of a control channel at the agent.
    public enum State: Equatable, Sendable {
        /// Not started.
        case idle
        /// Sent `hello`; waiting for `challenge`.
        case awaitingChallenge
        /// Sent `auth`; waiting for `welcome`.
        case awaitingWelcome
        /// Sent `register`; waiting for `registered`.
        case awaitingRegistered
        /// Registered; the relay accepted these services (it may assign more of the
        /// offered ones after a reload of its config).
        case ready(services: [String])
        /// Closed after an error; every further event is ignored.
        case closed
    }

    /// What the I/O layer must do.
    public enum Action: Equatable, Sendable {
        /// Write this message.
        case send(ControlMessage)
        /// Write this `error` message, then close the channel.
        case fail(ProtocolError)
        /// The relay accepted `accepted` and refused the rest.
        case registered(accepted: [String], refused: [ControlMessage.RefusedService])
        /// The relay asks for a data channel for this session (S7); the service is one we offered.
        case connectRequested(ControlMessage.Connect)
        /// The relay answered a ping.
        case pongReceived(seq: UInt64)
        /// The relay reported an error (such as `auth_failed`) and will close.
        case peerError(ControlMessage.ErrorReport)
        /// The relay's `welcome` proof is wrong: it does not know this agent's secret. An
        /// `error` follows as ``fail(_:)``; nothing else is sent.
        case relayNotProven
        /// A `connect` arrived `lag` milliseconds later than the channel's quickest messages,
        /// past its `expiresIn`: dropped without dialling; a `refuse` follows as ``send(_:)``.
        case connectExpired(ControlMessage.Connect, lag: Int64)
    }

    /// The current state.
    public private(set) var state: State = .idle
    private let agentID: String
    private let secret: Secret
    private let services: [String]
    /// The nonce this agent sent in `hello`.
    private let agentNonce: String
    /// The relay's nonce, once its `challenge` came.
    private var relayNonce: String?
    /// How late `connect`s arrive, from the relay's clock stamps.
    private var connectAge = ConnectAge()

    /// Creates the machine for one connection attempt; `agentNonce` is the fresh nonce its
    /// `hello` carries.
    public init(agentID: String, secret: Secret, services: [String], agentNonce: String = Authenticator.makeNonce()) {
        self.agentID = agentID
        self.secret = secret
        self.services = services
        self.agentNonce = agentNonce
    }

    /// Opens the handshake: the first line to send.
    public mutating func start() -> [Action] {
        guard self.state == .idle else { return [] }
        self.state = .awaitingChallenge
        return [.send(.hello(.init(agent: self.agentID, nonce: self.agentNonce)))]
    }

    /// Handles one message received from the relay; `receivedAt` is the agent's monotonic
    /// clock in milliseconds when it arrived (nil: the age of a `connect` is not judged).
    public mutating func receive(_ message: ControlMessage, receivedAt: UInt64? = nil) -> [Action] {
        if let receivedAt, let at = message.at {
            switch message {
            case .challenge, .welcome, .ping, .pong: self.connectAge.observe(at: at, receivedAt: receivedAt)
            default: break
            }
        }
        switch (self.state, message) {
        case (.closed, _):
            return []
        case (_, .error(let report)):
            self.state = .closed
            return [.peerError(report)]
        case (.awaitingChallenge, .challenge(let challenge)):
            self.state = .awaitingWelcome
            self.relayNonce = challenge.nonce
            let proof = Authenticator.agentProof(secret: self.secret, self.handshake(relayNonce: challenge.nonce))
            return [.send(.auth(.init(proof: proof)))]
        case (.awaitingWelcome, .welcome(let welcome)):
            let handshake = self.handshake(relayNonce: self.relayNonce ?? "")
            guard Authenticator.verifyRelay(proof: welcome.proof, secret: self.secret, handshake) else {
                self.state = .closed
                return [
                    .relayNotProven,
                    .fail(ProtocolError(.authFailed, "relay failed to prove it knows the secret")),
                ]
            }
            self.state = .awaitingRegistered
            return [.send(.register(.init(services: self.services)))]
        case (.awaitingRegistered, .registered(let registered)):
            self.state = .ready(services: registered.accepted)
            return [.registered(accepted: registered.accepted, refused: registered.refused)]
        case (.ready, .connect(let connect)):
            // Any service this agent offered: the relay decides which it assigns.
            guard self.services.contains(connect.service) else {
                let refusal = ControlMessage.Refuse(
                    session: connect.session,
                    code: .unknownService,
                    message: "agent '\(self.agentID)' does not serve '\(connect.service)'"
                )
                return [.send(.refuse(refusal))]
            }
            if let receivedAt, self.connectAge.isExpired(connect, receivedAt: receivedAt) {
                let lag = self.connectAge.lag(at: connect.at ?? 0, receivedAt: receivedAt)
                let refusal = ControlMessage.Refuse(
                    session: connect.session,
                    code: .connectExpired,
                    message: "connect arrived \(lag) ms late, past its \(connect.expiresIn ?? 0) ms: dropped"
                )
                return [.connectExpired(connect, lag: lag), .send(.refuse(refusal))]
            }
            return [.connectRequested(connect)]
        case (.awaitingRegistered, .ping(let ping)), (.ready, .ping(let ping)):
            return [.send(.pong(.init(seq: ping.seq)))]
        case (.awaitingRegistered, .pong(let pong)), (.ready, .pong(let pong)):
            return [.pongReceived(seq: pong.seq)]
        default:
            guard self.state != .idle else { return [] }
            self.state = .closed
            return [.fail(ProtocolError(.unexpectedMessage, "'\(message.type)' is not expected now"))]
        }
    }

    private func handshake(relayNonce: String) -> Authenticator.Handshake {
        Authenticator.Handshake(relayNonce: relayNonce, agentNonce: self.agentNonce, agentID: self.agentID)
    }

    /// Handles a line that could not be decoded: report it and close.
    public mutating func receiveInvalid(_ error: ProtocolError) -> [Action] {
        guard self.state != .closed else { return [] }
        self.state = .closed
        return [.fail(error)]
    }
}

/// The relay's answer to an `attach` on a data channel, as the agent judges it.
public enum AttachReply {
    /// Whether the relay's first line on a data channel accepts the session: `nil` when it
    /// does, else the error to log.
    public static func evaluate(_ message: ControlMessage, session: String) -> ProtocolError? {
        switch message {
        case .attached(let attached) where attached.session == session:
            nil
        case .error(let report):
            ProtocolError(report.code, report.message)
        default:
            ProtocolError(.unexpectedMessage, "expected 'attached' for session \(session), got '\(message.type)'")
        }
    }
}
