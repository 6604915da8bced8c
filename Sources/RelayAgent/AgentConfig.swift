import FoundationEssentials
import RelayCore
import RelayProtocol

/// The agent's configuration (`/etc/relay/agent.json`), fully validated; see relay-agent.json(5).
public struct AgentConfig: Sendable, DaemonSettings {
    /// One service the agent can reach.
    public struct Service: Sendable {
        /// The service name, as the relay's config knows it.
        public var name: String
        /// The TCP server this service leads to (resolved when dialled).
        public var target: HostPort
        /// The PROXY protocol header written to the target before any client byte
        /// (`proxyProtocol`: "v1" or "v2"); nil: none.
        public var proxyProtocol: ProxyHeader.Version? = nil
    }

    /// The default config file.
    public static let defaultPath = "/etc/relay/agent.json"
    /// The default control socket for relayctl.
    public static let defaultControlSocket = "/run/relay/agent.sock"

    /// The relays' agent ports (`relay`, or `relays` for several: high availability,
    /// docs/high-availability.md), each resolved at each connection attempt; never empty.
    /// The agent keeps one control channel to each.
    public var relays: [HostPort]
    /// The first of ``relays`` (the only one, with `relay`).
    public var relay: HostPort { self.relays[0] }
    /// The most relays `relays` may name.
    public static let maxRelays = 16
    /// This agent's id.
    public var id: String
    /// The shared secret.
    public var secret: Secret
    /// The Unix socket relayctl talks to.
    public var control: String
    /// The services offered.
    public var services: [Service]
    /// How often the agent pings the relay (`heartbeatIntervalSeconds`, default 10).
    public var heartbeatInterval: Double
    /// How long the relay may stay silent before the agent reconnects (`heartbeatTimeoutSeconds`, default 30).
    public var heartbeatTimeout: Double
    /// The limit on connecting to the relay or a target, and on the relay's handshake
    /// answers (`connectTimeoutSeconds`, default 10).
    public var connectTimeout: Double
    /// The first reconnect delay (`reconnectInitialDelaySeconds`, default 0.5).
    public var reconnectInitialDelay: Double
    /// The longest reconnect delay (`reconnectMaxDelaySeconds`, default 30).
    public var reconnectMaxDelay: Double
    /// How long live sessions may drain at shutdown (`drainTimeoutSeconds`, default 30).
    public var drainTimeout: Double
    /// Where to serve Prometheus metrics over HTTP at `/metrics` (`metrics`, default: not served).
    public var metrics: HostPort? = nil
    /// TCP keepalive and user timeout on every connection (`tcpKeepaliveSeconds`,
    /// `tcpUserTimeoutSeconds`).
    public var tcp = TCPTuning()
    /// How long a half-closed session may stay idle (`halfCloseTimeoutSeconds`, default 120; 0: no limit).
    public var halfCloseTimeout = PumpLimits.defaultHalfCloseTimeout

    /// What a reload does with the live sessions of a removed service (`removedServiceSessions`).
    public var removedServiceSessions = RemovedServiceRule.drain

    /// Where sessions' bytes move (`dataPlane`: "splice", the default, or "userspace");
    /// read at start, kept until a restart.
    public var dataPlane = DataPlaneKind.default

    /// The most live sessions (`maxSessions`, default 1024): a `connect` past it is refused
    /// before the target is dialled.
    public var maxSessions = Self.defaultMaxSessions
    /// Default `maxSessions`.
    public static let defaultMaxSessions = 1024
    /// How long a session may move no byte either way (`sessionIdleTimeoutSeconds`, default
    /// 3600; 0: no limit).
    public var sessionIdleTimeout = PumpLimits.defaultSessionIdleTimeout
    /// TLS 1.3 on the agent port (`tls`: how the relay is verified, and a client certificate
    /// for mutual TLS); nil: plaintext. A reload re-reads its files for the connections after it.
    public var tls: AgentTLS? = nil {
        didSet { self.relayTLS = Self.perRelay(self.tls, self.relays) }
    }
    /// `tls` for each relay: its own default server name and its own TLS tickets.
    private var relayTLS: [HostPort: AgentTLS] = [:]

    /// The TLS settings a connection to `relay` uses; nil: plaintext.
    public func tls(for relay: HostPort) -> AgentTLS? {
        self.relayTLS[relay] ?? self.tls
    }

    private static func perRelay(_ tls: AgentTLS?, _ relays: [HostPort]) -> [HostPort: AgentTLS] {
        guard let tls else { return [:] }
        var result: [HostPort: AgentTLS] = [:]
        for (index, relay) in relays.enumerated() { result[relay] = index == 0 ? tls : tls.forRelay(host: relay.host) }
        return result
    }

    /// The limits a session opened now runs with.
    public var pumpLimits: PumpLimits {
        PumpLimits(halfCloseTimeoutSeconds: self.halfCloseTimeout, idleTimeoutSeconds: self.sessionIdleTimeout)
    }

