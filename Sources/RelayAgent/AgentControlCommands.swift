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
    /// What both daemons answer alike.
    private let common: DaemonCommands<AgentSession>

    /// Commands over `server`'s state; `metrics` renders the process's registry.
    public init(server: AgentServer, metrics: MetricsRegistry?) {
        self.server = server
        let state = server.state
        self.common = DaemonCommands(
            life: server.life, logger: server.logger, metrics: metrics, liveSessions: { state.sessions },
            liveSession: { state.session($0) }, report: { Self.report($0) })
    }

    private var state: AgentState { self.server.state }

    /// Answers one request.
    public func handle(_ request: ControlRequest) async -> ControlReply {
        switch request.command {
        case "status": return .success(self.status())
        case "services": return .success(self.services())
        case "sessions": return self.sessions(request)
        case "session": return self.common.session(request)
        case "kill": return self.common.kill(request)
        case "reload": return await self.common.reload()
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
        if let roundTrip = self.state.relays.lazy.compactMap({ $0.control?.roundTrip }).first {
            roundTrips[self.state.config.id] = roundTrip
        }
        self.state.telemetry.refresh(liveSessions: live, roundTrips: roundTrips, agentsConnected: nil)
        return self.common.metricsText()
    }

    func status() -> StatusReport {
        let config = self.state.config
        var report = self.common.status(
            role: "agent", control: config.control, metrics: config.metrics?.description,
            sessionsTotal: self.state.telemetry.sessionsTotal, services: self.services(),
            isPending: { $0.dataChannel == nil })
        report.agent = config.id
        let relays = self.state.relays.map { self.relay($0, config: config) }
        // `relay`: the first relay's connection (the only one, with `relay` in the config);
        // `relays`: every relay's.
        report.relay = relays.first
        report.relays = relays
        return report
    }

    func relay(_ relay: RelayConnection, config: AgentConfig) -> RelayReport {
        let history = relay.history
        let condition = relay.condition
        let stateName: String
        switch condition {
        case .connecting: stateName = "connecting"
        case .connected: stateName = "connected"
        case .waiting: stateName = "waiting"
        case .stopped: stateName = "stopped"
        }
        var report = RelayReport(
            address: relay.address.description, state: stateName, reconnectAttempts: history.attempts)
        report.lastError = history.lastError
        report.since = history.since
        if let resumption = config.tls(for: relay.address)?.resumption {
            report.tlsResumed = resumption.resumed
            report.tlsFullHandshakes = resumption.fullHandshakes
        }
        let control = relay.control
        report.sessions = self.state.sessions.filter { $0.relay == relay.address }.count
        switch condition {
        case .connected(let since):
            report.since = since
            if let channel = relay.channel {
                report.remote = channel.remoteAddress?.displayString
                report.local = channel.localAddress?.displayString
            }
            report.heartbeatRoundTripSeconds = control?.roundTrip?.inSeconds
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
        let connected = self.state.relays.contains(where: \.isConnected)
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
        let config = self.state.config
        if let refused = self.common.refuseUnknownService(service, configured: { config.service(named: $0) != nil }) {
            return refused
        }
        if let agent = request.argument("agent"), agent != self.state.config.id {
            return .failure(.unknownAgent, "this is agent '\(self.state.config.id)', not '\(agent.prefix(64))'")
        }
        return self.common.sessions { service == nil || $0.service == service }
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
        report.relay = session.relay.description
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

extension AgentSession: ControlledSession {}
