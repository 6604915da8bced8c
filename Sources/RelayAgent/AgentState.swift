import FoundationEssentials
import NIOCore
import RelayCore
import RelayMetrics
import RelayProtocol
import Synchronization

/// One session at the agent (S8–S20): a data channel joined to a target connection, as a
/// shell over ``SessionStateMachine``. Every event goes to the machine under one lock; the
/// session resets its connections when the machine says so and counts a session that ends
/// before it joined; `SessionRunner` does the dials, the `attach`, the `refuse` and the pump
/// the machine asks for, and logs the end.
final class AgentSession: Sendable {
    private struct Core {
        var machine: SessionStateMachine
        /// The connection to the target, once dialled.
        var target: OwnedSocket?
        /// The data channel to the relay, once dialled (a TLS one is already in NIO).
        var data: SessionLink?
        /// Whether the relay accepted the data channel (bytes flow from then on).
        var attached = false
        /// The data plane's run, once started.
        var running: (any PumpRunning)?
        /// Whether the machine asked for both connections to be reset.
        var resetAsked = false
    }

    let id: String
    let service: String
    let client: String
    let target: String
    /// The relay that asked for the session; its data channel goes there.
    let relay: HostPort
    let startedAt: Date
    let started: ContinuousClock.Instant
    /// Forward: relay → target (bytes in); backward: target → relay (bytes out).
    let meter: TrafficMeter
    let telemetry: ServiceTelemetry
    private let core: Mutex<Core>

    init(
        id: String, service: String, client: String, target: String, relay: HostPort, telemetry: ServiceTelemetry,
        halfCloseTimeout: Double = 0, dialsInParallel: Bool = true, resumed: HandoverState.Session? = nil
    ) {
        self.id = id
        self.relay = relay
        self.service = service
        self.client = client
        self.target = target
        self.telemetry = telemetry
        var machine = SessionStateMachine.agent(halfCloseTimeout: halfCloseTimeout, dialsInParallel: dialsInParallel)
        if let resumed {
            let startedAt = Date(timeIntervalSince1970: resumed.startedAt)
            self.startedAt = startedAt
            self.started = ContinuousClock.now - .seconds(max(0, Date().timeIntervalSince(startedAt)))
            self.meter = TrafficMeter(
                sink: telemetry, forward: resumed.forwardBytes, backward: resumed.backwardBytes,
                forwardFinished: resumed.forward.finished, backwardFinished: resumed.backward.finished)
            _ = machine.resume(forwardFinished: resumed.forward.finished, backwardFinished: resumed.backward.finished)
        } else {
            self.startedAt = Date()
            self.started = ContinuousClock.now
            self.meter = TrafficMeter(sink: telemetry)
        }
        self.core = Mutex(Core(machine: machine))
        self.meter.onFinish { [weak self] forward in self?.handle(.finPassedOn(forward ? .first : .second)) }
    }

    /// A session taken over from the process before runs again on the data plane.
    func resumed(data: OwnedSocket, target: OwnedSocket, running: any PumpRunning) {
        self.core.withLock { core in
            core.data = .socket(data)
            core.target = target
            core.attached = true
            core.running = running
        }
    }

    /// The data plane's run, once started.
    var running: (any PumpRunning)? { self.core.withLock { $0.running } }

    /// Starts the session: the first steps (dial the target, and the data channel at the same time).
    func start() -> [SessionStateMachine.Action] {
        let actions = self.core.withLock { $0.machine.start() }
        self.execute(actions)
        return actions
    }

    /// Feeds one event to the machine, carries out the actions that are the session's (a
    /// reset, the count of a refused session) and returns all of them.
    @discardableResult
    func handle(_ event: SessionStateMachine.Event) -> [SessionStateMachine.Action] {
        let actions = self.core.withLock { core in
            let actions = core.machine.handle(event)
            if event == .attachAccepted, actions.contains(.startPumping) { core.attached = true }
            return actions
        }
        self.execute(actions)
        return actions
    }

    /// The target connection, once dialled.
    var targetSocket: OwnedSocket? { self.core.withLock { $0.target } }

    /// The data channel once dialled, for the runner's `attach`.
    var dataLinkForAttach: SessionLink? { self.core.withLock { $0.data } }

    /// The data channel, once the relay accepted it (bytes flow from then on).
    var dataChannel: SessionLink? { self.core.withLock { $0.attached ? $0.data : nil } }

    /// How the session ended (or is ending), once decided.
    var end: SessionEnd? { self.core.withLock { $0.machine.end } }

    /// The state `relayctl` shows: pending, open, half-closed-in, half-closed-out, closing.
    var reportState: String { self.core.withLock { $0.machine.reportState } }

    /// Remembers the target connection, so that a reset reaches it; call it before telling
    /// the machine it is there.
    func adoptTarget(_ socket: OwnedSocket) {
        let reset = self.core.withLock { core in
            core.target = socket
            return core.resetAsked
        }
        if reset { socket.reset() }
    }

    /// Remembers the data channel, as ``adoptTarget(_:)``.
    func adoptData(_ link: SessionLink) {
        let reset = self.core.withLock { core in
            core.data = link
            return core.resetAsked
        }
        if reset { link.reset() }
    }

    /// The data plane runs the session's connections: a reset asked before is done on it now.
    func pumping(_ running: any PumpRunning) {
        let reset = self.core.withLock { core in
            core.running = running
            return core.resetAsked
        }
        if reset { running.kill(reason: self.end?.description ?? "reset") }
    }

