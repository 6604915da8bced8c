import RelayProtocol
import Testing

@Suite struct SessionStateMachineTests {
    typealias Machine = SessionStateMachine
    typealias Action = Machine.Action
    typealias Event = Machine.Event

    static let notWaiting = Action.rejectDataChannel(
        ProtocolError(.unknownSession, "the session is not waiting for a data channel"))

    /// Every event, with one instance of each payload.
    static let everyEvent: [Event] = [
        .connectNotSent, .refused(.targetUnreachable, "down"), .attachTimedOut, .agentDisconnected,
        .dataChannelArrived(tokenMatches: true), .dataChannelArrived(tokenMatches: false), .attachedSent,
        .attachedNotSent,
        .targetDialled, .targetFailed("cannot connect to 127.0.0.1:1: connection refused"), .dataChannelDialled,
        .dataChannelFailed("cannot open a data channel to relay:7835: connection refused"), .attachAccepted,
        .attachRejected("relay refused the data channel: unknown_session: gone"),
        .finRead(.first), .finRead(.second), .finPassedOn(.first), .finPassedOn(.second),
        .failed(.first, "connection reset by peer"), .failed(.second, "connection reset by peer"),
        .halfCloseTimedOut, .connectionsClosed, .kill, .serviceRemoved(.drain), .serviceRemoved(.close), .stop,
        .drainDeadlinePassed,
    ]

    static func relay() -> Machine { .relay(attachTimeout: 10, halfCloseTimeout: 120) }
    static func agent(parallel: Bool = false) -> Machine { .agent(halfCloseTimeout: 1, dialsInParallel: parallel) }

    /// The named states a test can start from, per role.
    static let relayStates = [
        "idle", "awaiting", "attaching", "open", "half-in", "half-out", "closing", "closed", "failed",
    ]
    static let agentStates = [
        "idle", "dialling-target", "dialling-data", "awaiting-attached", "open", "half-in", "half-out", "closing",
        "closed", "failed",
    ]

    /// A relay machine driven to `state`.
    static func relay(in state: String) -> Machine {
        var machine = Self.relay()
        let steps: [String: [Event]] = [
            "idle": [], "awaiting": [], "attaching": [.dataChannelArrived(tokenMatches: true)],
            "open": [.dataChannelArrived(tokenMatches: true), .attachedSent],
            "half-in": [.dataChannelArrived(tokenMatches: true), .attachedSent, .finPassedOn(.first)],
            "half-out": [.dataChannelArrived(tokenMatches: true), .attachedSent, .finPassedOn(.second)],
            "closing": [.dataChannelArrived(tokenMatches: true), .attachedSent, .failed(.second, "boom")],
            "closed": [
                .dataChannelArrived(tokenMatches: true), .attachedSent, .failed(.second, "boom"), .connectionsClosed,
            ],
            "failed": [.attachTimedOut],
        ]
        if state != "idle" { _ = machine.start() }
        for event in steps[state] ?? [] { _ = machine.handle(event) }
        return machine
    }

    /// An agent machine driven to `state`.
    static func agent(in state: String) -> Machine {
        var machine = Self.agent()
        let joined: [Event] = [.targetDialled, .dataChannelDialled, .attachAccepted]
        let steps: [String: [Event]] = [
            "idle": [], "dialling-target": [], "dialling-data": [.targetDialled],
            "awaiting-attached": [.targetDialled, .dataChannelDialled], "open": joined,
            "half-in": joined + [.finPassedOn(.first)], "half-out": joined + [.finPassedOn(.second)],
            "closing": joined + [.failed(.second, "boom")],
            "closed": joined + [.failed(.second, "boom"), .connectionsClosed],
            "failed": [.targetFailed("down")],
        ]
        if state != "idle" { _ = machine.start() }
        for event in steps[state] ?? [] { _ = machine.handle(event) }
        return machine
    }

    static func machine(_ role: Machine.Role, in state: String) -> Machine {
        role == .relay ? Self.relay(in: state) : Self.agent(in: state)
    }

    // MARK: - The relay's session

