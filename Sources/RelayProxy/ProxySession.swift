import FoundationEssentials
import NIOCore
import NIOPosix
import RelayCore
import RelayMetrics
import RelayProtocol
import Synchronization

/// Why a session ended, in the words the relay logs (``SessionEndReason``); the error a
/// waiting client task sees when its session fails before the data channel is joined.
typealias SessionFailure = SessionEndReason

/// The data channel handed from the agent port to the waiting client task.
struct DataLink: Sendable {
    /// The data channel, past its `attach` line: an owned socket (what the agent sent after
    /// that line is its ``OwnedSocket/pending``), or a TLS connection in NIO.
    let link: SessionLink
    /// The data plane's run, when the session started it at the join (it does when it was
    /// given a data plane): the client task then only awaits it.
    var running: (any PumpRunning)? = nil
}

/// One client connection's session at the relay (S5–S20), from accept to close: a shell
/// over ``SessionStateMachine``. Every event goes to the machine under one lock; the actions
/// on the session's connections and timers are carried out here, outside the lock; the
/// ones that need another party's I/O are done by whoever fed the event (`sendConnect` by
/// the client task right after ``ProxyState/openSession(service:agent:client:clientSocket:attachSecret:dataPlane:)``,
/// `sendAttached` by the agent port after ``claim(_:dataChannel:)``). The data plane keeps
/// the pump's contract (`SessionPump`): it passes FINs on, resets both sides on a failure and
/// runs the half-close timer itself, and tells the machine through the meter and its outcome.
/// Both connections are owned descriptors (``OwnedSocket``) until the data plane takes them.
final class ProxySession: Sendable {
    /// Where a session is in its life, as the registry and `relayctl` see it.
    enum Phase: Sendable {
        /// Waiting for the agent's data channel.
        case pending
        /// Joined (or being joined) to this data channel.
        case open(dataChannel: SessionLink)
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
        var dataChannel: SessionLink?
        var attachTimer: Deadline?
        /// The data channel, ready to pump, between ``join(_:)`` and `startPumping`.
        var link: DataLink?
        /// The data plane's run, once the client task started it.
        var running: (any PumpRunning)?
        /// Whether the machine asked for both connections to be reset.
        var resetAsked = false
    }

    let id: String
    let service: String
    let agent: String
    let client: String
    let token: String
    /// The secret the attach proof must be made with: the one the control channel that is
    /// offered the session authenticated with. Never logged.
    let attachSecret: Secret
    /// How long the session waits for its data channel, in seconds (`connect`'s `expiresIn`).
    let attachTimeout: Double
    let startedAt: Date
    let started: ContinuousClock.Instant
    /// Taken over from the process before (a handover), not opened here.
    let wasResumed: Bool
    let meter: TrafficMeter
    let telemetry: ServiceTelemetry
    let clientSocket: OwnedSocket
    /// Completed when the agent's data channel is joined, or failed with a ``SessionFailure``.
    let attached: EventLoopFuture<DataLink>
    private let promise: EventLoopPromise<DataLink>
    /// Where the session's timers run.
    private let eventLoop: any EventLoop
    /// Where the session's bytes move once joined; nil: the client task starts the pump.
    private let dataPlane: (any DataPlane)?
    /// The pump's limits, from the config in force when the session opened.
    let pumpLimits: PumpLimits
    private let core: Mutex<Core>
    /// Whether the client is looked at for a PROXY header at the join (its source is not in
    /// `acceptProxyProtocol`), and whether one was found there.
    private let proxyHeaderCheck = Mutex((check: false, found: false))

    /// A started session: its attach timer runs; the caller sends `connect` (S7).
    init(
        id: String, service: String, agent: String, client: String, clientSocket: OwnedSocket,
        attachSecret: Secret, telemetry: ServiceTelemetry, attachTimeout: Double = 10, halfCloseTimeout: Double = 0,
        idleTimeout: Double = 0, eventLoop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next(),
        dataPlane: (any DataPlane)? = nil, resumed: HandoverState.Session? = nil
    ) {
        self.dataPlane = dataPlane
        self.wasResumed = resumed != nil
        if let resumed {
            let startedAt = Date(timeIntervalSince1970: resumed.startedAt)
            self.startedAt = startedAt
            self.started = ContinuousClock.now - .seconds(max(0, Date().timeIntervalSince(startedAt)))
        } else {
            self.startedAt = Date()
            self.started = ContinuousClock.now
        }
        self.pumpLimits = PumpLimits(halfCloseTimeoutSeconds: halfCloseTimeout, idleTimeoutSeconds: idleTimeout)
        self.id = id
        self.service = service
        self.agent = agent
        self.client = client
        self.token = Tokens.make()
        self.attachSecret = attachSecret
        self.attachTimeout = attachTimeout
        self.telemetry = telemetry
        self.meter =
            resumed.map {
                TrafficMeter(
                    sink: telemetry, forward: $0.forwardBytes, backward: $0.backwardBytes,
                    forwardFinished: $0.forward.finished, backwardFinished: $0.backward.finished)
            } ?? TrafficMeter(sink: telemetry)
        self.clientSocket = clientSocket
        self.eventLoop = eventLoop
        self.promise = eventLoop.makePromise(of: DataLink.self)
        self.attached = self.promise.futureResult
        self.core = Mutex(
            Core(machine: .relay(attachTimeout: attachTimeout, halfCloseTimeout: halfCloseTimeout)))
        self.meter.onFinish { [weak self] forward in self?.handle(.finPassedOn(forward ? .first : .second)) }
        guard let resumed else {
            let actions = self.core.withLock { $0.machine.start() }
            self.execute(actions)
            return
        }
        self.core.withLock {
            _ = $0.machine.resume(
                forwardFinished: resumed.forward.finished, backwardFinished: resumed.backward.finished)
        }
    }

