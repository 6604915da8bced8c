import FoundationEssentials
import NIOCore
import RelayCore
import RelayMetrics
import RelayProtocol
import Synchronization

/// Why a session ended, in the words the relay logs (``SessionEndReason``); the error a
/// waiting client task sees when its session fails before the data channel is joined.
typealias SessionFailure = SessionEndReason

/// The data channel handed from the agent port to the waiting client task.
struct DataLink: Sendable {
    /// The data channel, positioned after its `attach` line.
    let endpoint: PumpEndpoint
    /// Succeeded by the client task once the pump is done, so the data channel's own task may close it.
    let done: EventLoopPromise<Void>
}

/// One client connection's session at the relay (S5–S20), from accept to close: a shell
/// over ``SessionStateMachine``. Every event goes to the machine under one lock; the actions
/// on the session's connections and timers are carried out here, outside the lock; the
/// ones that need another party's I/O are done by whoever fed the event (`sendConnect` by
/// the client task right after ``ProxyState/openSession(service:agent:client:clientChannel:)``,
/// `sendAttached` by the agent port after ``claim(token:dataChannel:)``). The pump keeps its
/// own contract (`SessionPump`): it passes FINs on, resets both sides on a failure and runs
/// the half-close timer itself, and tells the machine through the meter and its outcome.
final class ProxySession: Sendable {
    /// Where a session is in its life, as the registry and `relayctl` see it.
    enum Phase: Sendable {
        /// Waiting for the agent's data channel.
        case pending
        /// Joined (or being joined) to this data channel.
        case open(dataChannel: any Channel)
        /// Ended, or failed before it opened.
        case closed
    }

    /// The outcome of presenting an attach for this session.
    enum ClaimResult {
        /// The data channel is this session's: write `attached`, then ``join(_:)``.
        case claimed
        /// The session no longer waits for a data channel: answer this error.
        case notPending(ProtocolError)
        /// The token is wrong (the session keeps waiting): answer this error.
        case badToken(ProtocolError)
    }

    private struct Core {
        var machine: SessionStateMachine
        var dataChannel: (any Channel)?
        var attachTimer: Deadline?
        /// The data channel, ready to pump, between ``join(_:)`` and `startPumping`.
        var link: DataLink?
    }

    let id: String
    let service: String
    let agent: String
    let client: String
    let token: String
    let startedAt = Date()
    let started = ContinuousClock.now
    let meter: TrafficMeter
    let telemetry: ServiceTelemetry
    let clientChannel: any Channel
    /// Completed when the agent's data channel is joined, or failed with a ``SessionFailure``.
    let attached: EventLoopFuture<DataLink>
    private let promise: EventLoopPromise<DataLink>
    private let core: Mutex<Core>

    /// A started session: its attach timer runs; the caller sends `connect` (S7).
    init(
        id: String, service: String, agent: String, client: String, clientChannel: any Channel,
        telemetry: ServiceTelemetry, attachTimeout: Double = 10, halfCloseTimeout: Double = 0
    ) {
        self.id = id
        self.service = service
        self.agent = agent
        self.client = client
        self.token = Tokens.make()
        self.telemetry = telemetry
        self.meter = TrafficMeter(sink: telemetry)
        self.clientChannel = clientChannel
        self.promise = clientChannel.eventLoop.makePromise(of: DataLink.self)
        self.attached = self.promise.futureResult
        self.core = Mutex(
            Core(machine: .relay(attachTimeout: attachTimeout, halfCloseTimeout: halfCloseTimeout)))
        self.meter.onFinish { [weak self] forward in self?.handle(.finPassedOn(forward ? .first : .second)) }
        let actions = self.core.withLock { $0.machine.start() }
        self.execute(actions)
    }

    // MARK: - Events

    /// Feeds one event to the machine and carries out the actions that are the session's;
    /// returns all of them.
    @discardableResult
    func handle(_ event: SessionStateMachine.Event) -> [SessionStateMachine.Action] {
        let actions = self.core.withLock { $0.machine.handle(event) }
        self.execute(actions)
        return actions
    }