    static let topLevelKeys: Set<String> = Set([
        "relay", "relays", "id", "secret", "secretFile", "secretCredential", "control", "services",
        "heartbeatIntervalSeconds",
        "heartbeatTimeoutSeconds", "connectTimeoutSeconds", "reconnectInitialDelaySeconds",
        "reconnectMaxDelaySeconds", "drainTimeoutSeconds", "metrics",
    ])
    .union(ConfigReader.tcpTuningKeys).union(["halfCloseTimeoutSeconds", "removedServiceSessions", "dataPlane", "tls"])
    .union(["maxSessions", "sessionIdleTimeoutSeconds"])

    /// Reads and validates the file at `path`; the error lists every problem with its JSON path.
    public static func load(path: String) throws(ConfigError) -> AgentConfig {
        let (reader, root) = try ConfigReader.load(path: path, package: "relay-agent")
        let config = Self.read(root, reader: reader)
        try reader.finish(file: path)
        return config!
    }

    static func read(_ root: [String: JSONValue], reader: ConfigReader) -> AgentConfig? {
        reader.rejectUnknownKeys(root, at: "$", allowed: Self.topLevelKeys)
        let relays = reader.oneOrList(root, single: "relay", list: "relays", at: "$", maxCount: Self.maxRelays) {
            reader.address($0, at: $1, allowPortZero: false)
        }?.map(\.value)
        let relay = relays?.first
        let id = reader.name(root, "id", at: "$")
        let secret = reader.secret(root, at: "$")
        let control = reader.string(root, "control", at: "$", required: false) ?? Self.defaultControlSocket
        if control.isEmpty { reader.problem("$.control", "must not be empty") }

        var services: [Service] = []
        var paths: [String: String] = [:]
        let items = reader.objects(root, "services", at: "$")
        if items.count > ProtocolLimits.maxServicesPerAgent {
            reader.problem("$.services", "at most \(ProtocolLimits.maxServicesPerAgent) services")
        }
        for (path, object) in items {
            reader.rejectUnknownKeys(object, at: path, allowed: ["name", "target", "proxyProtocol"])
            let name = reader.name(object, "name", at: path)
            let target = reader.address(object, "target", at: path, allowPortZero: false)
            let proxyProtocol = reader.proxyProtocol(object, at: path)
            if let name, let first = paths[name] {
                reader.problem("\(path).name", "duplicate service name '\(name)' (first at \(first))")
                continue
            }
            guard let name, let target else { continue }
            paths[name] = path
            services.append(Service(name: name, target: target, proxyProtocol: proxyProtocol))
        }

        let interval = reader.seconds(root, "heartbeatIntervalSeconds", at: "$", default: 10, range: 0.05...3600)
        let timeout = reader.seconds(root, "heartbeatTimeoutSeconds", at: "$", default: 30, range: 0.1...86400)
        if timeout <= interval {
            reader.problem("$.heartbeatTimeoutSeconds", "must be longer than heartbeatIntervalSeconds (\(interval))")
        }
        let connect = reader.seconds(root, "connectTimeoutSeconds", at: "$", default: 10, range: 0.05...600)
        let initial = reader.seconds(root, "reconnectInitialDelaySeconds", at: "$", default: 0.5, range: 0.01...3600)
        let maximum = reader.seconds(root, "reconnectMaxDelaySeconds", at: "$", default: 30, range: 0.01...86400)
        if maximum < initial {
            reader.problem(
                "$.reconnectMaxDelaySeconds", "must not be shorter than reconnectInitialDelaySeconds (\(initial))")
        }
        let drain = reader.seconds(root, "drainTimeoutSeconds", at: "$", default: 30, range: 0...86400)
        let metrics = root["metrics"] == nil ? nil : reader.address(root, "metrics", at: "$")
        let tcp = reader.tcpTuning(root)
        let removedRule = reader.removedServiceRule(root)
        let halfClose = reader.halfCloseTimeout(root)
        let dataPlane = reader.dataPlane(root)
        let maxSessions = reader.count(
            root, "maxSessions", at: "$", default: Self.defaultMaxSessions, range: 1...1_000_000)
        let idle = reader.sessionIdleTimeout(root)
        let tls = reader.agentTLS(root, relayHost: relay?.host)

        guard let relays, let id, let secret, reader.problems.isEmpty else { return nil }
        var config = AgentConfig(
            relays: relays,
            id: id,
            secret: secret,
            control: control,
            services: services,
            heartbeatInterval: interval,
            heartbeatTimeout: timeout,
            connectTimeout: connect,
            reconnectInitialDelay: initial,
            reconnectMaxDelay: maximum,
            drainTimeout: drain,
            metrics: metrics,
            tcp: tcp,
            halfCloseTimeout: halfClose,
            removedServiceSessions: removedRule,
            dataPlane: dataPlane,
            maxSessions: maxSessions,
            sessionIdleTimeout: idle
        )
        config.tls = tls
        return config
    }

    /// The service named `name`.
    public func service(named name: String) -> Service? {
        self.services.first { $0.name == name }
    }
}