    @Test func relayHappyPath() {
        var machine = Self.relay()
        #expect(machine.state == .idle)
        #expect(machine.reportState == "pending")
        #expect(machine.start() == [.sendConnect, .armAttachTimer(seconds: 10)])
        #expect(machine.start() == [])
        #expect(machine.state == .pending(.awaitingDataChannel))
        #expect(machine.isAwaitingDataChannel)

        #expect(machine.handle(.dataChannelArrived(tokenMatches: true)) == [.cancelAttachTimer, .sendAttached])
        #expect(machine.state == .pending(.attaching))
        #expect(!machine.hasJoined)
        #expect(machine.handle(.attachedSent) == [.startPumping])
        #expect(machine.state == .open(.init()))
        #expect(machine.hasJoined)
        #expect(machine.reportState == "open")

        #expect(machine.handle(.finPassedOn(.first)) == [.armHalfCloseTimer(seconds: 120)])
        #expect(machine.reportState == "half-closed-in")
        #expect(machine.handle(.finPassedOn(.second)) == [.cancelHalfCloseTimer, .closeBoth])
        let end = SessionEnd(.bothEnded, joined: true)
        #expect(machine.state == .closing(end))
        #expect(machine.reportState == "closing")
        #expect(machine.end == end)
        #expect(machine.handle(.connectionsClosed) == [.reportEnd(end)])
        #expect(machine.state == .closed(end))
        #expect(end.description == "closed by both ends")
        #expect(end.refusedMetric == nil)
        #expect(machine.handle(.connectionsClosed) == [])
    }

