/// The agent's side of one control channel (S1–S4, then S7–S8 and heartbeats), as a pure
/// state machine: call ``start()``, feed it each received message, perform the actions.
///
/// idle → awaitingChallenge → awaitingWelcome → awaitingRegistered → ready → closed.
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
    }

    /// The current state.
    public private(set) var state: State = .idle
    private let agentID: String
    private let secret: Secret
    private let services: [String]

    /// Creates the machine for one connection attempt.
    public init(agentID: String, secret: Secret, services: [String]) {
        self.agentID = agentID
        self.secret = secret
        self.services = services
    }

    /// Opens the handshake: the first line to send.
    public mutating func start() -> [Action] {
        guard self.state == .idle else { return [] }
        self.state = .awaitingChallenge
        return [.send(.hello(.init(agent: self.agentID)))]
    }

    /// Handles one message received from the relay.
    public mutating func receive(_ message: ControlMessage) -> [Action] {
        switch (self.state, message) {
        case (.closed, _):
            return []
        case (_, .error(let report)):
            self.state = .closed
            return [.peerError(report)]
        case (.awaitingChallenge, .challenge(let challenge)):
            self.state = .awaitingWelcome
            let proof = Authenticator.proof(secret: self.secret, nonce: challenge.nonce, agentID: self.agentID)
            return [.send(.auth(.init(proof: proof)))]
        case (.awaitingWelcome, .welcome):
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
