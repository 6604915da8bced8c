/// One session's life at either daemon (S5–S20), as a pure state machine: call ``start()``,
/// feed it every event the session's I/O sees, perform the actions it returns. It does no
/// I/O and reads no clock: timers are actions (arm, cancel) and their expiry is an event.
///
/// ```
/// idle ─start─► pending ─joined─► open ─both FINs passed on, a failure, a kill─► closing
///                  │                                                         │ connections closed
///                  └─ refused, timed out, failed, killed (nothing pumped) ─► closed ◄┘
/// ```
///
/// The rules, each written once here:
/// - **one end, the first**: the first event that ends a session decides its reason; every
///   later failure (the reset a kill causes, the other direction's error) is a consequence
///   and changes nothing. ``Action/reportEnd(_:)`` comes exactly once, when the state
///   becomes ``State/closed(_:)``.
/// - **closed only when both directions ended or one failed**: a FIN passed on ends one
///   direction; a failure on either side (a reset, an error, a kill, a timeout) ends both,
///   because the session's connections are reset together. A session whose pump ran is
///   closed only once its connections are closed too (``Event/connectionsClosed``).
/// - **a half-close starts the half-close timer**: when the first direction ends, the
///   timer is armed (if the config has one); when the second ends or the session fails,
///   it is cancelled; when it fires while one direction is still open, the side that has
///   not ended is blamed and the session is reset.
/// - **before the join, closing is gentle; from outside, it is a reset**: a refusal, an
///   attach timeout, a lost control channel or an unreachable target close the session's
///   connections; a kill, a removal with `close`, a drain deadline and every failure reset
///   them, so each next hop sees a reset and tears down too.
/// - **stop drains**: at shutdown, open sessions go on until the drain deadline; at the relay
///   a session still waiting for its data channel fails at once (its agent port is closed).
///
/// An event that makes no sense in the current state is answered with a defined action:
/// nothing (ignored), a refused data channel, or the reset of a connection that arrived
/// after the end. Nothing in here traps.
public struct SessionStateMachine: Sendable {
    /// Which daemon runs the session.
    public enum Role: Sendable, Equatable {
        /// relay-proxy: the pump's first side is the client, its second the data channel.
        case relay
        /// relay-agent: the pump's first side is the data channel, its second the target.
        case agent
    }

    /// One of the pump's two sides; a direction is named by the side its bytes come from.
    public enum Side: Sendable, Equatable, CaseIterable {
        /// The client (relay) or the data channel (agent).
        case first
        /// The data channel (relay) or the target (agent).
        case second

        /// The side across the session.
        public var other: Side { self == .first ? .second : .first }
    }

    /// What the service's removal by a reload does to its live sessions (`removedServiceSessions`).
    public enum Removal: Sendable, Equatable {
        /// They go on until their ends close them.
        case drain
        /// They are reset at once, as by a kill.
        case close
    }

    /// How far one connection attempt of the agent got.
    public enum Dial: Sendable, Equatable {
        /// Not started yet.
        case notStarted
        /// Under way.
        case dialling
        /// Connected.
        case connected
    }

    /// Where a session waits before its two connections are joined.
    public enum Pending: Sendable, Equatable {
        /// Relay (S7–S10): `connect` sent, waiting for the agent's data channel.
        case awaitingDataChannel
        /// Relay (S11): a data channel showed the right token; `attached` is being written.
        case attaching
        /// Agent (S9–S10): dialling the target and the data channel.
        case dialling(target: Dial, dataChannel: Dial)
        /// Agent (S10–S11): both connected, `attach` sent, waiting for `attached`.
        case awaitingAttached
    }

    /// One direction of an open session, named by the side its bytes come from.
    public struct Direction: Sendable, Equatable {
        /// The source side sent its FIN (end of stream read).
        public var finRead = false
        /// The FIN was passed on: the bytes before it were flushed and the other side's
        /// writes were shut down. The direction has ended.
        public var finPassedOn = false

        /// A direction that has not ended.
        public init() {}
    }

    /// Both directions of an open session (passt's `FIN_RCVD` / `FIN_SENT` per side).
    public struct Directions: Sendable, Equatable {
        /// From the first side to the second (at the relay: client → agent, bytes in).
        public var forward = Direction()
        /// From the second side to the first (bytes out).
        public var backward = Direction()
        /// Whether the half-close timer is armed.
        public var halfCloseTimerArmed = false

