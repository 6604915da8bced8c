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

/// The agent daemon: keeps one control channel to each relay (each reconnecting with its
/// own backoff), serves `connect` requests as independent sessions, each through a data
/// channel to the relay that asked, and drains them at shutdown.
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
    /// What the run loop starts a task for: a session a relay asked for, or the connect
    /// loop of a relay (at start, and when a reload adds one).
    private enum Work: Sendable {
        case session(ControlMessage.Connect, AgentControlChannel)
        case relay(RelayConnection)
    }
    private let requests: AsyncStream<Work>
    private let requestInput: AsyncStream<Work>.Continuation
    /// The restart path: descriptors to and from systemd's store.
    let handover: Handover
    /// The data plane in force, once running (what a handover freezes).
    let activePlane = Mutex<(any DataPlane)?>(nil)

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
                "version": "\(RelayVersion.current)", "agent": "\(config.id)",
                "relay": "\(config.relays.map(\.description).joined(separator: ","))",
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
        for (session, running) in resumed { runner.resume(session, running: running) }
        await withDiscardingTaskGroup { group in
            for relay in self.state.relays { group.addTask { await self.connectLoop(relay) } }
            group.addTask { await self.shutdownWhenAsked() }
            self.life.addHelpers(
                to: &group, eventLoops: self.group, apply: { self.applyReload() }, statusLine: { self.statusLine() })
            self.hooks.ready()
            // Sessions are independent of the control channel that asked for them. The
            // stream ends once shutdown has drained them; then the helpers above stop.
            for await work in self.requests {
                switch work {
                case .session(let connect, let control):
                    // On the readiness loop's thread: dials, attach and hand-over without a thread hop.
                    group.addTask(executorPreference: SocketIO.readiness) {
                        await runner.run(connect, control: control)
                    }
                case .relay(let relay):
                    group.addTask { await self.connectLoop(relay) }
                }
            }
            group.cancelAll()
        }
        self.logger.info("relay-agent stopped")
    }

    /// Keeps a control channel to `relay` until shutdown, or until a reload removes the
    /// relay (S1–S4, again after every loss). Every attempt dials with the config in force at
    /// that moment, so a reload that changes the id, the secret, the services or the
    /// heartbeats applies at the next connection; a reload during a backoff wait ends the wait.
    private func connectLoop(_ relay: RelayConnection) async {
        var config = self.state.config
        var backoff = Self.backoff(for: config)
        var attempt = 0
        var logger = self.logger
        if config.relays.count > 1 { logger[metadataKey: "relay"] = "\(relay.address)" }
        while !self.state.isShuttingDown && !relay.isRemoved {
            let current = self.state.config
            if (current.reconnectInitialDelay, current.reconnectMaxDelay)
                != (config.reconnectInitialDelay, config.reconnectMaxDelay)
            {
                backoff = Self.backoff(for: current)
            }
            config = current
            attempt += 1
            self.state.set(relay, .connecting(attempt: attempt))
            let started = ContinuousClock.now
            let reason: String
            do {
                let connection = try await Network.dial(
                    relay.address, timeout: .fromSeconds(config.connectTimeout), group: self.group,
                    tuning: config.tcp, role: .control, tls: config.tls(for: relay.address))
                guard self.state.setControlChannel(connection.channel, of: relay), !relay.isRemoved else {
                    // Shutting down: close it the only way an NIOAsyncChannel may be dropped.
                    _ = self.state.setControlChannel(nil, of: relay)
                    try? await connection.executeThenClose { _, _ in }
                    break
                }
                // A reload during the dial found no channel to close: this one was dialled
                // with the old config, so it is dropped and the new config dialled at once.
                if relay.takeReconnectNow() {
                    _ = self.state.setControlChannel(nil, of: relay)
                    try? await connection.executeThenClose { _, _ in }
                    logger.info("reconnecting with the reloaded config: it changed during the connection attempt")
                    continue
                }
                let control = AgentControlChannel(
                    config: config,
                    relay: relay.address,
                    logger: logger,
                    channel: connection.channel,
                    onRegistered: { [state = self.state] in state.set(relay, .connected(since: Date())) },
                    onConnect: { [requestInput] in requestInput.yield(.session($0, $1)) },
                    onExpired: { [state = self.state] in
                        state.telemetry.service($0.service).sessionRefused(reason: "connect_expired")
                    }
                )
                relay.control = control
                let outcome = await control.run(connection)
                relay.control = nil
                _ = self.state.setControlChannel(nil, of: relay)
                reason = outcome.reason
                if outcome.registered {
                    attempt = 0
                    if ContinuousClock.now - started >= .seconds(Self.stableConnectionSeconds) { backoff.reset() }
                }
            } catch let failure as TLSFailure {
                // "relay 127.0.0.1:7835 failed TLS verification: …": the relay is not talked to.
                reason = failure.description
            } catch {
                reason = "cannot connect to \(relay.address): \(Network.describe(error))"
            }
            guard !self.state.isShuttingDown else { break }
            if relay.isRemoved {
                logger.info(
                    "relay removed from the config: its control channel is closed", metadata: ["reason": "\(reason)"])
                break
            }
            if relay.takeReconnectNow() {
                logger.info("reconnecting with the reloaded config: \(reason)")
                continue
            }
            let delay = backoff.next()
            self.state.set(relay, .waiting(until: Date() + delay.inSeconds, lastError: reason))
            logger.warning(
                "relay connection lost: \(reason)",
                metadata: ["retryInSeconds": "\(String(cFormat: "%.3f", delay.inSeconds))"]
            )
            switch await relay.wakeups.sleep(for: delay) {
            case .cancelled: return
            case .elapsed: break
            case .woken:
                _ = relay.takeReconnectNow()
                if !relay.isRemoved { logger.info("reconnecting now with the reloaded config") }
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
        for channel in self.state.beginShutdown() { channel.close(promise: nil) }
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
        let relayChange = self.state.replaceRelays(with: new.relays)
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
        changes += new.proxyProtocolChanges(from: old)
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
        // A removed relay's channel closes (the sessions it asked for go on until they end);
        // an added one gets its own connect loop, dialled with the new config.
        if old.relays.count == 1, new.relays.count == 1, new.relay != old.relay {
            changes.append("relay is now \(new.relay)")
        } else {
            for relay in relayChange.removed {
                changes.append("relay \(relay.address) removed (its control channel closes; its sessions go on)")
            }
            for relay in relayChange.added { changes.append("relay \(relay.address) added") }
        }
        for relay in relayChange.removed { relay.remove() }
        for relay in relayChange.added { self.requestInput.yield(.relay(relay)) }
        if reconnect {
            // A fresh control channel registers the new identity and services; sessions go on.
            let added = Set(relayChange.added.map(\.address))
            var closed = false
            for relay in self.state.relays where !added.contains(relay.address) {
                if relay.reconnect() { closed = true }
            }
            changes.append(closed ? "control channel reconnecting" : "reconnecting now")
        }
        return ReloadOutcome(applied: true, changes: changes)
    }

    /// The STATUS line: the first relay's state, and how many relays are connected when
    /// there are several.
    private func statusLine() -> String {
        let config = self.state.config
        let services = "\(config.services.count) services, \(self.state.sessions.count) sessions"
        let relays = self.state.relays
        guard let first = relays.first else { return "no relay, \(services)" }
        let others =
            relays.count > 1 ? " (\(relays.filter(\.isConnected).count)/\(relays.count) relays connected)" : ""
        switch first.condition {
        case .connected:
            return "connected to \(first.address)\(others), \(services)"
        case .connecting(let attempt):
            return "connecting to \(first.address) (attempt \(attempt))\(others), \(services)"
        case .waiting(let until, let error):
            let seconds = max(0, Int(until.timeIntervalSinceNow.rounded(.up)))
            return "reconnecting in \(seconds) s: \(error)\(others)"
        case .stopped:
            return "stopping, \(services)"
        }
    }
}
