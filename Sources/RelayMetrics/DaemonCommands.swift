import FoundationEssentials
import Glibc
import Logging
import RelayControl
import RelayCore
import RelayProtocol

/// A live session as the control commands see it: a ``DaemonSession`` with its service's counters.
public protocol ControlledSession: DaemonSession {
    /// Its service's counters.
    var telemetry: ServiceTelemetry { get }
}

/// The control commands both daemons answer the same way (relayctl status's common part,
/// sessions, session, kill, reload, metrics), over one daemon's live sessions; each daemon's
/// commands keep their own reports and use this for the rest.
public struct DaemonCommands<Session: ControlledSession>: Sendable {
    private let life: DaemonLife
    private let logger: Logger
    private let metrics: MetricsRegistry?
    private let liveSessions: @Sendable () -> [Session]
    private let liveSession: @Sendable (String) -> Session?
    private let report: @Sendable (Session) -> SessionReport

    /// Commands over a daemon's `life`, logging to `logger`, rendering `metrics`; sessions come from
    /// `liveSessions` and `liveSession` (by id) and are reported by `report`.
    public init(
        life: DaemonLife,
        logger: Logger,
        metrics: MetricsRegistry?,
        liveSessions: @escaping @Sendable () -> [Session],
        liveSession: @escaping @Sendable (String) -> Session?,
        report: @escaping @Sendable (Session) -> SessionReport
    ) {
        self.life = life
        self.logger = logger
        self.metrics = metrics
        self.liveSessions = liveSessions
        self.liveSession = liveSession
        self.report = report
    }

    /// The status report's common part; the daemon adds its own keys.
    public func status(
        role: String, control: String, metrics: String?, sessionsTotal: Int, services: [ServiceReport],
        isPending: (Session) -> Bool
    ) -> StatusReport {
        let sessions = self.liveSessions()
        var report = StatusReport(
            role: role,
            pid: Int(getpid()),
            startedAt: self.life.startedAt,
            config: self.life.configPath,
            configLoadedAt: self.life.loadedAt.withLock { $0 },
            control: control,
            metrics: metrics,
            sessions: sessions.count,
            sessionsTotal: sessionsTotal,
            sessionsPending: sessions.filter(isPending).count,
            services: services
        )
        report.limits = self.life.limits.report
        return report
    }

    /// The metrics text (the daemon brings its gauges up to date first).
    public func metricsText() -> String {
        self.metrics?.text() ?? "# metrics are not enabled in this process\n"
    }

    /// Refuses a `sessions` request for a service that neither the config nor a live session has.
    public func refuseUnknownService(_ service: String?, configured: (String) -> Bool) -> ControlReply? {
        guard let service, !configured(service), !self.liveSessions().contains(where: { $0.service == service })
        else { return nil }
        return .failure(.unknownService, "no service '\(service.prefix(64))' in \(self.life.configPath)")
    }

    /// The live sessions that pass `include`, oldest first.
    public func sessions(where include: (Session) -> Bool) -> ControlReply {
        .success(self.liveSessions().filter(include).sorted { $0.startedAt < $1.startedAt }.map(self.report))
    }

    /// One live session.
    public func session(_ request: ControlRequest) -> ControlReply {
        guard let id = request.argument("id") else { return .failure(.badRequest, "'session' needs args.id") }
        guard let session = self.liveSession(id) else {
            return .failure(.unknownSession, "no live session '\(id.prefix(64))'")
        }
        return .success(self.report(session))
    }

    /// Ends a session at once: a kill resets both its connections.
    public func kill(_ request: ControlRequest) -> ControlReply {
        guard let id = request.argument("id") else { return .failure(.badRequest, "'kill' needs args.id") }
        guard let session = self.liveSession(id) else {
            return .failure(.unknownSession, "no live session '\(id.prefix(64))'")
        }
        let report = self.report(session)
        self.logger.notice(
            "session killed by operator",
            metadata: ["session": "\(session.id)", "service": "\(session.service)", "client": "\(session.client)"])
        session.telemetry.sessionKilled()
        session.handle(.kill)
        return .success(KillReport(id: session.id, state: report.state))
    }

    /// Reloads the config; a refused one is a failure carrying the outcome.
    public func reload() async -> ControlReply {
        let outcome = await self.life.reload()
        if outcome.applied { return .success(outcome) }
        return .failure(
            .reloadRefused,
            "the new config was refused; the old one stays in force: \(outcome.problems.joined(separator: "; "))",
            result: outcome)
    }
}
