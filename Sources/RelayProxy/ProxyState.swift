import FoundationEssentials
import NIOCore
import RelayCore
import RelayMetrics
import RelayProtocol
import Synchronization

/// The relay's shared state: the config in force, the registered agents and the live
/// sessions. Every change happens under one lock, never across an `await`.
final class ProxyState: Sendable {
    private struct Store {
        var config: ProxyConfig
        var agents: [String: AgentLink] = [:]
        var sessions: [String: ProxySession] = [:]
        /// Old secrets still accepted after a reload rotated them, until their deadline.
        var rotations: [String: (secret: Secret, until: ContinuousClock.Instant)] = [:]
        /// Per service, where the round robin among equally loaded agents starts next.
        var rotation: [String: Int] = [:]
    }

    private let store: Mutex<Store>
    /// Per-service counters and metrics.
    let telemetry = DaemonTelemetry(role: "proxy")
    /// Every limit's maximum and hits, and their rate-limited log lines.
    let limits: LimitCounters
    /// Agent-port connections not yet authenticated (or attached), in total and per source.
    let unauthenticated = ConnectionSlots()
    /// Refusals after failed proofs, per source and per agent id.
    let proofBackoff = ProofBackoff()
    /// Agents expected back after a restart (their clients wait instead of being refused).
    let agentGrace = AgentGrace()

    init(config: ProxyConfig, limits: LimitCounters = LimitCounters()) {
        self.store = Mutex(Store(config: config))
        self.limits = limits
        limits.observe(self.telemetry.limitHit)
        limits.declare(config.limits.declared(sessionIdleTimeout: config.sessionIdleTimeout))
        self.telemetry.declareLimits(limits.names)
    }

    /// The config in force.
    var config: ProxyConfig {
        self.store.withLock { $0.config }
    }

    /// Puts a new config in force; registered agents and live sessions stay.
    func replaceConfig(_ config: ProxyConfig) {
        self.store.withLock { $0.config = config }
        self.limits.declare(config.limits.declared(sessionIdleTimeout: config.sessionIdleTimeout))
    }

    /// The credentials an agent is checked against: its secret in the config in force, and
    /// the one a reload replaced while the rotation window is open.
    func credentials(for agentID: String) -> AgentCredentials? {
        self.store.withLock { store in
            guard var credentials = store.config.credentials(for: agentID) else { return nil }
            if let rotation = store.rotations[agentID], ContinuousClock.now < rotation.until {
                credentials.previousSecrets = [rotation.secret]
            }
            return credentials
        }
    }

    /// Keeps accepting `oldSecret` for `agentID` until `until`.
    func openRotationWindow(agentID: String, oldSecret: Secret, until: ContinuousClock.Instant) {
        self.store.withLock { $0.rotations[agentID] = (oldSecret, until) }
    }

    /// Ends the rotation windows that are past their deadline (or, with `agentID`, that
    /// agent's at once) and returns the control channels still authenticated with a secret
    /// that is no longer accepted.
    func closeRotationWindows(now: ContinuousClock.Instant = .now, agentID: String? = nil) -> [AgentLink] {
        self.store.withLock { store in
            var ended: [String] = []
            for (id, rotation) in store.rotations where rotation.until <= now || id == agentID {
                ended.append(id)
            }
            if let agentID, store.rotations[agentID] == nil { ended.append(agentID) }
            var stale: [AgentLink] = []
            for id in ended {
                store.rotations[id] = nil
                guard let link = store.agents[id], let current = store.config.agents.first(where: { $0.id == id })
                else { continue }
                if let proved = link.provedSecret, proved != current.secret { stale.append(link) }
            }
            return stale
        }
    }

    /// A registered agent that serves `service` now, if any: the config assigns the service
    /// to it and the agent offered it when it registered.
    func agent(serving service: String) -> AgentLink? {
        self.store.withLock { store in
            guard let entry = store.config.service(named: service) else { return nil }
            for name in entry.agents {
                if let link = Self.link(store, entry.agents, name, serving: service) { return link }
            }
            return nil
        }
    }

    /// The registered agents that serve `service` now (as ``agent(serving:)``).
    func agents(serving service: String) -> [AgentLink] {
        self.store.withLock { store in
            guard let entry = store.config.service(named: service) else { return [] }
            return entry.agents.compactMap { Self.link(store, entry.agents, $0, serving: service) }
        }
    }

