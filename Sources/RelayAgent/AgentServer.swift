import FoundationEssentials
import Logging
import NIOCore
import NIOPosix
import RelayControl
import RelayCore
import RelayProtocol
import RelaySupport
import ServiceLifecycle
import Synchronization

/// The agent daemon: keeps one control channel to the relay (reconnecting with backoff),
/// serves `connect` requests as independent sessions, and drains them at shutdown.
public final class AgentServer: Service, Sendable {
    /// A connection that lasted this long, registered, resets the reconnect backoff.
    public static let stableConnectionSeconds = 5.0

    let state: AgentState
    /// The start and config times, reloads, STATUS and watchdog, and the start of shutdown.
    let life: DaemonLife
    var configPath: String { self.life.configPath }
    private let group: any EventLoopGroup
    let logger: Logger
    private let dataPlane: (any DataPlane)?
    private let hooks: DaemonHooks
    /// Set by a reload that needs a fresh control channel: reconnect without a backoff delay.
    private let reconnectNow = Mutex(false)
    /// Ends a backoff wait early when a reload changed what the agent dials with.
    private let wakeups = Wakeup()
    /// Connection attempts since the last successful registration.
    let attempts = Mutex(0)
    /// The control channel of the current connection, if any.
    let currentControl = Mutex<AgentControlChannel?>(nil)
    /// The restart path: descriptors to and from systemd's store.
    let handover: Handover
    /// The data plane in force, once running (what a handover freezes).
    let activePlane = Mutex<(any DataPlane)?>(nil)
    private let requests: AsyncStream<(ControlMessage.Connect, AgentControlChannel)>
    private let requestInput: AsyncStream<(ControlMessage.Connect, AgentControlChannel)>.Continuation

    /// Creates the agent (`dataPlane` overrides the config's `dataPlane`: tests); `hooks.ready` runs once the first connection attempt is under way
    /// (a relay that is down does not delay it: the agent is running and retrying).
    public init(
        config: AgentConfig,
        configPath: String,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger,
        dataPlane: (any DataPlane)? = nil,
        hooks: DaemonHooks = DaemonHooks(),
        handover: Handover = Handover()
    ) {
        self.handover = handover
        self.life = DaemonLife(daemon: "relay-agent", configPath: configPath, hooks: hooks, logger: logger)
        self.state = AgentState(config: config, limits: self.life.limits)
        self.group = group
        self.logger = logger
        self.dataPlane = dataPlane
        self.hooks = hooks
        (self.requests, self.requestInput) = AsyncStream.makeStream()
    }

    /// Every limit's maximum and hits (`status`'s `limits`), shared with the control socket
    /// and the metrics endpoint.
    public var limits: LimitCounters { self.life.limits }

    public func run() async throws {
        let config = self.state.config
        self.logger.info(
            "relay-agent starting",
            metadata: [
                "version": "\(RelayVersion.current)", "agent": "\(config.id)", "relay": "\(config.relay)",
                "services": "\(config.services.count)",
            ]
        )
        TLSNotes.logAtStart(config.tls?.summary, logger: self.logger)
        // The data plane's loops and the readiness loop start now, not at the first session.
        _ = SocketIO.readiness
        let dataPlane = self.dataPlane ?? config.dataPlane.make(group: self.group)
        self.activePlane.withLock { $0 = dataPlane }
        let runner = SessionRunner(state: self.state, group: self.group, dataPlane: dataPlane, logger: self.logger)
        let resumed = self.readHandedOver().map { self.resume($0, dataPlane: dataPlane) } ?? []
        await withDiscardingTaskGroup { group in
            for (session, running) in resumed {
                group.addTask { await runner.resume(session, running: running) }
            }
            group.addTask { await self.connectLoop() }
            group.addTask { await self.shutdownWhenAsked() }
            self.life.addHelpers(
                to: &group, eventLoops: self.group, apply: { self.applyReload() }, statusLine: { self.statusLine() })
            self.hooks.ready()
            // Sessions are independent of the control channel that asked for them. The
            // stream ends once shutdown has drained them; then the helpers above stop.
            for await (connect, control) in self.requests {
                // On the readiness loop's thread: dials, attach and hand-over without a thread hop.
                group.addTask(executorPreference: SocketIO.readiness) { await runner.run(connect, control: control) }
            }
            group.cancelAll()
        }
        self.logger.info("relay-agent stopped")
    }

