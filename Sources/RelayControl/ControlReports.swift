import FoundationEssentials
import RelaySupport

/// What `status` answers. Keys common to both daemons, then those of one role (absent for
/// the other). The keys are a stable, documented interface (docs/protocol.md).
public struct StatusReport: Sendable, Codable, Equatable {
    /// `proxy` or `agent`.
    public var role: String
    /// The daemon's version.
    public var version: String
    /// The daemon's process id.
    public var pid: Int
    /// When the daemon started.
    public var startedAt: Date
    /// Seconds since the daemon started.
    public var uptimeSeconds: Double
    /// The config file.
    public var config: String
    /// When the config in force was loaded.
    public var configLoadedAt: Date
    /// The control socket.
    public var control: String
    /// Where metrics are served over HTTP, if configured.
    public var metrics: String?
    /// Live sessions.
    public var sessions: Int
    /// Sessions opened since the daemon started.
    public var sessionsTotal: Int
    /// Live sessions still waiting for their data channel.
    public var sessionsPending: Int
    /// The services, configured ones first.
    public var services: [ServiceReport]
    /// Every limit the daemon enforces, by name: its maximum and how often it was hit.
    public var limits: [String: LimitReport]?

    /// Proxy: the agent port's address.
    public var listen: String?
    /// Proxy: every configured agent.
    public var agents: [AgentReport]?
    /// Proxy: how many configured agents are connected.
    public var agentsConnected: Int?
    /// Proxy: how many agents are configured.
    public var agentsConfigured: Int?

    /// Agent: this agent's id.
    public var agent: String?
    /// Agent: the connection to the relay (the first of `relays`).
    public var relay: RelayReport?
    /// Agent: the connection to each relay, in the config's order (`relay` or `relays`).
    public var relays: [RelayReport]?

    /// Creates a report with the keys both roles have.
    public init(
        role: String, pid: Int, startedAt: Date, config: String, configLoadedAt: Date, control: String,
        metrics: String?, sessions: Int, sessionsTotal: Int, sessionsPending: Int, services: [ServiceReport]
    ) {
        self.role = role
        self.version = RelayVersion.current
        self.pid = pid
        self.startedAt = startedAt
        self.uptimeSeconds = Date().timeIntervalSince(startedAt)
        self.config = config
        self.configLoadedAt = configLoadedAt
        self.control = control
        self.metrics = metrics
        self.sessions = sessions
        self.sessionsTotal = sessionsTotal
        self.sessionsPending = sessionsPending
        self.services = services
    }
}

/// The agent's connection to the relay, in `status`.
public struct RelayReport: Sendable, Codable, Equatable {
    /// The relay's agent port.
    public var address: String
    /// `connected`, `connecting`, `waiting` (to reconnect) or `stopped`.
    public var state: String
    /// When the current state began (connected: since registration).
    public var since: Date?
    /// The control channel's remote and local addresses, when connected.
    public var remote: String?
    public var local: String?
    /// The last heartbeat round trip, in seconds.
    public var heartbeatRoundTripSeconds: Double?
    /// Connection attempts since the last successful registration.
    public var reconnectAttempts: Int
    /// Why the last connection ended or failed.
    public var lastError: String?
    /// When waiting: the time of the next attempt.
    public var retryAt: Date?
    /// With TLS: handshakes with the relay that resumed a session with one of its tickets, and
    /// those made in full, since the TLS settings in force were loaded.
    public var tlsResumed: Int?
    public var tlsFullHandshakes: Int?
    /// Live sessions this relay asked for (their data channels go to it).
    public var sessions: Int?

    /// Creates the report.
    public init(address: String, state: String, reconnectAttempts: Int) {
        self.address = address
        self.state = state
        self.reconnectAttempts = reconnectAttempts
    }
}

/// One agent as the relay sees it (`agents`, and `status` at the proxy).
public struct AgentReport: Sendable, Codable, Equatable {
    /// The agent id.
    public var id: String
    /// Whether its control channel is up.
    public var connected: Bool
    /// The control channel's remote address.
    public var remote: String?
    /// When it registered.
    public var connectedSince: Date?
    /// The last heartbeat round trip, in seconds.
    public var heartbeatRoundTripSeconds: Double?
    /// The services configured for it.
    public var services: [String]
    /// Live sessions through it.
    public var sessions: Int