    /// The agent a new session of `service` goes to, among those that serve it now and are
    /// not in `excluding` (the ones this client's session already tried): the one with the
    /// fewest live sessions of the service; among equals, round robin (each pick moves the
    /// service's starting point on by one). Nil when none is left.
    func nextAgent(serving service: String, excluding: Set<String> = []) -> AgentLink? {
        self.store.withLock { store in
            guard let entry = store.config.service(named: service) else { return nil }
            let names = entry.agents
            let links = names.compactMap { name -> (index: Int, link: AgentLink)? in
                guard !excluding.contains(name), let link = Self.link(store, names, name, serving: service),
                    let index = names.firstIndex(of: name)
                else { return nil }
                return (index, link)
            }
            guard !links.isEmpty else { return nil }
            guard links.count > 1 else { return links[0].link }
            var live: [String: Int] = [:]
            for session in store.sessions.values where session.service == service {
                live[session.agent, default: 0] += 1
            }
            let start = store.rotation[service, default: 0]
            store.rotation[service] = (start + 1) % names.count
            let turn = { (index: Int) in (index - start % names.count + names.count) % names.count }
            let chosen = links.min { a, b in
                let (loadA, loadB) = (live[a.link.id, default: 0], live[b.link.id, default: 0])
                return loadA != loadB ? loadA < loadB : turn(a.index) < turn(b.index)
            }
            return chosen?.link
        }
    }

    /// The registered link of agent `name` if it serves `service`: the service names it and
    /// it offered the service when it registered.
    private static func link(_ store: Store, _ names: [String], _ name: String, serving service: String) -> AgentLink? {
        guard names.contains(name), let link = store.agents[name], link.offered.contains(service) else { return nil }
        return link
    }

    /// Makes `link` the agent's control channel; returns the one it replaces, if any.
    ///
    /// When the agent was expected back (``AgentGrace``: it said `restarting`), its process
    /// before has exited (systemd starts the next one only then) after attaching what it
    /// had accepted: a session still waiting for that agent's data channel was asked of it
    /// too late and never will be attached. It fails as `agentDisconnected`, and its client
    /// is offered to the agent's next process (`ClientHandler.attach`).
    func register(_ link: AgentLink) -> AgentLink? {
        let expected = self.agentGrace.arrived(link.id)
        let (previous, orphans) = self.store.withLock { store in
            let previous = store.agents[link.id]
            store.agents[link.id] = link
            // Under the same lock as the registration: none of these was offered to `link`.
            let orphans = expected ? store.sessions.values.filter { $0.agent == link.id } : []
            return (previous, orphans)
        }
        if previous != nil { self.telemetry.agentDisconnected(link.id) }
        self.telemetry.agentConnected(link.id)
        // Only those still waiting for their data channel fail.
        for session in orphans { session.fail(.agentDisconnected) }
        return previous
    }

    /// Whether agent `link.id` registered again on another control channel since `link`.
    func registeredAgain(_ link: AgentLink) -> Bool {
        self.store.withLock { store in
            guard let current = store.agents[link.id] else { return false }
            return current !== link
        }
    }

    /// Removes `link` if it is still the agent's control channel, and fails the sessions
    /// still waiting for that agent (their clients are closed at once), unless the agent is
    /// expected back (``AgentGrace``: it said `restarting`).
    func unregister(_ link: AgentLink) {
        let waiting: [ProxySession]? = self.store.withLock { store in
            guard store.agents[link.id] === link else { return nil }
            store.agents[link.id] = nil
            return store.sessions.values.filter { $0.agent == link.id }
        }
        guard let waiting else { return }
        self.telemetry.agentDisconnected(link.id)
        // An agent that said `restarting` still attaches the sessions it was asked for
        // before it hands over; they wait for their data channel (or their attach timeout).
        guard self.agentGrace.deadline(for: link.id) == nil else { return }
        for session in waiting { session.fail(.agentDisconnected) }
    }

    /// The registered agents.
    var agents: [AgentLink] {
        self.store.withLock { Array($0.agents.values) }
    }

    /// Creates and records a session with a fresh id, unique among live sessions, and starts
    /// it (its attach timer runs); the caller sends its `connect`. Nil, with the limit's name,
    /// when the service or the agent already holds as many sessions as the limits allow.
    func openSessionWithinLimits(
        service: String, agent: String, client: String, clientSocket: OwnedSocket, attachSecret: Secret,
        dataPlane: (any DataPlane)? = nil
    ) -> Result<ProxySession, SessionLimitHit> {
        self.openSession(
            service: service, agent: agent, client: client, clientSocket: clientSocket, attachSecret: attachSecret,
            dataPlane: dataPlane, enforceLimits: true)
    }

