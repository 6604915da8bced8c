import FoundationEssentials
import Glibc
import Logging
import NIOCore
import RelayControl
import RelayCore
import RelayMetrics
import RelayProtocol
import Synchronization

/// The relay's answers on its control socket (relayctl): status, agents, services,
/// sessions, one session, kill, reload and metrics. See docs/protocol.md for the keys.
public struct ProxyControlCommands: Sendable {
    private let server: ProxyServer
    private let metrics: MetricsRegistry?

    /// Commands over `server`'s state; `metrics` renders the process's registry.
    public init(server: ProxyServer, metrics: MetricsRegistry?) {
        self.server = server
        self.metrics = metrics
    }

    private var state: ProxyState { self.server.state }

    /// Answers one request.
    public func handle(_ request: ControlRequest) async -> ControlReply {
        switch request.command {
        case "status": return .success(self.status())
        case "agents": return .success(self.agents())
        case "services": return .success(self.services())
        case "sessions": return self.sessions(request)
        case "session": return self.session(request)
        case "kill": return self.kill(request)
        case "reload": return await self.reload()
        case "metrics": return .success(MetricsReport(text: self.renderMetrics()))
        default:
            return .failure(
                .unknownCommand,
                "unknown command '\(request.command.prefix(64))' (relay-proxy knows: status, agents, services, sessions, session, kill, reload, metrics)"
            )
        }
    }

    /// The metrics text, with the gauges brought up to date first.
    public func renderMetrics() -> String {
        let sessions = self.state.sessions
        let live = Dictionary(grouping: sessions, by: \.service).mapValues(\.count)
        var roundTrips: [String: Duration] = [:]
        for link in self.state.agents { roundTrips[link.id] = link.roundTrip }
        self.state.telemetry.refresh(
            liveSessions: live, roundTrips: roundTrips, agentsConnected: self.state.agents.count)
        return self.metrics?.text() ?? "# metrics are not enabled in this process\n"
    }

    func status() -> StatusReport {
        let config = self.state.config
        let sessions = self.state.sessions
        var report = StatusReport(
            role: "proxy",
            pid: Int(getpid()),
            startedAt: self.server.life.startedAt,
            config: self.server.configPath,
            configLoadedAt: self.server.life.loadedAt.withLock { $0 },
            control: config.control,
            metrics: config.metrics?.description,
            sessions: sessions.count,
            sessionsTotal: self.state.telemetry.sessionsTotal,
            sessionsPending: sessions.filter { if case .pending = $0.phase { true } else { false } }.count,
            services: self.services()
        )
        let agents = self.agents()
        report.listen = self.listenerAddress(ProxyServer.agentPortName) ?? config.listen.description
        report.agents = agents
        report.agentsConnected = agents.filter(\.connected).count
        report.agentsConfigured = config.agents.count
        return report
    }

    func agents() -> [AgentReport] {
        let config = self.state.config
        let links = Dictionary(self.state.agents.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        let sessions = self.state.sessions
        return config.agents.map { agent in
            var report = AgentReport(
                id: agent.id,
                connected: links[agent.id] != nil,
                services: config.services.filter { $0.agent == agent.id }.map(\.name),
                sessions: sessions.filter { $0.agent == agent.id }.count
            )
            if let link = links[agent.id] {
                report.remote = link.remote
                report.connectedSince = link.connectedAt
                report.heartbeatRoundTripSeconds = link.roundTrip?.inSeconds
            }
            return report
        }
    }

    func services() -> [ServiceReport] {
        let config = self.state.config
        let sessions = self.state.sessions
        return config.services.map { service in
            let telemetry = self.state.telemetry.service(service.name)
            let listener = self.listenerAddress(service.name)
            var report = ServiceReport(
                name: service.name,
                up: listener != nil && self.state.agent(serving: service.name) != nil,
                sessions: sessions.filter { $0.service == service.name }.count,
                sessionsTotal: telemetry.sessionsTotal,
                bytesIn: telemetry.bytesIn,
                bytesOut: telemetry.bytesOut
            )
            report.agent = service.agent
            report.listen = listener ?? service.listen.description
            return report
        }
    }

    func sessions(_ request: ControlRequest) -> ControlReply {
        let config = self.state.config
        let service = request.argument("service")
        let agent = request.argument("agent")
        if let service, config.service(named: service) == nil,
            !self.state.sessions.contains(where: { $0.service == service })
        {
            return .failure(.unknownService, "no service '\(service.prefix(64))' in \(self.server.configPath)")
        }
        if let agent, !config.agents.contains(where: { $0.id == agent }) {
            return .failure(.unknownAgent, "no agent '\(agent.prefix(64))' in \(self.server.configPath)")
        }
        let reports = self.state.sessions
            .filter { service == nil || $0.service == service }
            .filter { agent == nil || $0.agent == agent }
            .sorted { $0.startedAt < $1.startedAt }
            .map(Self.report)
        return .success(reports)
    }

    func session(_ request: ControlRequest) -> ControlReply {
        guard let id = request.argument("id") else { return .failure(.badRequest, "'session' needs args.id") }
        guard let session = self.state.session(id) else {
            return .failure(.unknownSession, "no live session '\(id.prefix(64))'")
        }
        return .success(Self.report(session))
    }

    /// Ends a session at once: a kill resets both connections, so
    /// the client and the agent tear down without waiting.
    func kill(_ request: ControlRequest) -> ControlReply {
        guard let id = request.argument("id") else { return .failure(.badRequest, "'kill' needs args.id") }
        guard let session = self.state.session(id) else {
            return .failure(.unknownSession, "no live session '\(id.prefix(64))'")
        }
        let report = Self.report(session)
        self.server.logger.notice(
            "session killed by operator",
            metadata: ["session": "\(session.id)", "service": "\(session.service)", "client": "\(session.client)"])
        session.telemetry.sessionKilled()
        session.handle(.kill)
        return .success(KillReport(id: session.id, state: report.state))
    }

    func reload() async -> ControlReply {
        let outcome = await self.server.reload()
        if outcome.applied { return .success(outcome) }
        return .failure(
            .reloadRefused,
            "the new config was refused; the old one stays in force: \(outcome.problems.joined(separator: "; "))",
            result: outcome)
    }

    private func listenerAddress(_ name: String) -> String? {
        let addresses = self.server.listeners.withLock { $0[name] ?? [] }.map(\.localAddress)
        return addresses.isEmpty ? nil : addresses.joined(separator: ", ")
    }

    static func report(_ session: ProxySession) -> SessionReport {
        let phase = session.phase
        let state = session.reportState
        var report = SessionReport(
            id: session.id,
            service: session.service,
            client: session.client,
            startedAt: session.startedAt,
            state: state,
            bytesIn: session.meter.forward,
            bytesOut: session.meter.backward
        )
        report.agent = session.agent
        report.listener = session.clientSocket.local
        if case .open(let dataChannel) = phase {
            report.dataLocal = dataChannel.local
            report.dataRemote = dataChannel.remote
        }
        return report
    }
}