    /// Keeps a control channel to the relay until shutdown (S1–S4, again after every loss).
    /// Every attempt dials with the config in force at that moment, so a reload that changes
    /// the relay, the id, the secret, the services or the heartbeats applies at the next
    /// connection; a reload during a backoff wait ends the wait.
    private func connectLoop() async {
        var config = self.state.config
        var backoff = Self.backoff(for: config)
        var attempt = 0
        while !self.state.isShuttingDown {
            let current = self.state.config
            if (current.reconnectInitialDelay, current.reconnectMaxDelay)
                != (config.reconnectInitialDelay, config.reconnectMaxDelay)
            {
                backoff = Self.backoff(for: current)
            }
            config = current
            attempt += 1
            self.state.connection = .connecting(attempt: attempt)
            let started = ContinuousClock.now
            let reason: String
            do {
                let connection = try await Network.dial(
                    config.relay, timeout: .fromSeconds(config.connectTimeout), group: self.group, tuning: config.tcp,
                    role: .control, tls: config.tls)
                guard self.state.setControlChannel(connection.channel) else {
                    // Shutting down: close it the only way an NIOAsyncChannel may be dropped.
                    try? await connection.executeThenClose { _, _ in }
                    break
                }
                // A reload during the dial found no channel to close: this one was dialled
                // with the old config, so it is dropped and the new config dialled at once.
                if self.reconnectNow.withLock({ flag in
                    defer { flag = false }
                    return flag
                }) {
                    _ = self.state.setControlChannel(nil)
                    try? await connection.executeThenClose { _, _ in }
                    self.logger.info("reconnecting with the reloaded config: it changed during the connection attempt")
                    continue
                }
                let control = AgentControlChannel(
                    config: config,
                    logger: self.logger,
                    channel: connection.channel,
                    onRegistered: {
                        self.state.connection = .connected(since: Date())
                        self.attempts.withLock { $0 = 0 }
                    },
                    onConnect: { [requestInput] in requestInput.yield(($0, $1)) },
                    onExpired: { [state = self.state] in
                        state.telemetry.service($0.service).sessionRefused(reason: "connect_expired")
                    }
                )
                self.currentControl.withLock { $0 = control }
                let outcome = await control.run(connection)
                self.currentControl.withLock { $0 = nil }
                _ = self.state.setControlChannel(nil)
                reason = outcome.reason
                if outcome.registered {
                    attempt = 0
                    if ContinuousClock.now - started >= .seconds(Self.stableConnectionSeconds) { backoff.reset() }
                }
            } catch let failure as TLSFailure {
                // "relay 127.0.0.1:7835 failed TLS verification: …": the relay is not talked to.
                reason = failure.description
            } catch {
                reason = "cannot connect to \(config.relay): \(Network.describe(error))"
            }
            guard !self.state.isShuttingDown else { break }
            if self.reconnectNow.withLock({ flag in
                defer { flag = false }
                return flag
            }) {
                self.logger.info("reconnecting with the reloaded config: \(reason)")
                continue
            }
            let delay = backoff.next()
            self.state.connection = .waiting(until: Date() + delay.inSeconds, lastError: reason)
            self.logger.warning(
                "relay connection lost: \(reason)",
                metadata: ["retryInSeconds": "\(String(cFormat: "%.3f", delay.inSeconds))"]
            )
            switch await self.wakeups.sleep(for: delay) {
            case .cancelled: return
            case .elapsed: break
            case .woken:
                self.reconnectNow.withLock { $0 = false }
                self.logger.info("reconnecting now with the reloaded config")
            }
        }
    }

    private static func backoff(for config: AgentConfig) -> Backoff {
        Backoff(initial: .seconds(config.reconnectInitialDelay), maximum: .seconds(config.reconnectMaxDelay))
    }