    /// Creates and records a session as ``openSessionWithinLimits(service:agent:client:clientSocket:dataPlane:)``
    /// does, without looking at the session limits.
    func openSession(
        service: String, agent: String, client: String, clientSocket: OwnedSocket, attachSecret: Secret,
        dataPlane: (any DataPlane)? = nil
    ) -> ProxySession {
        let result = self.openSession(
            service: service, agent: agent, client: client, clientSocket: clientSocket, attachSecret: attachSecret,
            dataPlane: dataPlane, enforceLimits: false)
        switch result {
        case .success(let session): return session
        case .failure: preconditionFailure("no limit is enforced")
        }
    }

    private func openSession(
        service: String, agent: String, client: String, clientSocket: OwnedSocket, attachSecret: Secret,
        dataPlane: (any DataPlane)?, enforceLimits: Bool
    ) -> Result<ProxySession, SessionLimitHit> {
        self.store.withLock { store -> Result<ProxySession, SessionLimitHit> in
            let limits = enforceLimits ? store.config.limits : ProxyLimits.unlimited
            var ofService = 0
            var pendingOfService = 0
            var ofAgent = 0
            for session in store.sessions.values {
                if session.agent == agent { ofAgent += 1 }
                guard session.service == service else { continue }
                ofService += 1
                if case .pending = session.phase { pendingOfService += 1 }
            }
            if ofService >= limits.maxSessionsPerService {
                return .failure(SessionLimitHit(name: LimitName.sessionsPerService, max: limits.maxSessionsPerService))
            }
            if pendingOfService >= limits.maxPendingSessionsPerService {
                return .failure(
                    SessionLimitHit(name: LimitName.pendingSessionsPerService, max: limits.maxPendingSessionsPerService)
                )
            }
            if ofAgent >= limits.maxSessionsPerAgent {
                return .failure(SessionLimitHit(name: LimitName.sessionsPerAgent, max: limits.maxSessionsPerAgent))
            }
            var id = SessionIDs.make()
            while store.sessions[id] != nil { id = SessionIDs.make() }
            let session = ProxySession(
                id: id, service: service, agent: agent, client: client, clientSocket: clientSocket,
                attachSecret: attachSecret, telemetry: self.telemetry.service(service),
                attachTimeout: store.config.attachTimeout,
                halfCloseTimeout: store.config.halfCloseTimeout, idleTimeout: store.config.sessionIdleTimeout,
                dataPlane: dataPlane)
            store.sessions[id] = session
            session.telemetry.sessionOpened()
            return .success(session)
        }
    }

    /// Records a session taken over from the process before (a handover), open, with its
    /// id, start and byte counts; nil if a live session already has its id.
    func adoptSession(_ record: HandoverState.Session, clientSocket: OwnedSocket) -> ProxySession? {
        self.store.withLock { store -> ProxySession? in
            guard store.sessions[record.id] == nil else { return nil }
            let session = ProxySession(
                id: record.id, service: record.service, agent: record.agent, client: record.client,
                clientSocket: clientSocket, attachSecret: Authenticator.dummySecret,
                telemetry: self.telemetry.service(record.service), attachTimeout: store.config.attachTimeout,
                halfCloseTimeout: store.config.halfCloseTimeout, idleTimeout: store.config.sessionIdleTimeout,
                resumed: record)
            store.sessions[record.id] = session
            session.telemetry.sessionOpened()
            return session
        }
    }

    /// Forgets a session whose connections are closed.
    func removeSession(_ session: ProxySession) {
        session.markClosed()
        self.store.withLock { store in
            if store.sessions[session.id] === session { store.sessions[session.id] = nil }
        }
    }

    /// The session with this id, if live.
    func session(_ id: String) -> ProxySession? {
        self.store.withLock { $0.sessions[id] }
    }

    /// All live sessions.
    var sessions: [ProxySession] {
        self.store.withLock { Array($0.sessions.values) }
    }
}

/// A session refused by a limit: which one, and its maximum.
struct SessionLimitHit: Error {
    let name: String
    let max: Int
}

extension ProxyState {
    /// Waits until no session is live, checking every `interval` up to `timeout`; `true` if drained.
    func waitForNoSessions(timeout: Duration, interval: Duration = .milliseconds(50)) async -> Bool {
        let end = ContinuousClock.now + timeout
        while !self.sessions.isEmpty {
            guard ContinuousClock.now < end, (try? await Task.sleep(for: interval)) != nil else { return false }
        }
        return true
    }
}