        /// Both directions open.
        public init() {}

        /// The direction whose bytes come from `side`.
        public subscript(from side: Side) -> Direction {
            get { side == .first ? self.forward : self.backward }
            set {
                if side == .first { self.forward = newValue } else { self.backward = newValue }
            }
        }

        /// How many directions have ended.
        public var ended: Int { (self.forward.finPassedOn ? 1 : 0) + (self.backward.finPassedOn ? 1 : 0) }
    }

    /// The states of a session.
    public enum State: Sendable, Equatable {
        /// Created, not started.
        case idle
        /// Waiting to be joined.
        case pending(Pending)
        /// Joined: the pump runs; per direction, how far its end of stream got.
        case open(Directions)
        /// Ended for this reason; its connections are being closed or reset and the pump is
        /// stopping. Every further event but ``Event/connectionsClosed`` is ignored.
        case closing(SessionEnd)
        /// Ended and reported. Every further event is ignored.
        case closed(SessionEnd)
    }

    /// What happened to the session.
    public enum Event: Sendable, Equatable {
        // Relay, before the join.
        /// The `connect` could not be queued: the agent's control channel is congested.
        case connectNotSent
        /// The agent answered `refuse` with this code and message.
        case refused(ErrorCode, String)
        /// The attach timer fired.
        case attachTimedOut
        /// The agent's control channel closed (only a session still waiting for its data
        /// channel depends on it).
        case agentDisconnected
        /// A data channel sent `attach` for this session, with the right token or not.
        case dataChannelArrived(tokenMatches: Bool)
        /// `attached` was written on the data channel.
        case attachedSent
        /// Writing `attached` failed: the data channel is gone.
        case attachedNotSent

        // Agent, before the join.
        /// The target is connected.
        case targetDialled
        /// The target could not be reached; the message says why ("cannot connect to …").
        case targetFailed(String)
        /// The data channel to the relay is connected.
        case dataChannelDialled
        /// The data channel could not be opened ("cannot open a data channel to …").
        case dataChannelFailed(String)
        /// The relay answered `attached` for this session.
        case attachAccepted
        /// The relay refused the data channel, closed it, or answered something else.
        case attachRejected(String)

        // The pump.
        /// End of stream was read on `side`; bytes read before it may still be queued.
        case finRead(Side)
        /// The FIN read on `side` was passed on: the bytes before it reached the other
        /// side's socket and its writes were shut down. (A pump that does both at once
        /// reports only this.)
        case finPassedOn(Side)
        /// A read or write on `side` failed (a reset, an error, a close from outside).
        case failed(Side, String)
        /// The half-close timer fired: one direction ended and no byte moved since.
        case halfCloseTimedOut
        /// The session's connections are closed: the pump returned and nothing touches them.
        case connectionsClosed

        // From outside.
        /// `relayctl kill`.
        case kill
        /// A reload removed the session's service.
        case serviceRemoved(Removal)
        /// The daemon is stopping (SIGTERM): live sessions drain.
        case stop
        /// The drain at shutdown is over: what is still live is reset.
        case drainDeadlinePassed
    }

    /// What the I/O layer must do, in order.
    public enum Action: Sendable, Equatable {
        // Relay.
        /// Send `connect` for this session on the agent's control channel (S7).
        case sendConnect
        /// Arm the attach timer; ``Event/attachTimedOut`` when it fires.
        case armAttachTimer(seconds: Double)
        /// Cancel the attach timer.
        case cancelAttachTimer
        /// Write `attached` on the data channel, then report ``Event/attachedSent``.
        case sendAttached
        /// Answer the data channel with this `error` and close it; the session is unchanged.
        case rejectDataChannel(ProtocolError)

        // Agent.
        /// Dial the service's target.
        case dialTarget
        /// Dial the relay's agent port for a data channel.
        case dialDataChannel
        /// Send `attach` on the data channel and read the answer.
        case sendAttach
        /// Send `refuse` on the control channel (S8), so the relay closes its client at once.
        case sendRefuse(ErrorCode, String)