    /// Accepts an attach once, only while waiting, only with the right token (constant time).
    func claim(token: String, dataChannel: any Channel) -> ClaimResult {
        let matches = Tokens.matches(token, self.token)
        let actions = self.core.withLock { core in
            let actions = core.machine.handle(.dataChannelArrived(tokenMatches: matches))
            if actions.contains(.sendAttached) { core.dataChannel = dataChannel }
            return actions
        }
        self.execute(actions)
        for action in actions {
            if case .rejectDataChannel(let error) = action {
                return error.code == .badToken ? .badToken(error) : .notPending(error)
            }
        }
        return .claimed
    }

    /// `attached` was written: hands the data channel to the client task, which starts the
    /// pump. `false` if the session ended meanwhile (the data channel is then the caller's to close).
    func join(_ link: DataLink) -> Bool {
        self.core.withLock { $0.link = link }
        let actions = self.handle(.attachedSent)
        if !actions.contains(.startPumping) { self.core.withLock { $0.link = nil } }
        return actions.contains(.startPumping)
    }

    /// Fails the session for `failure` if it still waits for its data channel; `false` if it
    /// already attached or ended.
    @discardableResult
    func fail(_ failure: SessionFailure) -> Bool {
        let event: SessionStateMachine.Event =
            switch failure {
            case .refused(let code, let message): .refused(code, message)
            case .attachTimeout: .attachTimedOut
            case .agentDisconnected: .agentDisconnected
            case .agentCongested: .connectNotSent
            case .shuttingDown: .stop
            case .serviceRemoved: .serviceRemoved(.close)
            default: .kill
            }
        let actions: [SessionStateMachine.Action] = self.core.withLock { core in
            guard core.machine.isAwaitingDataChannel else { return [] }
            return core.machine.handle(event)
        }
        self.execute(actions)
        return actions.contains { if case .reportEnd = $0 { true } else { false } }
    }

    /// The session's connections are closed and forgotten.
    func markClosed() {
        self.handle(.connectionsClosed)
    }

    // MARK: - Reading

    /// The current phase.
    var phase: Phase {
        self.core.withLock { core in
            switch core.machine.state {
            case .idle, .pending(.awaitingDataChannel): return .pending
            case .closed: return .closed
            default: return core.dataChannel.map { .open(dataChannel: $0) } ?? .closed
            }
        }
    }

    /// How the session ended (or is ending), once decided.
    var end: SessionEnd? { self.core.withLock { $0.machine.end } }

    /// Why the session ended or is ending, once decided (a kill, a failure, both ends closed).
    var termination: SessionFailure? { self.end?.reason }

    /// The state `relayctl` shows: pending, open, half-closed-in, half-closed-out, closing.
    var reportState: String { self.core.withLock { $0.machine.reportState } }

    // MARK: - Actions

    private func execute(_ actions: [SessionStateMachine.Action]) {
        for action in actions {
            switch action {
            case .armAttachTimer(let seconds):
                let timer = Deadline(on: self.clientChannel.eventLoop, after: .fromSeconds(seconds)) {
                    [weak self] in
                    self?.handle(.attachTimedOut)
                }
                self.core.withLock { $0.attachTimer = timer }
            case .cancelAttachTimer:
                self.core.withLock { core in
                    core.attachTimer?.cancel()
                    core.attachTimer = nil
                }
            case .startPumping:
                let link = self.core.withLock { core in
                    let link = core.link
                    core.link = nil
                    return link
                }
                if let link { self.promise.succeed(link) }
            case .resetBoth:
                self.clientChannel.abort()
                self.core.withLock { $0.dataChannel }?.abort()
            case .reportEnd(let end):
                // Before the join the waiting client task hears why, logs it and closes the
                // client; after it, the client task logs the end once its pump returned.
                if let metric = end.refusedMetric {
                    self.telemetry.sessionRefused(reason: metric)
                    self.promise.fail(end.reason)
                }
            case .closeBoth, .shutDownWrites, .armHalfCloseTimer, .cancelHalfCloseTimer:
                // Before the join, the client task closes the client when the promise fails;
                // after it, the pump and `executeThenClose` do these under the pump's contract.
                break
            case .sendConnect, .sendAttached, .rejectDataChannel:
                // Done by whoever fed the event (the client task, the agent port).
                break
            case .dialTarget, .dialDataChannel, .sendAttach, .sendRefuse:
                // The agent's.
                break
            }
        }
    }
}
