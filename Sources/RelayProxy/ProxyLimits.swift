import RelayCore

/// The relay's limits on what peers may hold (relay-proxy.json(5), "LIMITS"); each one,
/// when hit, closes the connection, logs at most once per ``LimitCounters/logInterval``
/// and counts in `status`'s `limits` and `relay_limit_hits_total`.
public struct ProxyLimits: Sendable, Equatable {
    /// `maxUnauthenticatedConnections`: agent-port connections not yet authenticated (or
    /// attached), over all sources; more are closed at accept.
    public var maxUnauthenticated = 256
    /// `maxUnauthenticatedConnectionsPerSource`: the same, per source address.
    public var maxUnauthenticatedPerSource = 16
    /// `maxFailedProofsPerSource`: failed proofs from one source address within
    /// ``ProofBackoff/window`` before that source is refused for a backoff time.
    public var maxFailedProofsPerSource = 10
    /// `maxFailedProofsPerAgent`: failed proofs for one agent id within the window before
    /// that id is refused (except from the address it last authenticated from).
    public var maxFailedProofsPerAgent = 30
    /// `maxSessionsPerService`: live sessions of one service (pending or attached).
    public var maxSessionsPerService = 1024
    /// `maxSessionsPerAgent`: live sessions through one agent.
    public var maxSessionsPerAgent = 4096
    /// `maxPendingSessionsPerService`: sessions of one service still waiting for their data channel.
    public var maxPendingSessionsPerService = 512

    /// No session limit (what code that opens sessions outside a client's path uses).
    static let unlimited = ProxyLimits(
        maxSessionsPerService: .max, maxSessionsPerAgent: .max, maxPendingSessionsPerService: .max)

    /// The keys, each read at the top level.
    static let keys: Set<String> = [
        "maxUnauthenticatedConnections", "maxUnauthenticatedConnectionsPerSource", "maxFailedProofsPerSource",
        "maxFailedProofsPerAgent", "maxSessionsPerService", "maxSessionsPerAgent", "maxPendingSessionsPerService",
        "sessionIdleTimeoutSeconds",
    ]

    /// Reads the keys from the config's root object.
    static func read(_ root: [String: JSONValue], reader: ConfigReader) -> ProxyLimits {
        var limits = ProxyLimits()
        let range = 1...1_000_000
        limits.maxUnauthenticated = reader.count(
            root, "maxUnauthenticatedConnections", at: "$", default: limits.maxUnauthenticated, range: range)
        limits.maxUnauthenticatedPerSource = reader.count(
            root, "maxUnauthenticatedConnectionsPerSource", at: "$", default: limits.maxUnauthenticatedPerSource,
            range: range)
        limits.maxFailedProofsPerSource = reader.count(
            root, "maxFailedProofsPerSource", at: "$", default: limits.maxFailedProofsPerSource, range: range)
        limits.maxFailedProofsPerAgent = reader.count(
            root, "maxFailedProofsPerAgent", at: "$", default: limits.maxFailedProofsPerAgent, range: range)
        limits.maxSessionsPerService = reader.count(
            root, "maxSessionsPerService", at: "$", default: limits.maxSessionsPerService, range: range)
        limits.maxSessionsPerAgent = reader.count(
            root, "maxSessionsPerAgent", at: "$", default: limits.maxSessionsPerAgent, range: range)
        limits.maxPendingSessionsPerService = reader.count(
            root, "maxPendingSessionsPerService", at: "$", default: limits.maxPendingSessionsPerService, range: range)
        return limits
    }

    /// A reload's change lines: each limit that changed, old → new.
    func changes(from old: ProxyLimits) -> [String] {
        let pairs: [(String, Int, Int)] = [
            (LimitName.unauthenticated, old.maxUnauthenticated, self.maxUnauthenticated),
            (LimitName.unauthenticatedPerSource, old.maxUnauthenticatedPerSource, self.maxUnauthenticatedPerSource),
            (LimitName.failedProofsPerSource, old.maxFailedProofsPerSource, self.maxFailedProofsPerSource),
            (LimitName.failedProofsPerAgent, old.maxFailedProofsPerAgent, self.maxFailedProofsPerAgent),
            (LimitName.sessionsPerService, old.maxSessionsPerService, self.maxSessionsPerService),
            (LimitName.sessionsPerAgent, old.maxSessionsPerAgent, self.maxSessionsPerAgent),
            (LimitName.pendingSessionsPerService, old.maxPendingSessionsPerService, self.maxPendingSessionsPerService),
        ]
        return pairs.filter { $0.1 != $0.2 }.map { "\($0.0) \($0.1) → \($0.2)" }
    }

    /// Every limit by its name in `status` and metrics, with its maximum.
    func declared(sessionIdleTimeout: Double) -> [(String, Double?)] {
        [
            (LimitName.unauthenticated, Double(self.maxUnauthenticated)),
            (LimitName.unauthenticatedPerSource, Double(self.maxUnauthenticatedPerSource)),
            (LimitName.failedProofsPerSource, Double(self.maxFailedProofsPerSource)),
            (LimitName.failedProofsPerAgent, Double(self.maxFailedProofsPerAgent)),
            (LimitName.sessionsPerService, Double(self.maxSessionsPerService)),
            (LimitName.sessionsPerAgent, Double(self.maxSessionsPerAgent)),
            (LimitName.pendingSessionsPerService, Double(self.maxPendingSessionsPerService)),
            (LimitName.sessionIdleTimeout, sessionIdleTimeout),
            (LimitName.serviceAccess, nil),
            (LimitName.proxyProtocol, nil),
        ]
    }
}

/// The names of the relay's limits in `status`'s `limits` and the `limit` label: the config
/// key that sets each (or the constant's name).
enum LimitName {
    static let unauthenticated = "maxUnauthenticatedConnections"
    static let unauthenticatedPerSource = "maxUnauthenticatedConnectionsPerSource"
    static let failedProofsPerSource = "maxFailedProofsPerSource"
    static let failedProofsPerAgent = "maxFailedProofsPerAgent"
    static let sessionsPerService = "maxSessionsPerService"
    static let sessionsPerAgent = "maxSessionsPerAgent"
    static let pendingSessionsPerService = "maxPendingSessionsPerService"
    static let sessionIdleTimeout = "sessionIdleTimeoutSeconds"
    /// Clients refused by a service's `allow`/`deny` (no maximum: every refusal counts).
    static let serviceAccess = "serviceAccess"
    /// Clients refused for a PROXY header: one from a source outside `acceptProxyProtocol`,
    /// or a bad or late one from a source inside it (no maximum: every refusal counts).
    static let proxyProtocol = "proxyProtocol"
}