        // Both.
        /// Join the two connections: start the pump (S11–S13).
        case startPumping
        /// Once the bytes queued for `side` are flushed, shut down its writes (the FIN goes on).
        case shutDownWrites(Side)
        /// Arm the half-close timer: ``Event/halfCloseTimedOut`` once no byte has moved for
        /// this long (whoever runs it restarts it when bytes move).
        case armHalfCloseTimer(seconds: Double)
        /// Cancel the half-close timer.
        case cancelHalfCloseTimer
        /// Close the session's connections normally (a FIN where one is still owed).
        case closeBoth
        /// Reset every connection the session has (SO_LINGER 0, then close).
        case resetBoth
        /// The session ended: log it, count it. Comes exactly once.
        case reportEnd(SessionEnd)
    }

    /// The current state.
    public private(set) var state: State = .idle
    /// Which daemon runs the session.
    public let role: Role
    private let attachTimeout: Double
    private let halfCloseTimeout: Double?
    private let dialsInParallel: Bool

    /// A relay session: `attachTimeoutSeconds`, and `halfCloseTimeoutSeconds` (0: none).
    public static func relay(attachTimeout: Double, halfCloseTimeout: Double) -> Self {
        Self(role: .relay, attachTimeout: attachTimeout, halfCloseTimeout: halfCloseTimeout, dialsInParallel: false)
    }

    /// An agent session: `halfCloseTimeoutSeconds` (0: none); the target and the data channel
    /// are dialled one after the other (the target first, S9 then S10) or at the same time.
    public static func agent(halfCloseTimeout: Double, dialsInParallel: Bool = false) -> Self {
        Self(role: .agent, attachTimeout: 0, halfCloseTimeout: halfCloseTimeout, dialsInParallel: dialsInParallel)
    }

    private init(role: Role, attachTimeout: Double, halfCloseTimeout: Double, dialsInParallel: Bool) {
        self.role = role
        self.attachTimeout = attachTimeout
        self.halfCloseTimeout = halfCloseTimeout > 0 ? halfCloseTimeout : nil
        self.dialsInParallel = dialsInParallel
    }

    /// Starts the session: the first steps to take.
    public mutating func start() -> [Action] {
        guard self.state == .idle else { return [] }
        switch self.role {
        case .relay:
            self.state = .pending(.awaitingDataChannel)
            return [.sendConnect, .armAttachTimer(seconds: self.attachTimeout)]
        case .agent:
            let data: Dial = self.dialsInParallel ? .dialling : .notStarted
            self.state = .pending(.dialling(target: .dialling, dataChannel: data))
            return self.dialsInParallel ? [.dialTarget, .dialDataChannel] : [.dialTarget]
        }
    }

    /// Starts a session taken over, already open, from the process before (a handover):
    /// the directions whose end of stream was passed on have ended. No action: the data
    /// plane goes on moving its bytes.
    public mutating func resume(forwardFinished: Bool, backwardFinished: Bool) -> [Action] {
        guard self.state == .idle else { return [] }
        var directions = Directions()
        directions.forward.finRead = forwardFinished
        directions.forward.finPassedOn = forwardFinished
        directions.backward.finRead = backwardFinished
        directions.backward.finPassedOn = backwardFinished
        self.state = .open(directions)
        return []
    }

    /// Handles one event.
    public mutating func handle(_ event: Event) -> [Action] {
        switch self.state {
        case .idle: return self.idle(event)
        case .pending(let pending): return self.pending(pending, event)
        case .open(let directions): return self.open(directions, event)
        case .closing(let end): return self.closing(end, event)
        case .closed: return self.turnAway(event)
        }
    }

    // MARK: - States

    private mutating func idle(_ event: Event) -> [Action] {
        // Nothing is open yet: only an end from outside matters.
        if let reason = self.endFromOutside(event) { return self.endBeforeJoin(reason, reset: true) }
        if event == .stop, self.role == .relay { return self.endBeforeJoin(.shuttingDown, reset: false) }
        return self.turnAway(event)
    }