    /// Waits for graceful shutdown (SIGTERM), then closes the control channel and gives
    /// live sessions `drainTimeout` to finish before closing them.
    private func shutdownWhenAsked() async {
        let graceful = await self.life.waitForShutdown()
        if graceful { await self.handOverIfRestarting() }
        let drainTimeout = self.state.config.drainTimeout
        self.state.beginShutdown()?.close(promise: nil)
        let live = self.state.sessions.count
        self.logger.info("shutting down", metadata: ["sessions": "\(live)", "drainTimeoutSeconds": "\(drainTimeout)"])
        // Every session drains, pending ones too: they may still attach.
        await self.life.drain(
            { self.state.sessions }, live: live, graceful: graceful, timeout: .seconds(drainTimeout),
            waitForNoSessions: { await self.state.waitForNoSessions(timeout: $0) })
        self.requestInput.finish()
    }

    /// Re-reads the config file and applies it without dropping live sessions; keeps the
    /// old config when the new one is invalid. SIGHUP, systemd and relayctl all come here.
    public func reload() async -> ReloadOutcome {
        await self.life.reload()
    }

    private func applyReload() -> ReloadOutcome {
        let old = self.state.config
        var new: AgentConfig
        var changes: [String]
        switch self.life.reread(with: AgentConfig.load, keeping: \.control, of: old) {
        case .success(let reread): (new, changes) = reread
        case .failure(let refused): return refused.outcome
        }
        var reconnect = false
        if new.relay != old.relay {
            changes.append("relay is now \(new.relay)")
            reconnect = true
        }
        if new.id != old.id {
            changes.append("agent id is now '\(new.id)'")
            reconnect = true
        }
        if new.secret != old.secret {
            changes.append("secret rotated")
            reconnect = true
        }
        let oldServices = Dictionary(old.services.map { ($0.name, $0.target) }, uniquingKeysWith: { first, _ in first })
        let newServices = Dictionary(new.services.map { ($0.name, $0.target) }, uniquingKeysWith: { first, _ in first })
        for (name, target) in newServices.sorted(by: { $0.key < $1.key }) {
            if let before = oldServices[name] {
                if before != target { changes.append("service '\(name)' now leads to \(target)") }
            } else {
                changes.append("service '\(name)' added (\(target))")
                reconnect = true
            }
        }
        for name in oldServices.keys.sorted() where newServices[name] == nil {
            let live = self.state.sessions.filter { $0.service == name }
            let removal: SessionStateMachine.Removal = new.removedServiceSessions == .close ? .close : .drain
            for session in live { session.handle(.serviceRemoved(removal)) }
            changes.append(
                "service '\(name)' removed (\(new.removedServiceSessions.describe(liveSessions: live.count)))")
            reconnect = true
        }
        if (new.heartbeatInterval, new.heartbeatTimeout) != (old.heartbeatInterval, old.heartbeatTimeout) {
            changes.append(
                "heartbeats every \(ReloadOutcome.seconds(new.heartbeatInterval)), timeout \(ReloadOutcome.seconds(new.heartbeatTimeout))"
            )
            reconnect = true
        }
        changes += new.reloadChanges(
            from: old,
            timeouts: [
                ("connectTimeoutSeconds", old.connectTimeout, new.connectTimeout),
                ("reconnectInitialDelaySeconds", old.reconnectInitialDelay, new.reconnectInitialDelay),
                ("reconnectMaxDelaySeconds", old.reconnectMaxDelay, new.reconnectMaxDelay),
            ])
        if let change = TLSNotes.reloadChange(old: old.tls?.summary, new: new.tls?.summary) { changes.append(change) }
        self.state.config = new
        if reconnect {
            // A fresh control channel registers the new identity and services; sessions go on.
            self.reconnectNow.withLock { $0 = true }
            if let channel = self.state.controlChannel {
                channel.close(promise: nil)
                changes.append("control channel reconnecting")
            } else {
                self.wakeups.wake()
                changes.append("reconnecting now")
            }
        }
        return ReloadOutcome(applied: true, changes: changes)
    }

    /// The STATUS line.
    private func statusLine() -> String {
        let config = self.state.config
        let services = "\(config.services.count) services, \(self.state.sessions.count) sessions"
        switch self.state.connection {
        case .connected:
            return "connected to \(config.relay), \(services)"
        case .connecting(let attempt):
            return "connecting to \(config.relay) (attempt \(attempt)), \(services)"
        case .waiting(let until, let error):
            let seconds = max(0, Int(until.timeIntervalSinceNow.rounded(.up)))
            return "reconnecting in \(seconds) s: \(error)"
        case .stopped:
            return "stopping, \(services)"
        }
    }
}