    /// Creates the report.
    public init(id: String, connected: Bool, services: [String], sessions: Int) {
        self.id = id
        self.connected = connected
        self.services = services
        self.sessions = sessions
    }
}

/// One service (`services`, and `status`).
public struct ServiceReport: Sendable, Codable, Equatable {
    /// The service name.
    public var name: String
    /// Proxy: the agent that serves it (the first of `agents`).
    public var agent: String?
    /// Proxy: every agent that may serve it, in the config's order (`agent` or `agents`).
    public var agents: [String]?
    /// Proxy: its listener's address.
    public var listen: String?
    /// Agent: the target it leads to.
    public var target: String?
    /// Proxy: its listener is bound and its agent connected and registered for it.
    /// Agent: it is configured and the control channel is registered.
    public var up: Bool
    /// Live sessions.
    public var sessions: Int
    /// Sessions opened since the daemon started.
    public var sessionsTotal: Int
    /// Bytes from clients towards the target since the daemon started, live sessions included.
    public var bytesIn: Int64
    /// Bytes from the target towards clients.
    public var bytesOut: Int64

    /// Creates the report.
    public init(name: String, up: Bool, sessions: Int, sessionsTotal: Int, bytesIn: Int64, bytesOut: Int64) {
        self.name = name
        self.up = up
        self.sessions = sessions
        self.sessionsTotal = sessionsTotal
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
    }
}

/// One session (`sessions`, `session ID`).
public struct SessionReport: Sendable, Codable, Equatable {
    /// The session id (12 hex digits), the same at the relay and the agent.
    public var id: String
    /// The service.
    public var service: String
    /// The client's address, as the relay saw it.
    public var client: String
    /// When the session started (its client connected, or at the agent: its request arrived).
    public var startedAt: Date
    /// Seconds since then.
    public var ageSeconds: Double
    /// `pending`, `open`, `half-closed-in` (the client finished sending), `half-closed-out`
    /// (the target finished sending), `closing`.
    public var state: String
    /// Bytes from the client towards the target.
    public var bytesIn: Int64
    /// Bytes from the target towards the client.
    public var bytesOut: Int64
    /// Proxy: the agent carrying it.
    public var agent: String?
    /// Proxy: the service listener the client connected to.
    public var listener: String?
    /// The data channel's local and remote addresses, once attached.
    public var dataLocal: String?
    public var dataRemote: String?
    /// Agent: the relay that asked for the session (its data channel goes there).
    public var relay: String?
    /// Agent: the target's address, and the target connection's local address.
    public var target: String?
    public var targetLocal: String?

    /// Creates the report.
    public init(
        id: String, service: String, client: String, startedAt: Date, state: String, bytesIn: Int64, bytesOut: Int64
    ) {
        self.id = id
        self.service = service
        self.client = client
        self.startedAt = startedAt
        self.ageSeconds = Date().timeIntervalSince(startedAt)
        self.state = state
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
    }
}

/// What `kill` answers.
public struct KillReport: Sendable, Codable, Equatable {
    /// The session killed.
    public var id: String
    /// The state it was in.
    public var state: String

    /// Creates the report.
    public init(id: String, state: String) {
        self.id = id
        self.state = state
    }
}

/// What `metrics` answers: the Prometheus text exposition format.
public struct MetricsReport: Sendable, Codable, Equatable {
    /// The text, as served at `/metrics`.
    public var text: String

    /// Creates the report.
    public init(text: String) { self.text = text }
}

/// One limit in `status`'s `limits` object: the maximum in force and how often it was hit.
public struct LimitReport: Sendable, Codable, Equatable {
    /// The maximum in force (a count, or seconds for a time limit).
    public var max: Double?
    /// How often the limit was hit since the daemon started.
    public var hits: Int

    /// Creates the report.
    public init(max: Double?, hits: Int) {
        self.max = max
        self.hits = hits
    }
}