    private mutating func pending(_ pending: Pending, _ event: Event) -> [Action] {
        // The attach timer runs only while the relay waits for the data channel.
        let cancel: [Action] = pending == .awaitingDataChannel ? [.cancelAttachTimer] : []
        if let reason = self.endFromOutside(event) { return cancel + self.endBeforeJoin(reason, reset: true) }
        switch event {
        case .failed(let side, let why):
            return cancel + self.endBeforeJoin(.failed(self.peer(side), why), reset: true)
        case .connectionsClosed:
            return cancel + self.endBeforeJoin(.failed(self.peer(.first), "connection closed"), reset: true)
        case .stop where self.role == .relay && pending == .awaitingDataChannel:
            // Its data channel can no longer come: the agent port is closed. (The agent's
            // pending sessions drain: they may still attach.)
            return cancel + self.endBeforeJoin(.shuttingDown, reset: false)
        default:
            break
        }
        switch (self.role, pending, event) {
        // Relay: waiting for the data channel.
        case (.relay, .awaitingDataChannel, .connectNotSent):
            return [.cancelAttachTimer] + self.endBeforeJoin(.agentCongested, reset: false)
        case (.relay, .awaitingDataChannel, .refused(let code, let message)):
            return [.cancelAttachTimer] + self.endBeforeJoin(.refused(code, message), reset: false)
        case (.relay, .awaitingDataChannel, .agentDisconnected):
            return [.cancelAttachTimer] + self.endBeforeJoin(.agentDisconnected, reset: false)
        case (.relay, .awaitingDataChannel, .attachTimedOut):
            return self.endBeforeJoin(.attachTimeout(self.attachTimeout), reset: false)
        case (.relay, .awaitingDataChannel, .dataChannelArrived(let tokenMatches)):
            guard tokenMatches else {
                return [.rejectDataChannel(ProtocolError(.badToken, "wrong token or proof for this session"))]
            }
            self.state = .pending(.attaching)
            return [.cancelAttachTimer, .sendAttached]
        // Relay: writing `attached`.
        case (.relay, .attaching, .attachedSent):
            self.state = .open(Directions())
            return [.startPumping]
        case (.relay, .attaching, .attachedNotSent):
            return self.endBeforeJoin(.agentDisconnected, reset: false)
        // Agent: dialling.
        case (.agent, .dialling(.dialling, let data), .targetDialled):
            return self.dialled(target: .connected, dataChannel: data)
        case (.agent, .dialling(.dialling, _), .targetFailed(let message)):
            return self.endBeforeJoin(.targetUnreachable(message), reset: false, refuse: .targetUnreachable)
        case (.agent, .dialling(let target, .dialling), .dataChannelDialled):
            return self.dialled(target: target, dataChannel: .connected)
        case (.agent, .dialling(_, .dialling), .dataChannelFailed(let message)):
            return self.endBeforeJoin(.dataChannelFailed(message), reset: false, refuse: .dataChannelFailed)
        // Agent: waiting for `attached`.
        case (.agent, .awaitingAttached, .attachAccepted):
            self.state = .open(Directions())
            return [.startPumping]
        case (.agent, .awaitingAttached, .attachRejected(let message)):
            return self.endBeforeJoin(.attachRejected(message), reset: false)
        case (.relay, _, .dataChannelArrived):
            return [Self.notWaiting]
        default:
            // Out of order, repeated, the other daemon's event, or a pump event before the
            // pump runs: ignored.
            return []
        }
    }

    private mutating func open(_ directions: Directions, _ event: Event) -> [Action] {
        var directions = directions
        if let reason = self.endFromOutside(event) { return self.fail(reason, directions) }
        switch event {
        case .finRead(let side):
            guard !directions[from: side].finRead else { return [] }
            directions[from: side].finRead = true
            self.state = .open(directions)
            return [.shutDownWrites(side.other)]
        case .finPassedOn(let side):
            guard !directions[from: side].finPassedOn else { return [] }
            directions[from: side].finRead = true
            directions[from: side].finPassedOn = true
            if directions.ended == 2 {
                self.state = .closing(SessionEnd(.bothEnded, joined: true))
                return (directions.halfCloseTimerArmed ? [.cancelHalfCloseTimer] : []) + [.closeBoth]
            }
            guard let timeout = self.halfCloseTimeout, !directions.halfCloseTimerArmed else {
                self.state = .open(directions)
                return []
            }
            directions.halfCloseTimerArmed = true
            self.state = .open(directions)
            return [.armHalfCloseTimer(seconds: timeout)]
        case .failed(let side, let why):
            return self.fail(.failed(self.peer(side), why), directions)
        case .halfCloseTimedOut:
            // Stale (the session went on to close both ways, or the timer is not ours): ignored.
            guard directions.ended == 1, directions.halfCloseTimerArmed, let timeout = self.halfCloseTimeout else {
                return []
            }
            directions.halfCloseTimerArmed = false
            let idle: Side = directions.forward.finPassedOn ? .second : .first
            let why = "half-closed and idle for \(Self.format(seconds: timeout))s"
            return self.fail(.failed(self.peer(idle), why), directions)
        case .connectionsClosed:
            // The pump stopped without reporting how: whatever it left is reset.
            let reason = SessionEndReason.failed(self.peer(.first), "connection closed")
            let end = SessionEnd(reason, joined: true)
            self.state = .closed(end)
            return (directions.halfCloseTimerArmed ? [.cancelHalfCloseTimer] : []) + [.resetBoth, .reportEnd(end)]
        case .dataChannelArrived:
            return self.role == .relay ? [Self.notWaiting] : []
        default:
            return []
        }
    }

