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

/// The relay daemon: binds (or adopts) the agent port and every service's listener, serves
/// them, applies reloads without dropping live sessions, and at graceful shutdown stops
/// accepting and lets live sessions drain.
public final class ProxyServer: Service, Sendable {
    /// Why the relay could not start.
    public struct StartError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Every limit's maximum and hits (`status`'s `limits`), shared with the control socket
    /// and the metrics endpoint.
    public var limits: LimitCounters { self.life.limits }

    /// The name of the agent port among listeners and socket-activation names.
    public static let agentPortName = "agents"

    let state: ProxyState
    /// The start and config times, reloads, STATUS and watchdog, and the start of shutdown.
    let life: DaemonLife
    var configPath: String { self.life.configPath }
    private let group: any EventLoopGroup
    let logger: Logger
    private let dataPlane: (any DataPlane)?
    private let hooks: DaemonHooks
    private let adopted: [String: [CInt]]
    /// The names whose sockets systemd passed and that are still open.
    let adoptedOpen: Mutex<Set<String>>
    /// The restart path: descriptors to and from systemd's store.
    let handover: Handover
    /// The data plane in force, once running (what a handover freezes).
    let activePlane = Mutex<(any DataPlane)?>(nil)
    /// The bound listeners by name (`agents` or a service), for status queries.
    let listeners = Mutex<[String: [OwnedListener]]>([:])
    private let listenerStarts: AsyncStream<(String, OwnedListener)>
    private let listenerStartInput: AsyncStream<(String, OwnedListener)>.Continuation

    /// Creates the relay. `adopted` maps socket-activation names (`agents` or a service
    /// name) to listening descriptors passed by systemd; everything else is bound as configured.
    /// `dataPlane` overrides the config's `dataPlane` (tests).
    public init(
        config: ProxyConfig,
        configPath: String,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger,
        dataPlane: (any DataPlane)? = nil,
        hooks: DaemonHooks = DaemonHooks(),
        adopted: [String: [CInt]] = [:],
        handover: Handover = Handover()
    ) {
        self.handover = handover
        self.life = DaemonLife(daemon: "relay-proxy", configPath: configPath, hooks: hooks, logger: logger)
        self.state = ProxyState(config: config, limits: self.life.limits)
        self.group = group
        self.logger = logger
        self.dataPlane = dataPlane
        self.hooks = hooks
        self.adopted = adopted
        self.adoptedOpen = Mutex(Set(adopted.keys))
        (self.listenerStarts, self.listenerStartInput) = AsyncStream.makeStream()
    }

    public func run() async throws {
        let config = self.state.config
        let known = Set([Self.agentPortName] + config.services.map(\.name))
        for name in self.adopted.keys.sorted() where !known.contains(name) {
            throw StartError(
                description:
                    "systemd passed a socket named '\(name)', which is neither '\(Self.agentPortName)' nor a service in \(self.configPath)"
            )
        }
        let handedOver = self.readHandedOver()
        try await self.startListener(Self.agentPortName, address: config.listen, what: "agent port")
        for service in config.services {
            try await self.startListener(service.name, address: service.listen, what: "service '\(service.name)'")
        }
        self.logger.info(
            "relay-proxy ready",
            metadata: [
                "version": "\(RelayVersion.current)", "agents": "\(config.agents.count)",
                "services": "\(config.services.count)",
            ]
        )
        TLSNotes.logAtStart(config.tls?.summary, logger: self.logger)
        // The data plane's loops and the readiness loop start now, not at the first session.
        let dataPlane = self.dataPlane ?? config.dataPlane.make(group: self.group)
        self.activePlane.withLock { $0 = dataPlane }
        _ = SocketIO.readiness
        let agentPort = AgentPort(state: self.state, group: self.group, logger: self.logger)
        let clients = ClientHandler(
            state: self.state, dataPlane: dataPlane, logger: self.logger, limits: self.state.limits)
        let resumed = handedOver.map { self.resume($0, dataPlane: dataPlane) } ?? []
        self.hooks.ready()

        await withDiscardingTaskGroup { group in
            for (session, socket) in resumed {
                group.addTask { await clients.resume(session, socket: socket) }
            }
            group.addTask { await self.shutdownWhenAsked() }
            group.addTask { await self.expireRotations() }
            self.life.addHelpers(
                to: &group, eventLoops: self.group, apply: { await self.applyReload() },
                statusLine: { self.statusLine() })
            for await (name, listener) in self.listenerStarts {
                group.addTask {
                    if name == Self.agentPortName {
                        await listener.run(logger: self.logger, tuning: self.tuning) { await agentPort.handle($0) }
                    } else {
                        await listener.run(logger: self.logger, tuning: self.tuning) {
                            await clients.handle($0, service: name)
                        }
                    }
                }
            }
            group.cancelAll()
        }
        self.logger.info("relay-proxy stopped")
    }

    /// Re-reads the config file and applies it without dropping live sessions; keeps the
    /// old config when the new one is invalid. SIGHUP, systemd and relayctl all come here.
    public func reload() async -> ReloadOutcome {
        await self.life.reload()
    }

    private func applyReload() async -> ReloadOutcome {
        let old = self.state.config
        var new: ProxyConfig
        var changes: [String]
        switch self.life.reread(with: ProxyConfig.load, keeping: \.control, of: old) {
        case .success(let reread): (new, changes) = reread
        case .failure(let refused): return refused.outcome
        }

        // Bind every new or moved listener first: if one fails, nothing changes.
        // A listener systemd passed stays as it is (its `listen` is not used) while it is
        // open; once a reload closed it (its service removed), the service binds its own.
        let adoptedOpen = self.adoptedOpen.withLock { $0 }
        var wanted: [(name: String, address: HostPort)] = []
        if new.listen != old.listen {
            if adoptedOpen.contains(Self.agentPortName) {
                changes.append("agent port keeps the socket systemd passed (listen \(new.listen) not used)")
            } else {
                wanted.append((Self.agentPortName, new.listen))
            }
        }
        for service in new.services {
            let before = old.service(named: service.name)
            if adoptedOpen.contains(service.name) {
                if let before, before.listen != service.listen {
                    changes.append(
                        "service '\(service.name)' keeps the socket systemd passed (listen \(service.listen) not used)")
                }
            } else if before?.listen != service.listen {
                wanted.append((service.name, service.listen))
            }
        }
        var bound: [(String, OwnedListener)] = []
        for (name, address) in wanted {
            do {
                bound.append((name, try OwnedListener.bind(try address.resolve())))
            } catch {
                for (_, listener) in bound { listener.close() }
                let path = name == Self.agentPortName ? "$.listen" : "service '\(name)'"
                return ReloadOutcome(
                    applied: false, problems: ["\(path): cannot listen on \(address): \(Network.describe(error))"])
            }
        }

        self.state.replaceConfig(new)
        // The operator may have fixed a secret: past failed proofs no longer count.
        self.state.proofBackoff.reset()

        // Close what is gone or moved; start what is new. Live sessions are not tied to listeners.
        let newNames = Set(new.services.map(\.name))
        for service in old.services where !newNames.contains(service.name) {
            self.closeListener(service.name)
            let live = self.state.sessions.filter { $0.service == service.name }
            let removal: SessionStateMachine.Removal = new.removedServiceSessions == .close ? .close : .drain
            for session in live { session.handle(.serviceRemoved(removal)) }
            let rule = new.removedServiceSessions.describe(liveSessions: live.count)
            changes.append("service '\(service.name)' removed (\(rule))")
        }
        for (name, listener) in bound {
            let replaced = self.closeListener(name)
            self.register(name, listener)
            let address = listener.localAddress
            changes.append(
                name == Self.agentPortName
                    ? "agent port moved to \(address)"
                    : "service '\(name)' \(replaced ? "moved to" : "added on") \(address)"
            )
        }
        for service in new.services {
            if let before = old.service(named: service.name), before.agents != service.agents {
                // New sessions only: a live session stays with the agent that carries it.
                changes.append(
                    service.agents.count == 1
                        ? "service '\(service.name)' now served by agent '\(service.agent)'"
                        : "service '\(service.name)' now served by agents \(service.agents.map { "'\($0)'" }.joined(separator: ", ")) (new sessions)"
                )
            }
            if let before = old.service(named: service.name), before.access != service.access {
                changes.append(
                    "service '\(service.name)' access now allow [\(service.access.allow.map(\.description).joined(separator: ", "))] deny [\(service.access.deny.map(\.description).joined(separator: ", "))] (new clients)"
                )
            }
        }

        changes += new.acceptProxyProtocolChanges(from: old)

        // Agents removed must go; a rotated secret keeps the old one accepted for the grace
        // window (the agent's channel stays), or, without a window, makes it authenticate again.
        for agent in old.agents {
            let link = self.state.agents.first { $0.id == agent.id }
            if let updated = new.agents.first(where: { $0.id == agent.id }) {
                guard updated.secret != agent.secret else { continue }
                if new.secretRotationGrace > 0 {
                    self.state.openRotationWindow(
                        agentID: agent.id, oldSecret: agent.secret,
                        until: .now + .seconds(new.secretRotationGrace))
                    changes.append(
                        "agent '\(agent.id)' secret rotated (the old one is accepted for \(ReloadOutcome.seconds(new.secretRotationGrace)))"
                    )
                } else {
                    for stale in self.state.closeRotationWindows(agentID: agent.id) {
                        stale.close(
                            .authFailed, "the relay's secret for agent '\(agent.id)' changed; authenticate again")
                    }
                    changes.append("agent '\(agent.id)' secret rotated (the old one is refused now)")
                }
            } else {
                link?.close(.authFailed, "agent '\(agent.id)' was removed from the relay's config")
                changes.append("agent '\(agent.id)' removed")
            }
        }
        let oldAgentIDs = Set(old.agents.map(\.id))
        for agent in new.agents where !oldAgentIDs.contains(agent.id) { changes.append("agent '\(agent.id)' added") }
        if (new.heartbeatInterval, new.heartbeatTimeout) != (old.heartbeatInterval, old.heartbeatTimeout) {
            for link in self.state.agents {
                link.retune(heartbeatInterval: new.heartbeatInterval, heartbeatTimeout: new.heartbeatTimeout)
            }
            changes.append(
                "heartbeats every \(ReloadOutcome.seconds(new.heartbeatInterval)), timeout \(ReloadOutcome.seconds(new.heartbeatTimeout)) (connected agents too)"
            )
        }
        changes += new.limits.changes(from: old.limits)
        if let change = TLSNotes.reloadChange(old: old.tls?.summary, new: new.tls?.summary) { changes.append(change) }
        let before = new.metrics
        changes += new.reloadChanges(
            from: old,
            timeouts: [
                ("handshakeTimeoutSeconds", old.handshakeTimeout, new.handshakeTimeout),
                ("attachTimeoutSeconds", old.attachTimeout, new.attachTimeout),
                ("secretRotationGraceSeconds", old.secretRotationGrace, new.secretRotationGrace),
            ])
        if new.metrics != before { self.state.replaceConfig(new) }
        return ReloadOutcome(applied: true, changes: changes)
    }

    /// How often ended secret rotation windows are looked for.
    static let rotationCheckInterval = Duration.seconds(1)

    /// Closes the control channels still authenticated with a secret whose rotation window
    /// has ended, every ``rotationCheckInterval``.
    private func expireRotations() async {
        repeat {
            for link in self.state.closeRotationWindows() {
                self.logger.warning(
                    "closing a control channel authenticated with a rotated secret", metadata: ["agent": "\(link.id)"])
                link.close(.authFailed, "the old secret of agent '\(link.id)' is no longer accepted; use the new one")
            }
        } while (try? await Task.sleep(for: Self.rotationCheckInterval)) != nil
    }

    /// Waits for graceful shutdown (SIGTERM), then stops accepting, drops the control
    /// channels and gives live sessions `drainTimeoutSeconds` to finish before closing them.
    private func shutdownWhenAsked() async {
        let graceful = await self.life.waitForShutdown()
        if graceful { await self.handOverIfRestarting() }
        let drainTimeout = self.state.config.drainTimeout
        // Closed before the log says so: a client that connects after the line is refused.
        for listener in self.listeners.withLock({ $0.values.flatMap { $0 } }) { listener.close() }
        let live = self.state.sessions.count
        self.logger.info(
            "shutting down: no longer accepting",
            metadata: ["sessions": "\(live)", "drainTimeoutSeconds": "\(drainTimeout)"])
        for agent in self.state.agents { agent.close(.shuttingDown, "the relay is shutting down") }
        // Sessions still waiting for a data channel fail now; the others drain.
        await self.life.drain(
            { self.state.sessions }, live: live, graceful: graceful, timeout: .seconds(drainTimeout),
            waitForNoSessions: { await self.state.waitForNoSessions(timeout: $0) })
        // Only now may the serving task group end (and cancel its helper tasks).
        self.listenerStartInput.finish()
    }

    /// The STATUS line.
    private func statusLine() -> String {
        let config = self.state.config
        return
            "\(self.state.agents.count)/\(config.agents.count) agents connected, \(config.services.count) services, \(self.state.sessions.count) sessions"
    }

    /// Adopts every socket systemd passed under `name` (IPv4 and IPv6 may share one), or
    /// binds `address` when none was passed.
    private func startListener(_ name: String, address: HostPort, what: String) async throws {
        guard let descriptors = self.adopted[name] else {
            do {
                self.register(name, try OwnedListener.bind(try address.resolve()))
            } catch {
                throw StartError(description: "cannot listen on \(address) for the \(what): \(Network.describe(error))")
            }
            return
        }
        for descriptor in descriptors {
            do {
                self.register(name, try OwnedListener.adopt(descriptor))
            } catch {
                throw StartError(
                    description:
                        "cannot listen on the socket systemd passed as '\(name)' (fd \(descriptor)) for the \(what): \(Network.describe(error))"
                )
            }
        }
    }

    /// The TCP tuning in force, for each connection as it is accepted.
    private var tuning: @Sendable () -> TCPTuning {
        { [state] in state.config.tcp }
    }

    private func register(_ name: String, _ listener: OwnedListener) {
        self.listeners.withLock { $0[name, default: []].append(listener) }
        var metadata: Logger.Metadata = ["address": "\(listener.localAddress)"]
        metadata[name == Self.agentPortName ? "role" : "service"] = "\(name == Self.agentPortName ? "agents" : name)"
        if self.adoptedOpen.withLock({ $0.contains(name) }) { metadata["adopted"] = "systemd" }
        self.logger.info("listening", metadata: metadata)
        self.listenerStartInput.yield((name, listener))
    }

    @discardableResult
    private func closeListener(_ name: String) -> Bool {
        self.adoptedOpen.withLock { _ = $0.remove(name) }
        guard let closing = self.listeners.withLock({ $0.removeValue(forKey: name) }) else { return false }
        for listener in closing { listener.close() }
        return true
    }
}