    /// A session taken over from the process before runs again on the data plane: `data`
    /// is its data channel, `running` the data plane's run; the client task awaits
    /// ``attached`` as for a new session.
    func resumed(data: SessionLink, running: any PumpRunning) {
        self.core.withLock {
            $0.dataChannel = data
            $0.running = running
        }
        self.promise.succeed(DataLink(link: data, running: running))
    }

    /// The data plane's run, once started.
    var running: (any PumpRunning)? { self.core.withLock { $0.running } }

    // MARK: - Events

    /// Feeds one event to the machine and carries out the actions that are the session's;
    /// returns all of them.
    @discardableResult
    func handle(_ event: SessionStateMachine.Event) -> [SessionStateMachine.Action] {
        let actions = self.core.withLock { $0.machine.handle(event) }
        self.execute(actions)
        return actions
    }

    /// Accepts an attach once, only while waiting, only with the right token and a proof made
    /// with ``attachSecret`` (both checked, in constant time, whatever the other gives).
    func claim(_ attach: ControlMessage.Attach, dataChannel: SessionLink) -> ClaimResult {
        let tokenMatches = Tokens.matches(attach.token, self.token)
        let proved = Authenticator.verifyAttach(
            proof: attach.proof ?? "", secret: self.attachSecret, session: self.id, token: self.token)
        let matches = tokenMatches && proved
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

    /// The data plane runs the session's connections: a reset the machine asked for
    /// before this moment is carried out on the run now.
    func pumping(_ running: any PumpRunning) {
        let reset = self.core.withLock { core in
            core.running = running
            return core.resetAsked
        }
        if reset { running.kill(reason: self.end?.description ?? "reset") }
    }

    /// The session's connections are closed and forgotten.
    func markClosed() {
        self.handle(.connectionsClosed)
    }

    /// Set before `connect` is sent: at the join, bytes of the client that start like a PROXY
    /// header reset it instead of reaching the agent (docs/proxy-protocol.md).
    var refusesProxyHeader: Bool {
        get { self.proxyHeaderCheck.withLock { $0.check } }
        set { self.proxyHeaderCheck.withLock { $0.check = newValue } }
    }

    /// Whether the join found a PROXY header from a source outside `acceptProxyProtocol`.
    var refusedProxyHeader: Bool { self.proxyHeaderCheck.withLock { $0.found } }

    /// At the join, before the data plane reads the client: its early bytes, if they start
    /// like a PROXY header it may not send, reset it (the pump then ends at once).
    private func refuseEarlyProxyHeader() {
        guard self.refusesProxyHeader, ProxyHeaderReader.headerArrived(on: self.clientSocket) else { return }
        self.proxyHeaderCheck.withLock { $0.found = true }
        self.clientSocket.reset()
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
                let timer = Deadline(on: self.eventLoop, after: .fromSeconds(seconds)) {
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
                guard
                    var link = self.core.withLock({ core in
                        defer { core.link = nil }
                        return core.link
                    })
                else { break }
                self.refuseEarlyProxyHeader()
                // Started right here, by the task that joined: the client's task is woken
                // only to await the outcome, not on the way of the session's first byte.
                if let dataPlane = self.dataPlane {
                    let running = dataPlane.start(
                        .socket(self.clientSocket), link.link, meter: self.meter, limits: self.pumpLimits)
                    link.running = running
                    self.pumping(running)
                }
                self.promise.succeed(link)
            case .resetBoth:
                let (data, running) = self.core.withLock { core in
                    core.resetAsked = true
                    return (core.dataChannel, core.running)
                }
                self.clientSocket.reset()
                data?.reset()
                running?.kill(reason: self.end?.description ?? "reset")
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