    private mutating func closing(_ end: SessionEnd, _ event: Event) -> [Action] {
        guard event == .connectionsClosed else { return self.turnAway(event) }
        self.state = .closed(end)
        return [.reportEnd(end)]
    }

    /// Not pending (idle, closing, closed): a data channel is turned away, a connection
    /// that arrives is reset; every other event is ignored.
    private func turnAway(_ event: Event) -> [Action] {
        switch (self.role, event) {
        case (.relay, .dataChannelArrived): [Self.notWaiting]
        case (.agent, .targetDialled), (.agent, .dataChannelDialled): [.resetBoth]
        default: []
        }
    }

    // MARK: - Rules

    /// An end from outside the session's connections, the same in every live state: it
    /// resets them. (`stop` is not one: open sessions drain.)
    private func endFromOutside(_ event: Event) -> SessionEndReason? {
        switch event {
        case .kill: .killed
        case .serviceRemoved(.close): .serviceRemoved
        case .drainDeadlinePassed: self.role == .relay ? .shuttingDown : .agentShuttingDown
        default: nil
        }
    }

    /// Ends a session that never joined: no pump ran, so it is closed at once.
    private mutating func endBeforeJoin(_ reason: SessionEndReason, reset: Bool, refuse: ErrorCode? = nil) -> [Action] {
        let end = SessionEnd(reason, joined: false)
        self.state = .closed(end)
        var actions: [Action] = []
        if let refuse { actions.append(.sendRefuse(refuse, reason.description)) }
        actions.append(reset ? .resetBoth : .closeBoth)
        actions.append(.reportEnd(end))
        return actions
    }

    /// Fails an open session: both connections are reset together; it closes once they are.
    private mutating func fail(_ reason: SessionEndReason, _ directions: Directions) -> [Action] {
        self.state = .closing(SessionEnd(reason, joined: true))
        return (directions.halfCloseTimerArmed ? [.cancelHalfCloseTimer] : []) + [.resetBoth]
    }

    /// The agent's next step once a dial completed.
    private mutating func dialled(target: Dial, dataChannel: Dial) -> [Action] {
        switch (target, dataChannel) {
        case (.connected, .connected):
            self.state = .pending(.awaitingAttached)
            return [.sendAttach]
        case (.connected, .notStarted):
            self.state = .pending(.dialling(target: .connected, dataChannel: .dialling))
            return [.dialDataChannel]
        default:
            self.state = .pending(.dialling(target: target, dataChannel: dataChannel))
            return []
        }
    }

    /// The peer a side is, in the end reason.
    private func peer(_ side: Side) -> SessionEndReason.Peer {
        switch (self.role, side) {
        case (.relay, .first): .client
        case (.relay, .second): .agentSide
        case (.agent, .first): .relaySide
        case (.agent, .second): .target
        }
    }

    private static let notWaiting = Action.rejectDataChannel(
        ProtocolError(.unknownSession, "the session is not waiting for a data channel"))

    /// Seconds as `%g` writes them: "120", "0.5".
    static func format(seconds: Double) -> String {
        if seconds == seconds.rounded(), abs(seconds) < 1e15 { return String(Int64(seconds)) }
        return "\(seconds)"
    }

    // MARK: - Reading the state

    /// Whether the session waits for its data channel (relay), the only time an `attach`
    /// or a pending failure applies.
    public var isAwaitingDataChannel: Bool { self.state == .pending(.awaitingDataChannel) }

    /// Whether the session has joined (its pump started), whatever happened since.
    public var hasJoined: Bool {
        switch self.state {
        case .idle, .pending: false
        case .open: true
        case .closing(let end), .closed(let end): end.joined
        }
    }

    /// How the session ended, once it has (closing or closed).
    public var end: SessionEnd? {
        switch self.state {
        case .closing(let end), .closed(let end): end
        default: nil
        }
    }

