import Metrics
import RelayControl
import RelayCore
import Synchronization

/// One service's counters at a daemon: what `relayctl services` reports, kept in step with
/// the swift-metrics counters (docs/metrics.md). Bytes are counted as the pump moves them.
public final class ServiceTelemetry: TrafficSink {
    /// The service name.
    public let name: String
    private let role: String
    private let opened = Atomic<Int>(0)
    private let inBytes = Atomic<Int64>(0)
    private let outBytes = Atomic<Int64>(0)
    private let openedCounter: Counter
    private let inCounter: Counter
    private let outCounter: Counter
    private let killedCounter: Counter

    init(role: String, name: String) {
        self.role = role
        self.name = name
        let labels = [("role", role), ("service", name)]
        self.openedCounter = Counter(label: MetricNames.sessionsOpened, dimensions: labels)
        self.inCounter = Counter(label: MetricNames.bytes, dimensions: labels + [("direction", "in")])
        self.outCounter = Counter(label: MetricNames.bytes, dimensions: labels + [("direction", "out")])
        self.killedCounter = Counter(label: MetricNames.sessionsKilled, dimensions: labels)
    }

    /// Sessions opened since the daemon started.
    public var sessionsTotal: Int { self.opened.load(ordering: .relaxed) }
    /// Bytes from clients towards the target.
    public var bytesIn: Int64 { self.inBytes.load(ordering: .relaxed) }
    /// Bytes from the target towards clients.
    public var bytesOut: Int64 { self.outBytes.load(ordering: .relaxed) }

    /// A session of this service started.
    public func sessionOpened() {
        self.opened.add(1, ordering: .relaxed)
        self.openedCounter.increment()
    }

    /// A session of this service was refused or failed before it opened; `reason` is a
    /// short snake_case label value (`no_agent`, `target_unreachable`, …).
    public func sessionRefused(reason: String) {
        Counter(
            label: MetricNames.sessionsRefused,
            dimensions: [("role", self.role), ("service", self.name), ("reason", reason)]
        ).increment()
    }

    /// An operator killed a session of this service.
    public func sessionKilled() {
        self.killedCounter.increment()
    }

    public func add(_ bytes: Int, forward: Bool) {
        if forward {
            self.inBytes.add(Int64(bytes), ordering: .relaxed)
            self.inCounter.increment(by: Int64(bytes))
        } else {
            self.outBytes.add(Int64(bytes), ordering: .relaxed)
            self.outCounter.increment(by: Int64(bytes))
        }
    }
}

/// A daemon's telemetry: per-service counters, agent connections, and the gauges that are
/// brought up to date from the daemon's state just before each scrape.
public final class DaemonTelemetry: Sendable {
    /// `proxy` or `agent`, the `role` label of every metric.
    public let role: String
    private let services = Mutex<[String: ServiceTelemetry]>([:])

    /// Creates the telemetry of a daemon of `role`.
    public init(role: String) {
        self.role = role
    }

    /// The counters of service `name`, created on first use.
    public func service(_ name: String) -> ServiceTelemetry {
        self.services.withLock { services in
            if let existing = services[name] { return existing }
            let created = ServiceTelemetry(role: self.role, name: name)
            services[name] = created
            return created
        }
    }

    /// Every service seen so far.
    public var allServices: [ServiceTelemetry] { self.services.withLock { Array($0.values) } }

    /// Sessions opened since the daemon started, over all services.
    public var sessionsTotal: Int { self.allServices.reduce(0) { $0 + $1.sessionsTotal } }

    /// An agent's control channel registered (at the agent: this agent registered with the relay).
    public func agentConnected(_ agent: String) {
        Counter(label: MetricNames.agentConnects, dimensions: [("role", self.role), ("agent", agent)]).increment()
    }

    /// A registered control channel closed.
    public func agentDisconnected(_ agent: String) {
        Counter(label: MetricNames.agentDisconnects, dimensions: [("role", self.role), ("agent", agent)]).increment()
    }

    /// Counts a hit of limit `name` in `relay_limit_hits_total` (``LimitCounters/observe(_:)``).
    @Sendable public func limitHit(_ name: String) {
        Counter(label: MetricNames.limitHits, dimensions: [("role", self.role), ("limit", name)]).increment()
    }

    /// Makes `relay_limit_hits_total` show every limit in `names`, at 0 until it is hit.
    public func declareLimits(_ names: [String]) {
        for name in names {
            _ = Counter(label: MetricNames.limitHits, dimensions: [("role", self.role), ("limit", name)])
        }
    }

    /// Sets the gauges from the daemon's state: live sessions per service (services not
    /// listed are set to 0), heartbeat round trips per agent, and connected agents.
    public func refresh(liveSessions: [String: Int], roundTrips: [String: Duration], agentsConnected: Int?) {
        let names = Set(self.allServices.map(\.name)).union(liveSessions.keys)
        for name in names {
            Gauge(label: MetricNames.sessionsLive, dimensions: [("role", self.role), ("service", name)])
                .record(liveSessions[name] ?? 0)
        }
        for (agent, roundTrip) in roundTrips {
            Gauge(label: MetricNames.heartbeatRoundTrip, dimensions: [("role", self.role), ("agent", agent)])
                .record(roundTrip.inSeconds)
        }
        if let agentsConnected {
            Gauge(label: MetricNames.agentsConnected, dimensions: [("role", self.role)]).record(agentsConnected)
        }
    }
}

extension DaemonHooks {
    /// These hooks, with every reload's outcome also counted in `relay_reloads_total`.
    public func countingReloads(role: String) -> DaemonHooks {
        var hooks = self
        let reloaded = self.reloaded
        hooks.reloaded = { outcome in
            Counter(
                label: MetricNames.reloads,
                dimensions: [("role", role), ("outcome", outcome.applied ? "applied" : "refused")]
            ).increment()
            reloaded(outcome)
        }
        return hooks
    }
}

/// Every metric's name, in one place (each documented in docs/metrics.md).
public enum MetricNames {
    /// Counter {role, service}: sessions started.
    public static let sessionsOpened = "relay_sessions_opened_total"
    /// Gauge {role, service}: sessions live now.
    public static let sessionsLive = "relay_sessions_live"
    /// Counter {role, service, reason}: sessions refused or failed before they opened.
    public static let sessionsRefused = "relay_sessions_refused_total"
    /// Counter {role, service}: sessions killed by an operator.
    public static let sessionsKilled = "relay_sessions_killed_total"
    /// Counter {role, service, direction}: bytes carried, `in` (client → target) or `out`.
    public static let bytes = "relay_session_bytes_total"
    /// Counter {role, agent}: control channels registered.
    public static let agentConnects = "relay_agent_connects_total"
    /// Counter {role, agent}: registered control channels closed.
    public static let agentDisconnects = "relay_agent_disconnects_total"
    /// Gauge {role}: agents connected now (proxy).
    public static let agentsConnected = "relay_agents_connected"
    /// Gauge {role, agent}: the last heartbeat round trip, in seconds.
    public static let heartbeatRoundTrip = "relay_heartbeat_round_trip_seconds"
    /// Counter {role, outcome}: reloads, `applied` or `refused`.
    public static let reloads = "relay_reloads_total"
    /// Counter {role, limit}: times a limit was hit (a connection refused or closed by it).
    public static let limitHits = "relay_limit_hits_total"
}
