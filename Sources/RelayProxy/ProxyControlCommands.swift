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
    /// What both daemons answer alike.
    private let common: DaemonCommands<ProxySession>

    /// Commands over `server`'s state; `metrics` renders the process's registry.
    public init(server: ProxyServer, metrics: MetricsRegistry?) {
        self.server = server
        let state = server.state
        self.common = DaemonCommands(
            life: server.life, logger: server.logger, metrics: metrics, liveSessions: { state.sessions },
            liveSession: { state.session($0) }, report: { Self.report($0) })
    }

    private var state: ProxyState { self.server.state }

    /// Answers one request.
    public func handle(_ request: ControlRequest) async -> ControlReply {
        switch request.command {
        case "status": return .success(self.status())
        case "agents": return .success(self.agents())
        case "services": return .success(self.services())
        case "sessions": return self.sessions(request)
        case "session": return self.common.session(request)
        case "kill": return self.common.kill(request)
        case "reload": return await self.common.reload()
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
        return self.common.metricsText()
    }

    func status() -> StatusReport {
        let config = self.state.config
        var report = self.common.status(
            role: "proxy", control: config.control, metrics: config.metrics?.description,
            sessionsTotal: self.state.telemetry.sessionsTotal, services: self.services(),
            isPending: { if case .pending = $0.phase { true } else { false } })
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
                services: config.services.filter { $0.agents.contains(agent.id) }.map(\.name),
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
            report.agents = service.agents
            report.listen = listener ?? service.listen.description
            return report
        }
    }

    func sessions(_ request: ControlRequest) -> ControlReply {
        let config = self.state.config
        let service = request.argument("service")
        let agent = request.argument("agent")
        if let refused = self.common.refuseUnknownService(service, configured: { config.service(named: $0) != nil }) {
            return refused
        }
        if let agent, !config.agents.contains(where: { $0.id == agent }) {
            return .failure(.unknownAgent, "no agent '\(agent.prefix(64))' in \(self.server.configPath)")
        }
        return self.common.sessions { (service == nil || $0.service == service) && (agent == nil || $0.agent == agent) }
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

extension ProxySession: ControlledSession {}