    /// The session's state as `relayctl sessions` shows it: `pending`, `open`,
    /// `half-closed-in` (the first side's direction ended), `half-closed-out`, `closing`.
    public var reportState: String {
        switch self.state {
        case .idle, .pending: "pending"
        case .open(let directions):
            switch (directions.forward.finPassedOn, directions.backward.finPassedOn) {
            case (false, false): "open"
            case (true, false): "half-closed-in"
            case (false, true): "half-closed-out"
            case (true, true): "closing"
            }
        case .closing, .closed: "closing"
        }
    }
}

/// How a session ended: the reason, and whether it had joined (its pump ran).
public struct SessionEnd: Sendable, Equatable, CustomStringConvertible {
    /// Why it ended.
    public var reason: SessionEndReason
    /// Whether the two connections were joined: then the daemon logs `session closed`,
    /// else `session failed` (or, at the agent, `session refused`).
    public var joined: Bool

    /// An end for this reason.
    public init(_ reason: SessionEndReason, joined: Bool) {
        self.reason = reason
        self.joined = joined
    }

    public var description: String { self.reason.description }

    /// The `reason` label of `relay_sessions_refused_total`, for a session that never joined.
    public var refusedMetric: String? { self.joined ? nil : self.reason.metricLabel }
}

/// Why a session ended, in the words both daemons log and `relayctl` shows.
public enum SessionEndReason: Error, Sendable, Equatable, CustomStringConvertible {
    /// The side of a session a failure is blamed on.
    public enum Peer: String, Sendable, Equatable {
        /// Relay: the client's connection.
        case client = "client"
        /// Relay: the data channel (and the agent beyond it).
        case agentSide = "agent side"
        /// Agent: the data channel (and the relay beyond it).
        case relaySide = "relay side"
        /// Agent: the target's connection.
        case target = "target"
    }

    /// Relay: the agent answered `refuse` with this code and message.
    case refused(ErrorCode, String)
    /// Relay: no data channel within the attach timeout (seconds).
    case attachTimeout(Double)
    /// Relay: the agent's control channel closed, or its data channel, before the two were joined.
    case agentDisconnected
    /// Relay: the `connect` could not be queued.
    case agentCongested
    /// The relay is stopping.
    case shuttingDown
    /// The agent is stopping (its drain is over).
    case agentShuttingDown
    /// `relayctl kill`.
    case killed
    /// A reload removed the service with `removedServiceSessions: close`.
    case serviceRemoved
    /// Agent: the target could not be reached (the message sent in `refuse`).
    case targetUnreachable(String)
    /// Agent: the data channel could not be opened (the message sent in `refuse`).
    case dataChannelFailed(String)
    /// Agent: the relay did not accept the data channel.
    case attachRejected(String)
    /// Both directions ended with a FIN passed on.
    case bothEnded
    /// A read or write failed on this side, or it stayed half-closed and idle too long.
    case failed(Peer, String)

    public var description: String {
        switch self {
        case .refused(let code, let message): "refused by agent (\(code.rawValue)): \(message)"
        case .attachTimeout(let seconds): "no data channel from the agent within \(seconds)s"
        case .agentDisconnected: "agent disconnected before attaching"
        case .agentCongested: "agent's control channel is congested"
        case .shuttingDown: "relay is shutting down"
        case .agentShuttingDown: "agent is shutting down"
        case .killed: "killed by operator"
        case .serviceRemoved: "service removed by a reload"
        case .targetUnreachable(let message), .dataChannelFailed(let message), .attachRejected(let message): message
        case .bothEnded: "closed by both ends"
        case .failed(let peer, let why): "\(peer.rawValue): \(why)"
        }
    }

    /// The `reason` label of `relay_sessions_refused_total` when the session never joined.
    public var metricLabel: String {
        switch self {
        case .refused(let code, _): code.rawValue
        case .attachTimeout: "attach_timeout"
        case .agentDisconnected: "agent_disconnected"
        case .agentCongested: "agent_congested"
        case .shuttingDown, .agentShuttingDown: "shutting_down"
        case .killed: "killed"
        case .serviceRemoved: "service_removed"
        case .targetUnreachable: ErrorCode.targetUnreachable.rawValue
        case .dataChannelFailed: ErrorCode.dataChannelFailed.rawValue
        case .attachRejected: "attach_refused"
        case .bothEnded: "closed"
        case .failed: "failed"
        }
    }
}