    @Test func aWrongTokenIsRefusedAndTheSessionKeepsWaiting() {
        var machine = Self.relay(in: "awaiting")
        #expect(
            machine.handle(.dataChannelArrived(tokenMatches: false)) == [
                .rejectDataChannel(ProtocolError(.badToken, "wrong token or proof for this session"))
            ])
        #expect(machine.state == .pending(.awaitingDataChannel))
        #expect(machine.handle(.dataChannelArrived(tokenMatches: true)) == [.cancelAttachTimer, .sendAttached])
    }

    @Test(arguments: ["idle", "attaching", "open", "half-in", "closing", "closed", "failed"])
    func onlyAWaitingSessionTakesADataChannel(_ state: String) {
        var machine = Self.relay(in: state)
        let before = machine.state
        for tokenMatches in [true, false] {
            #expect(machine.handle(.dataChannelArrived(tokenMatches: tokenMatches)) == [Self.notWaiting])
            #expect(machine.state == before)
        }
    }

    /// The relay's ways to fail before the join: the client is closed (not reset), the end reported.
    @Test func relayFailsBeforeTheJoin() {
        let message = "cannot connect to 127.0.0.1:80: connection refused"
        let cases: [(Event, SessionEndReason, String, String)] = [
            (.connectNotSent, .agentCongested, "agent's control channel is congested", "agent_congested"),
            (
                .refused(.targetUnreachable, message), .refused(.targetUnreachable, message),
                "refused by agent (target_unreachable): \(message)", "target_unreachable"
            ),
            (.agentDisconnected, .agentDisconnected, "agent disconnected before attaching", "agent_disconnected"),
            (.stop, .shuttingDown, "relay is shutting down", "shutting_down"),
        ]
        for (event, reason, text, metric) in cases {
            var machine = Self.relay(in: "awaiting")
            let end = SessionEnd(reason, joined: false)
            #expect(machine.handle(event) == [.cancelAttachTimer, .closeBoth, .reportEnd(end)])
            #expect(machine.state == .closed(end))
            #expect(end.description == text)
            #expect(end.refusedMetric == metric)
        }
    }

    @Test func theAttachTimerEndsAWaitingSession() {
        var machine = Self.relay(in: "awaiting")
        let end = SessionEnd(.attachTimeout(10), joined: false)
        #expect(machine.handle(.attachTimedOut) == [.closeBoth, .reportEnd(end)])
        #expect(end.description == "no data channel from the agent within 10.0s")
        #expect(end.refusedMetric == "attach_timeout")
        var quick = Machine.relay(attachTimeout: 0.5, halfCloseTimeout: 0)
        _ = quick.start()
        #expect(quick.handle(.attachTimedOut).last?.end?.description == "no data channel from the agent within 0.5s")
    }

    @Test func whileAttachedIsWrittenOnlyALostDataChannelOrAnEndFromOutsideCounts() {
        for event in [
            Event.attachTimedOut, .refused(.targetUnreachable, "x"), .connectNotSent, .stop, .agentDisconnected,
        ] {
            var machine = Self.relay(in: "attaching")
            #expect(machine.handle(event) == [], "\(event)")
            #expect(machine.state == .pending(.attaching))
        }
        var machine = Self.relay(in: "attaching")
        let end = SessionEnd(.agentDisconnected, joined: false)
        #expect(machine.handle(.attachedNotSent) == [.closeBoth, .reportEnd(end)])
        #expect(machine.handle(.attachedSent) == [], "a session that failed does not start pumping")
    }

    // MARK: - The agent's session

    @Test func agentHappyPath() {
        var machine = Self.agent()
        #expect(machine.start() == [.dialTarget])
        #expect(machine.state == .pending(.dialling(target: .dialling, dataChannel: .notStarted)))
        #expect(machine.handle(.dataChannelDialled) == [], "no data channel was asked for yet")
        #expect(machine.handle(.targetDialled) == [.dialDataChannel])
        #expect(machine.state == .pending(.dialling(target: .connected, dataChannel: .dialling)))
        #expect(machine.handle(.targetDialled) == [])
        #expect(machine.handle(.dataChannelDialled) == [.sendAttach])
        #expect(machine.state == .pending(.awaitingAttached))
        #expect(machine.reportState == "pending")
        #expect(machine.handle(.attachAccepted) == [.startPumping])
        #expect(machine.reportState == "open")
        #expect(machine.handle(.finRead(.second)) == [.shutDownWrites(.first)])
        #expect(machine.handle(.finRead(.second)) == [])
        #expect(machine.reportState == "open", "a FIN read but not yet passed on ends nothing")
        #expect(machine.handle(.finPassedOn(.second)) == [.armHalfCloseTimer(seconds: 1)])
        #expect(machine.reportState == "half-closed-out")
        #expect(machine.handle(.finRead(.first)) == [.shutDownWrites(.second)])
        #expect(machine.handle(.finPassedOn(.first)) == [.cancelHalfCloseTimer, .closeBoth])
        #expect(machine.handle(.connectionsClosed) == [.reportEnd(SessionEnd(.bothEnded, joined: true))])
    }

    @Test func agentDialsInParallelInEitherOrder() {
        for targetFirst in [true, false] {
            var machine = Self.agent(parallel: true)
            #expect(machine.start() == [.dialTarget, .dialDataChannel])
            let first: Event = targetFirst ? .targetDialled : .dataChannelDialled
            let second: Event = targetFirst ? .dataChannelDialled : .targetDialled
            #expect(machine.handle(first) == [])
            #expect(machine.handle(second) == [.sendAttach])
            #expect(machine.state == .pending(.awaitingAttached))
        }
    }

    @Test func inParallelTheFirstFailureIsRefusedAndALateConnectionReset() {
        var machine = Self.agent(parallel: true)
        _ = machine.start()
        let message = "cannot open a data channel to relay:7835: connection refused"
        let end = SessionEnd(.dataChannelFailed(message), joined: false)
        #expect(
            machine.handle(.dataChannelFailed(message)) == [
                .sendRefuse(.dataChannelFailed, message), .closeBoth, .reportEnd(end),
            ])
        #expect(machine.handle(.targetDialled) == [.resetBoth])
        #expect(machine.handle(.targetFailed("late")) == [])
        #expect(machine.state == .closed(end))
    }

    @Test func anUnreachableTargetIsRefused() {
        var machine = Self.agent(in: "dialling-target")
        let message = "cannot connect to 127.0.0.1:1: connection refused"
        let end = SessionEnd(.targetUnreachable(message), joined: false)
        #expect(
            machine.handle(.targetFailed(message)) == [
                .sendRefuse(.targetUnreachable, message), .closeBoth, .reportEnd(end),
            ])
        #expect(end.description == message)
        #expect(end.refusedMetric == "target_unreachable")
    }

    @Test func aDataChannelThatCannotBeOpenedIsRefusedAndTheTargetClosed() {
        var machine = Self.agent(in: "dialling-data")
        let message = "cannot open a data channel to relay:7835: timed out"
        let end = SessionEnd(.dataChannelFailed(message), joined: false)
        #expect(
            machine.handle(.dataChannelFailed(message)) == [
                .sendRefuse(.dataChannelFailed, message), .closeBoth, .reportEnd(end),
            ])
        #expect(end.refusedMetric == "data_channel_failed")
    }

    @Test func aRejectedAttachClosesBothWithoutARefusal() {
        var machine = Self.agent(in: "awaiting-attached")
        let message = "relay refused the data channel: unknown_session: gone"
        let end = SessionEnd(.attachRejected(message), joined: false)
        #expect(machine.handle(.attachRejected(message)) == [.closeBoth, .reportEnd(end)])
        #expect(end.description == message)
        #expect(end.refusedMetric == "attach_refused")
    }

    // MARK: - Half-close

    @Test(arguments: [Machine.Role.relay, .agent])
    func bothHalfCloseOrders(_ role: Machine.Role) {
        for first in Machine.Side.allCases {
            var machine = Self.machine(role, in: "open")
            let timeout: Double = role == .relay ? 120 : 1
            #expect(machine.handle(.finRead(first)) == [.shutDownWrites(first.other)])
            #expect(machine.handle(.finPassedOn(first)) == [.armHalfCloseTimer(seconds: timeout)])
            #expect(machine.reportState == (first == .first ? "half-closed-in" : "half-closed-out"))
            #expect(machine.handle(.finPassedOn(first)) == [], "a FIN is passed on once")
            #expect(machine.handle(.finRead(first)) == [])
            // Bytes still flow the other way; a pump that does read and pass-on at once reports only the pass-on.
            #expect(machine.handle(.finPassedOn(first.other)) == [.cancelHalfCloseTimer, .closeBoth])
            #expect(machine.end == SessionEnd(.bothEnded, joined: true))
            #expect(machine.handle(.connectionsClosed) == [.reportEnd(SessionEnd(.bothEnded, joined: true))])
        }
    }

    @Test func withoutAHalfCloseTimeoutNoTimerIsArmed() {
        var machine = Machine.relay(attachTimeout: 10, halfCloseTimeout: 0)
        _ = machine.start()
        _ = machine.handle(.dataChannelArrived(tokenMatches: true))
        _ = machine.handle(.attachedSent)
        #expect(machine.handle(.finPassedOn(.second)) == [])
        #expect(machine.handle(.halfCloseTimedOut) == [], "no timer of ours")
        #expect(machine.handle(.finPassedOn(.first)) == [.closeBoth])
    }

    @Test(arguments: [Machine.Role.relay, .agent])
    func theHalfCloseTimerBlamesTheSideThatDidNotEnd(_ role: Machine.Role) {
        for ended in Machine.Side.allCases {
            var machine = Self.machine(role, in: "open")
            _ = machine.handle(.finPassedOn(ended))
            #expect(machine.handle(.halfCloseTimedOut) == [.resetBoth])
            let idle: SessionEndReason.Peer =
                switch (role, ended) {
                case (.relay, .first): .agentSide
                case (.relay, .second): .client
                case (.agent, .first): .target
                case (.agent, .second): .relaySide
                }
            let seconds = role == .relay ? "120" : "1"
            let end = SessionEnd(.failed(idle, "half-closed and idle for \(seconds)s"), joined: true)
            #expect(machine.state == .closing(end))
            #expect(machine.handle(.connectionsClosed) == [.reportEnd(end)])
        }
        var quick = Machine.agent(halfCloseTimeout: 0.25)
        _ = quick.start()
        for event in [Event.targetDialled, .dataChannelDialled, .attachAccepted, .finPassedOn(.first)] {
            _ = quick.handle(event)
        }
        _ = quick.handle(.halfCloseTimedOut)
        #expect(quick.end?.description == "target: half-closed and idle for 0.25s")
    }

    @Test func aStaleHalfCloseTimerIsIgnored() {
        var machine = Self.relay(in: "open")
        #expect(machine.handle(.halfCloseTimedOut) == [], "nothing ended yet")
        _ = machine.handle(.finPassedOn(.first))
        _ = machine.handle(.finPassedOn(.second))
        #expect(machine.handle(.halfCloseTimedOut) == [], "both ended: closing already")
        #expect(machine.end == SessionEnd(.bothEnded, joined: true))
    }

    // MARK: - Failures: the first one wins

    @Test(arguments: [Machine.Role.relay, .agent])
    func aFailureResetsBothAndTheFirstFailureIsTheReason(_ role: Machine.Role) {
        for state in ["open", "half-in", "half-out"] {
            var machine = Self.machine(role, in: state)
            let armed = state != "open"
            #expect(
                machine.handle(.failed(.second, "connection reset by peer"))
                    == (armed ? [.cancelHalfCloseTimer, .resetBoth] : [.resetBoth]))
            let peer: SessionEndReason.Peer = role == .relay ? .agentSide : .target
            let end = SessionEnd(.failed(peer, "connection reset by peer"), joined: true)
            #expect(machine.state == .closing(end))
            // The consequences of the reset, and anything else, change nothing.
            for later in Self.everyEvent where later != .connectionsClosed {
                let actions = machine.handle(later)
                #expect(actions.allSatisfy { $0 == Self.notWaiting || $0 == .resetBoth }, "\(later): \(actions)")
                #expect(machine.state == .closing(end))
            }
            #expect(machine.handle(.connectionsClosed) == [.reportEnd(end)])
            #expect(end.description == (role == .relay ? "agent side" : "target") + ": connection reset by peer")
        }
    }

    @Test func aKillBeforeTheResetItCausesIsTheReason() {
        var machine = Self.relay(in: "open")
        #expect(machine.handle(.kill) == [.resetBoth])
        #expect(machine.handle(.failed(.first, "connection reset by peer")) == [])
        #expect(machine.handle(.connectionsClosed) == [.reportEnd(SessionEnd(.killed, joined: true))])
    }

    @Test func theRelaysSidesAreClientAndAgentSide() {
        var relay = Self.relay(in: "open")
        _ = relay.handle(.failed(.first, "connection reset by peer"))
        #expect(relay.end?.description == "client: connection reset by peer")
        var agent = Self.agent(in: "open")
        _ = agent.handle(.failed(.first, "connection closed"))
        #expect(agent.end?.description == "relay side: connection closed")
    }

    @Test(arguments: [Machine.Role.relay, .agent])
    func connectionsClosedWithoutAReportResetsWhatIsLeft(_ role: Machine.Role) {
        var machine = Self.machine(role, in: "half-in")
        let peer: SessionEndReason.Peer = role == .relay ? .client : .relaySide
        let end = SessionEnd(.failed(peer, "connection closed"), joined: true)
        #expect(machine.handle(.connectionsClosed) == [.cancelHalfCloseTimer, .resetBoth, .reportEnd(end)])
        #expect(machine.state == .closed(end))
    }

    @Test(arguments: [Machine.Role.relay, .agent])
    func aFailureBeforeTheJoinResetsAndEnds(_ role: Machine.Role) {
        var machine = Self.machine(role, in: role == .relay ? "awaiting" : "dialling-data")
        let cancel: [Action] = role == .relay ? [.cancelAttachTimer] : []
        let peer: SessionEndReason.Peer = role == .relay ? .client : .relaySide
        let end = SessionEnd(.failed(peer, "connection reset by peer"), joined: false)
        #expect(machine.handle(.failed(.first, "connection reset by peer")) == cancel + [.resetBoth, .reportEnd(end)])
        #expect(end.refusedMetric == "failed")
    }

    // MARK: - Kill, removal, drain

    /// What an end from outside does in each state: reset and end at once before the join,
    /// reset and wait for the connections after it, nothing once ended.
    static func expectEndFromOutside(_ role: Machine.Role, _ event: Event, _ reason: SessionEndReason) {
        let states = role == .relay ? Self.relayStates : Self.agentStates
        for state in states {
            var machine = Self.machine(role, in: state)
            let before = machine.state
            let actions = machine.handle(event)
            switch state {
            case "idle", "awaiting", "attaching", "dialling-target", "dialling-data", "awaiting-attached":
                let end = SessionEnd(reason, joined: false)
                let cancel: [Action] = state == "awaiting" ? [.cancelAttachTimer] : []
                #expect(actions == cancel + [.resetBoth, .reportEnd(end)], "\(state)")
                #expect(machine.state == .closed(end), "\(state)")
            case "open", "half-in", "half-out":
                let end = SessionEnd(reason, joined: true)
                #expect(actions == (state == "open" ? [] : [.cancelHalfCloseTimer]) + [.resetBoth], "\(state)")
                #expect(machine.state == .closing(end), "\(state)")
                #expect(machine.handle(.connectionsClosed) == [.reportEnd(end)])
            default:
                #expect(actions == [], "\(state)")
                #expect(machine.state == before, "\(state)")
            }
        }
    }

    @Test(arguments: [Machine.Role.relay, .agent])
    func killInEachState(_ role: Machine.Role) {
        Self.expectEndFromOutside(role, .kill, .killed)
        #expect(SessionEndReason.killed.description == "killed by operator")
        #expect(SessionEndReason.killed.metricLabel == "killed")
    }

    @Test(arguments: [Machine.Role.relay, .agent])
    func removalWithCloseIsAKillWithItsOwnReason(_ role: Machine.Role) {
        Self.expectEndFromOutside(role, .serviceRemoved(.close), .serviceRemoved)
        #expect(SessionEndReason.serviceRemoved.description == "service removed by a reload")
    }

    @Test(arguments: [Machine.Role.relay, .agent])
    func removalWithDrainChangesNothing(_ role: Machine.Role) {
        for state in role == .relay ? Self.relayStates : Self.agentStates {
            var machine = Self.machine(role, in: state)
            let before = machine.state
            #expect(machine.handle(.serviceRemoved(.drain)) == [], "\(state)")
            #expect(machine.state == before, "\(state)")
        }
    }

    @Test(arguments: [Machine.Role.relay, .agent])
    func theDrainDeadlineResetsWhatIsLeft(_ role: Machine.Role) {
        Self.expectEndFromOutside(role, .drainDeadlinePassed, role == .relay ? .shuttingDown : .agentShuttingDown)
        #expect(SessionEndReason.agentShuttingDown.description == "agent is shutting down")
    }

    @Test func stopFailsOnlyARelaySessionWaitingForItsDataChannel() {
        for state in Self.relayStates {
            var machine = Self.relay(in: state)
            let before = machine.state
            let actions = machine.handle(.stop)
            let end = SessionEnd(.shuttingDown, joined: false)
            switch state {
            case "idle":
                #expect(actions == [.closeBoth, .reportEnd(end)])
            case "awaiting":
                #expect(actions == [.cancelAttachTimer, .closeBoth, .reportEnd(end)])
            default:
                #expect(actions == [], "\(state) drains")
                #expect(machine.state == before, "\(state)")
            }
        }
        for state in Self.agentStates {
            var machine = Self.agent(in: state)
            let before = machine.state
            #expect(machine.handle(.stop) == [], "\(state): the agent's sessions drain, pending ones too")
            #expect(machine.state == before)
        }
    }

    // MARK: - Every event in every state

    /// The events that move `state` on (everything else must leave it as it is).
    static func moves(_ role: Machine.Role, _ state: String) -> [Event] {
        let outside: [Event] = [.kill, .serviceRemoved(.close), .drainDeadlinePassed]
        let failures: [Event] = [
            .failed(.first, "connection reset by peer"), .failed(.second, "connection reset by peer"),
        ]
        let pending = outside + failures + [.connectionsClosed]
        let open = outside + failures + [.connectionsClosed, .finRead(.first), .finRead(.second)]
        switch (role, state) {
        case (_, "idle"): return outside + (role == .relay ? [.stop] : [])
        case (.relay, "awaiting"):
            return pending + [
                .connectNotSent, .refused(.targetUnreachable, "down"), .attachTimedOut, .agentDisconnected,
                .dataChannelArrived(tokenMatches: true), .stop,
            ]
        case (.relay, "attaching"): return pending + [.attachedSent, .attachedNotSent]
        case (.agent, "dialling-target"):
            return pending + [.targetDialled, .targetFailed("cannot connect to 127.0.0.1:1: connection refused")]
        case (.agent, "dialling-data"):
            return pending + [
                .dataChannelDialled, .dataChannelFailed("cannot open a data channel to relay:7835: connection refused"),
            ]
        case (.agent, "awaiting-attached"):
            return pending + [
                .attachAccepted, .attachRejected("relay refused the data channel: unknown_session: gone"),
            ]
        case (_, "open"): return open + [.finPassedOn(.first), .finPassedOn(.second)]
        case (_, "half-in"): return open + [.finPassedOn(.second), .halfCloseTimedOut]
        case (_, "half-out"): return open + [.finPassedOn(.first), .halfCloseTimedOut]
        case (_, "closing"): return [.connectionsClosed]
        default: return []
        }
    }

    @Test(arguments: [Machine.Role.relay, .agent])
    func everyOtherEventIsAnsweredWithItsDefinedActionAndChangesNothing(_ role: Machine.Role) {
        for state in role == .relay ? Self.relayStates : Self.agentStates {
            let moves = Self.moves(role, state)
            for event in Self.everyEvent {
                var machine = Self.machine(role, in: state)
                let before = machine.state
                let actions = machine.handle(event)
                if moves.contains(event) {
                    // finRead changes only a flag: still open.
                    #expect(machine.state != before || event == .finRead(.first) || event == .finRead(.second))
                    continue
                }
                #expect(machine.state == before, "\(role) \(state) \(event)")
                let defined: [Action]
                switch (role, event) {
                case (.relay, .dataChannelArrived(let tokenMatches)):
                    defined = state == "awaiting" && !tokenMatches ? [Self.rejectBadToken] : [Self.notWaiting]
                case (.agent, .targetDialled), (.agent, .dataChannelDialled):
                    defined = ["idle", "closing", "closed", "failed"].contains(state) ? [.resetBoth] : []
                default:
                    defined = []
                }
                #expect(actions == defined, "\(role) \(state) \(event)")
            }
        }
    }

    static let rejectBadToken = Action.rejectDataChannel(
        ProtocolError(.badToken, "wrong token or proof for this session"))

    @Test(arguments: [Machine.Role.relay, .agent])
    func aClosedSessionIgnoresEverything(_ role: Machine.Role) {
        for state in ["closed", "failed"] {
            var machine = Self.machine(role, in: state)
            let before = machine.state
            for event in Self.everyEvent {
                let actions = machine.handle(event)
                #expect(!actions.contains { $0.end != nil })
                #expect(machine.state == before)
            }
            #expect(machine.start() == [])
        }
    }

    // MARK: - Randomized

    /// Random event sequences, for both roles (and both dial orders): never a trap, one end
    /// at most and exactly one once closed, the reported end is the first, closed (after the
    /// connections are) once both directions ended or a reset happened, no timer left armed.
    @Test(arguments: [1, 2, 3, 4])
    func randomEventSequences(_ seed: UInt64) {
        var generator = SeededGenerator(seed: seed)
        let makers: [() -> Machine] = [
            { Self.relay() }, { Self.agent() }, { Self.agent(parallel: true) },
            { .relay(attachTimeout: 1, halfCloseTimeout: 0) },
        ]
        var seen: [String: Int] = [:]
        for round in 0..<2000 {
            var machine = makers[round % makers.count]()
            var log: [Event] = []
            var ends: [SessionEnd] = []
            var firstEnd: SessionEnd?
            var attachTimer = false
            var halfCloseTimer = false
            var resetOrBothEnded = false
            func apply(_ actions: [Action], after event: Event?) {
                for action in actions {
                    switch action {
                    case .reportEnd(let end): ends.append(end)
                    case .armAttachTimer: attachTimer = true
                    case .cancelAttachTimer: attachTimer = false
                    case .armHalfCloseTimer: halfCloseTimer = true
                    case .cancelHalfCloseTimer: halfCloseTimer = false
                    case .resetBoth: resetOrBothEnded = true
                    default: break
                    }
                }
                if let end = machine.end, firstEnd == nil { firstEnd = end }
                // A timer that fired is spent once the session moved on because of it.
                if event == .attachTimedOut,
                    machine.end?.reason == .attachTimeout(1) || machine.end?.reason == .attachTimeout(10)
                {
                    attachTimer = false
                }
                if event == .halfCloseTimedOut, actions == [.resetBoth] { halfCloseTimer = false }
                if case .open(let directions) = machine.state {
                    #expect(directions.halfCloseTimerArmed == halfCloseTimer, "\(log)")
                }
            }
            if generator.next() % 8 != 0 { apply(machine.start(), after: nil) }
            for _ in 0..<Int(generator.next() % 24) {
                // Half the time a step forward, so that sequences get far; else any event.
                let forward = Self.progress(machine.state)
                let event =
                    generator.next() % 2 == 0 && !forward.isEmpty
                    ? forward[Int(generator.next() % UInt64(forward.count))]
                    : Self.everyEvent[Int(generator.next() % UInt64(Self.everyEvent.count))]
                log.append(event)
                let wasOpen = if case .open = machine.state { true } else { false }
                let wasIdle = machine.state == .idle
                apply(machine.handle(event), after: event)
                // An idle session has nothing to reset but a connection handed to it: no end.
                if wasIdle, machine.end == nil { resetOrBothEnded = false }
                if wasOpen, machine.end == SessionEnd(.bothEnded, joined: true) { resetOrBothEnded = true }
                #expect(ends.count <= 1, "\(log)")
                if case .closed = machine.state { #expect(ends.count == 1, "\(log)") }
                if resetOrBothEnded {
                    #expect(machine.end != nil, "reset or both ended, yet live: \(log)")
                }
                if let firstEnd { #expect(machine.end == firstEnd, "the end changed: \(log)") }
            }
            // The pump stops and the connections close: every started session is then closed.
            apply(machine.handle(.connectionsClosed), after: .connectionsClosed)
            if machine.state == .idle { continue }
            guard case .closed(let end) = machine.state else {
                Issue.record("not closed after its connections closed: \(machine.state) after \(log)")
                continue
            }
            #expect(ends == [end], "\(log)")
            seen[
                end.joined ? (end.reason == .bothEnded ? "both ended" : "failed after the join") : "before the join",
                default: 0] += 1
            if let firstEnd { #expect(end == firstEnd, "\(log)") }
            #expect(!attachTimer, "attach timer left armed: \(log)")
            #expect(!halfCloseTimer, "half-close timer left armed: \(log)")
        }
        // The sequences reach every kind of end.
        #expect(seen.count == 3 && seen.values.allSatisfy { $0 >= 20 }, "\(seen)")
    }
}

extension SessionStateMachineTests {
    /// The events that take a session in `state` a step further on its happy path.
    static func progress(_ state: Machine.State) -> [Event] {
        switch state {
        case .pending(.awaitingDataChannel): [.dataChannelArrived(tokenMatches: true)]
        case .pending(.attaching): [.attachedSent]
        case .pending(.dialling(let target, let data)):
            (target == .dialling ? [.targetDialled] : []) + (data == .dialling ? [.dataChannelDialled] : [])
        case .pending(.awaitingAttached): [.attachAccepted]
        case .open: [.finRead(.first), .finRead(.second), .finPassedOn(.first), .finPassedOn(.second)]
        default: []
        }
    }
}

extension SessionStateMachine.Action {
    /// The end this action reports, if it is `reportEnd`.
    var end: SessionEnd? {
        if case .reportEnd(let end) = self { return end }
        return nil
    }
}
