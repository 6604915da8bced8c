import FoundationEssentials
import Glibc
import Logging
import NIOCore
import RelayControl
import RelayCore
import RelayMetrics
import RelayProtocol
import Synchronization

/// The agent's answers on its control socket (relayctl): status, services, sessions, one
/// session, kill, reload and metrics. See docs/protocol.md for the keys.
public struct AgentControlCommands: Sendable {
    private let server: AgentServer
    private let metrics: MetricsRegistry?

    /// Commands over `server`'s state; `metrics` renders the process's registry.
    public init(server: AgentServer, metrics: MetricsRegistry?) {
        self.server = server
        self.metrics = metrics
    }

    private var state: AgentState { self.server.state }

    /// Answers one request.
    public func handle(_ request: ControlRequest) async -> ControlReply {
        switch request.command {
        case "status": return .success(self.status())
        case "services": return .success(self.services())
        case "sessions": return self.sessions(request)
        case "session": return self.session(request)
        case "kill": return self.kill(request)
        case "reload": return await self.reload()
        case "metrics": return .success(MetricsReport(text: self.renderMetrics()))
        case "agents":
            return .failure(.unknownCommand, "'agents' is a relay-proxy command; this is relay-agent (try 'status')")
        default:
            return .failure(
                .unknownCommand,
                "unknown command '\(request.command.prefix(64))' (relay-agent knows: status, services, sessions, session, kill, reload, metrics)"
            )
        }
    }

    /// The metrics text, with the gauges brought up to date first.
    public func renderMetrics() -> String {
        let live = Dictionary(grouping: self.state.sessions, by: \.service).mapValues(\.count)
        var roundTrips: [String: Duration] = [:]
        if let roundTrip = self.server.currentControl.withLock({ $0 })?.roundTrip {
            roundTrips[self.state.config.id] = roundTrip
        }
        self.state.telemetry.refresh(liveSessions: live, roundTrips: roundTrips, agentsConnected: nil)
        return self.metrics?.text() ?? "# metrics are not enabled in this process\n"
    }

    func status() -> StatusReport {
        let config = self.state.config
        let sessions = self.state.sessions
        var report = StatusReport(
            role: "agent",
            pid: Int(getpid()),
            startedAt: self.server.life.startedAt,
            config: self.server.configPath,
            configLoadedAt: self.server.life.loadedAt.withLock { $0 },
            control: config.control,
            metrics: config.metrics?.description,
            sessions: sessions.count,
            sessionsTotal: self.state.telemetry.sessionsTotal,
            sessionsPending: sessions.filter { $0.dataChannel == nil }.count,
            services: self.services()
        )
        report.agent = config.id
        report.relay = self.relay()
        return report
    }

    func relay() -> RelayReport {
        let config = self.state.config
        let history = self.state.connectionHistory
        let connection = self.state.connection
        let stateName: String
        switch connection {
        case .connecting: stateName = "connecting"
        case .connected: stateName = "connected"
        case .waiting: stateName = "waiting"
        case .stopped: stateName = "stopped"
        }
        var report = RelayReport(
            address: config.relay.description, state: stateName, reconnectAttempts: history.attempts)
        report.lastError = history.lastError
        report.since = history.since
        switch connection {
        case .connected(let since):
            report.since = since
            if let channel = self.state.controlChannel {
                report.remote = channel.remoteAddress?.displayString
                report.local = channel.localAddress?.displayString
            }
            report.heartbeatRoundTripSeconds = self.server.currentControl.withLock({ $0 })?.roundTrip?.inSeconds
        case .waiting(let until, _):
            report.retryAt = until
        case .connecting, .stopped:
            break
        }
        return report
    }

    func services() -> [ServiceReport] {
        let config = self.state.config
        let sessions = self.state.sessions
        let connected = if case .connected = self.state.connection { true } else { false }
        return config.services.map { service in
            let telemetry = self.state.telemetry.service(service.name)
            var report = ServiceReport(
                name: service.name,
                up: connected,
                sessions: sessions.filter { $0.service == service.name }.count,
                sessionsTotal: telemetry.sessionsTotal,
                bytesIn: telemetry.bytesIn,
                bytesOut: telemetry.bytesOut
            )
            report.target = service.target.description
            return report
        }
    }

    func sessions(_ request: ControlRequest) -> ControlReply {
        let service = request.argument("service")
        if let service, self.state.config.service(named: service) == nil,
            !self.state.sessions.contains(where: { $0.service == service })
        {
            return .failure(.unknownService, "no service '\(service.prefix(64))' in \(self.server.configPath)")
        }
        if let agent = request.argument("agent"), agent != self.state.config.id {
            return .failure(.unknownAgent, "this is agent '\(self.state.config.id)', not '\(agent.prefix(64))'")
        }
        let reports = self.state.sessions
            .filter { service == nil || $0.service == service }
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

    /// Ends a session at once: both connections are reset and closed.
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

    static func report(_ session: AgentSession) -> SessionReport {
        let data = session.dataChannel
        var report = SessionReport(
            id: session.id,
            service: session.service,
            client: session.client,
            startedAt: session.startedAt,
            state: session.reportState,
            bytesIn: session.meter.forward,
            bytesOut: session.meter.backward
        )
        report.target = session.target
        if let target = session.targetSocket {
            report.targetLocal = target.local
        }
        if let data {
            report.dataLocal = data.local
            report.dataRemote = data.remote
        }
        return report
    }
}