    /// Closes whatever connection the data plane did not take (the runner's last step).
    func closeConnections() {
        let (target, data) = self.core.withLock { ($0.target, $0.data) }
        target?.close()
        data?.close()
    }

    private func execute(_ actions: [SessionStateMachine.Action]) {
        for action in actions {
            switch action {
            case .resetBoth:
                let (target, data, running) = self.core.withLock { core in
                    core.resetAsked = true
                    return (core.target, core.data, core.running)
                }
                target?.reset()
                data?.reset()
                running?.kill(reason: self.end?.description ?? "reset")
            case .reportEnd(let end):
                if let metric = end.refusedMetric { self.telemetry.sessionRefused(reason: metric) }
            default:
                // The dials, `attach`, `refuse` and the pump are the runner's; the data plane
                // passes FINs on, runs the half-close timer and closes what it joined itself.
                break
            }
        }
    }
}

/// The agent's shared state: its connections to the relays and its live sessions.
final class AgentState: Sendable {
    private struct Store {
        var config: AgentConfig
        /// One per relay of the config, in its order.
        var relays: [RelayConnection]
        var sessions: [String: AgentSession] = [:]
        var shuttingDown = false
    }

    private let store: Mutex<Store>
    /// Per-service counters and metrics.
    let telemetry = DaemonTelemetry(role: "agent")
    /// Every limit's maximum and hits, and their rate-limited log lines.
    let limits: LimitCounters

    init(config: AgentConfig, limits: LimitCounters = LimitCounters()) {
        self.store = Mutex(Store(config: config, relays: config.relays.map(RelayConnection.init(address:))))
        self.limits = limits
        limits.observe(self.telemetry.limitHit)
        Self.declareLimits(of: config, in: limits)
        self.telemetry.declareLimits(limits.names)
    }

    var config: AgentConfig {
        get { self.store.withLock { $0.config } }
        set {
            self.store.withLock { $0.config = newValue }
            Self.declareLimits(of: newValue, in: self.limits)
        }
    }

    /// The agent's limits by name (the config key), with their maxima.
    static func declareLimits(of config: AgentConfig, in limits: LimitCounters) {
        limits.declare([
            ("maxSessions", Double(config.maxSessions)), ("sessionIdleTimeoutSeconds", config.sessionIdleTimeout),
        ])
    }

    /// The relays the agent keeps control channels to, in the config's order.
    var relays: [RelayConnection] { self.store.withLock { $0.relays } }

    /// Makes the relay list follow `addresses` (a reload): returns the connections added
    /// (their loops are to be started) and those removed (to be closed). Kept ones keep
    /// their channel and state.
    func replaceRelays(with addresses: [HostPort]) -> (added: [RelayConnection], removed: [RelayConnection]) {
        self.store.withLock { store in
            let old = Dictionary(store.relays.map { ($0.address, $0) }, uniquingKeysWith: { first, _ in first })
            let wanted = Set(addresses)
            let removed = store.relays.filter { !wanted.contains($0.address) }
            var added: [RelayConnection] = []
            store.relays = addresses.map { address in
                if let kept = old[address] { return kept }
                let connection = RelayConnection(address: address)
                added.append(connection)
                return connection
            }
            return (added, removed)
        }
    }

    /// Sets `relay`'s condition and counts a registration or its loss in the metrics.
    func set(_ relay: RelayConnection, _ condition: RelayConnection.Condition) {
        switch relay.set(condition) {
        case true?: self.telemetry.agentConnected(self.config.id)
        case false?: self.telemetry.agentDisconnected(self.config.id)
        case nil: break
        }
    }

    /// Records `relay`'s live control connection (nil when it closes). Returns `false` if
    /// shutting down, so the caller closes the channel.
    func setControlChannel(_ channel: (any Channel)?, of relay: RelayConnection) -> Bool {
        relay.setChannel(channel)
        return !self.isShuttingDown
    }

    /// The live session with this id.
    func session(_ id: String) -> AgentSession? {
        self.store.withLock { $0.sessions[id] }
    }

    /// Marks shutdown and returns the control channels to close.
    func beginShutdown() -> [any Channel] {
        let relays = self.store.withLock { store in
            store.shuttingDown = true
            return store.relays
        }
        return relays.compactMap { $0.stop() }
    }

    var isShuttingDown: Bool { self.store.withLock { $0.shuttingDown } }

    func add(_ session: AgentSession) {
        self.store.withLock { $0.sessions[session.id] = session }
    }

    /// Records `session` unless `maxSessions` are live already; false then.
    func addWithinLimit(_ session: AgentSession) -> Bool {
        self.store.withLock { store in
            guard store.sessions.count < store.config.maxSessions else { return false }
            store.sessions[session.id] = session
            return true
        }
    }

    func remove(_ session: AgentSession) {
        self.store.withLock { store in
            if store.sessions[session.id] === session { store.sessions[session.id] = nil }
        }
    }

    var sessions: [AgentSession] { self.store.withLock { Array($0.sessions.values) } }

    /// Waits until no session is live, checking every `interval` up to `timeout`; `true` if drained.
    func waitForNoSessions(timeout: Duration, interval: Duration = .milliseconds(50)) async -> Bool {
        let end = ContinuousClock.now + timeout
        while !self.sessions.isEmpty {
            guard ContinuousClock.now < end, (try? await Task.sleep(for: interval)) != nil else { return false }
        }
        return true
    }
}
