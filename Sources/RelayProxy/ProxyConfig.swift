import FoundationEssentials
import RelayCore
import RelayProtocol

/// The relay's configuration (`/etc/relay/proxy.json`), fully validated; see relay-proxy.json(5).
public struct ProxyConfig: Sendable, DaemonSettings {
    /// One agent allowed to connect.
    public struct Agent: Sendable {
        /// The agent id it presents in `hello`.
        public var id: String
        /// Its shared secret.
        public var secret: Secret
    }

    /// One service: a public listener whose clients are carried to an agent.
    public struct Service: Sendable {
        /// The service name (the connection ID of the patent).
        public var name: String
        /// The agents that serve it (`agent`, or `agents` for several: high availability,
        /// docs/high-availability.md), in the config's order; never empty.
        public var agents: [String]
        /// The first of ``agents`` (the only one, with `agent`).
        public var agent: String { self.agents[0] }
        /// Where its clients connect.
        public var listen: HostPort
        /// Which clients may connect (`allow`, `deny`); see ``AccessRules``.
        public var access = AccessRules()
        /// The sources whose connections start with a PROXY header giving the client's
        /// address (`acceptProxyProtocol`); empty: none.
        public var acceptProxyProtocol: [AddressRange] = []
    }

    /// The default config file.
    public static let defaultPath = "/etc/relay/proxy.json"
    /// The default control socket for relayctl.
    public static let defaultControlSocket = "/run/relay/proxy.sock"

    /// The agent port, for control and data channels.
    public var listen: HostPort
    /// The Unix socket relayctl talks to.
    public var control: String
    /// The agents allowed to connect.
    public var agents: [Agent]
    /// The services carried.
    public var services: [Service]
    /// How often the relay pings each agent (`heartbeatIntervalSeconds`, default 10).
    public var heartbeatInterval: Double
    /// How long an agent may stay silent before it is dropped (`heartbeatTimeoutSeconds`, default 30).
    public var heartbeatTimeout: Double
    /// How long a new agent-port connection may take to authenticate and register, or to
    /// send its attach line (`handshakeTimeoutSeconds`, default 10).
    public var handshakeTimeout: Double
    /// How long a client waits for its agent's data channel (`attachTimeoutSeconds`, default 10).
    public var attachTimeout: Double
    /// How long live sessions may drain at shutdown (`drainTimeoutSeconds`, default 30).
    public var drainTimeout: Double
    /// Where to serve Prometheus metrics over HTTP at `/metrics` (`metrics`, default: not served).
    public var metrics: HostPort? = nil
    /// TCP keepalive and user timeout on every connection (`tcpKeepaliveSeconds`,
    /// `tcpUserTimeoutSeconds`).
    public var tcp = TCPTuning()
    /// How long a half-closed session may stay idle (`halfCloseTimeoutSeconds`, default 120; 0: no limit).
    public var halfCloseTimeout = PumpLimits.defaultHalfCloseTimeout

    /// How long after a reload that changes an agent's secret the relay still accepts the
    /// old one (`secretRotationGraceSeconds`, default 300; 0: the old secret is refused at
    /// once and the agent's control channel is closed at the reload).
    public var secretRotationGrace = Self.defaultSecretRotationGrace

    /// Default `secretRotationGraceSeconds`.
    public static let defaultSecretRotationGrace = 300.0

    /// What a reload does with the live sessions of a removed service (`removedServiceSessions`).
    public var removedServiceSessions = RemovedServiceRule.drain

    /// Where sessions' bytes move (`dataPlane`: "splice", the default, or "userspace");
    /// read at start, kept until a restart.
    public var dataPlane = DataPlaneKind.default

    /// The limits on what peers may hold (`max…` keys).
    public var limits = ProxyLimits()
    /// How long a session may move no byte either way (`sessionIdleTimeoutSeconds`, default
    /// 3600; 0: no limit).
    public var sessionIdleTimeout = PumpLimits.defaultSessionIdleTimeout
    /// TLS 1.3 on the agent port (`tls`: the relay's certificate and key, and `clientCA` for
    /// mutual TLS); nil: plaintext. A reload re-reads its files for the connections after it.
    public var tls: ProxyTLS? = nil

    /// The limits a session opened now runs with.
    public var pumpLimits: PumpLimits {
        PumpLimits(halfCloseTimeoutSeconds: self.halfCloseTimeout, idleTimeoutSeconds: self.sessionIdleTimeout)
    }

    /// The keys allowed at the top level.
    static let topLevelKeys: Set<String> = Set([
        "listen", "control", "agents", "services", "heartbeatIntervalSeconds", "heartbeatTimeoutSeconds",
        "handshakeTimeoutSeconds", "attachTimeoutSeconds", "drainTimeoutSeconds", "metrics",
    ])
    .union(ConfigReader.tcpTuningKeys).union([
        "halfCloseTimeoutSeconds", "removedServiceSessions", "secretRotationGraceSeconds", "dataPlane", "tls",
    ]).union(ProxyLimits.keys)

    /// The keys a service object may hold.
    static let serviceKeys: Set<String> = [
        "name", "agent", "agents", "listen", "allow", "deny", "acceptProxyProtocol",
    ]

    /// The most agents one service may name in `agents`.
    public static let maxAgentsPerService = 16

    /// Reads and validates the file at `path`; the error lists every problem with its JSON path.
    public static func load(path: String) throws(ConfigError) -> ProxyConfig {
        let (reader, root) = try ConfigReader.load(path: path, package: "relay-proxy")
        let config = Self.read(root, reader: reader)
        try reader.finish(file: path)
        return config!
    }

    static func read(_ root: [String: JSONValue], reader: ConfigReader) -> ProxyConfig? {
        reader.rejectUnknownKeys(root, at: "$", allowed: Self.topLevelKeys)
        let listen = reader.address(root, "listen", at: "$")
        let control = reader.string(root, "control", at: "$", required: false) ?? Self.defaultControlSocket
        if control.isEmpty { reader.problem("$.control", "must not be empty") }

        var agents: [Agent] = []
        var agentPaths: [String: String] = [:]
        for (path, object) in reader.objects(root, "agents", at: "$") {
            reader.rejectUnknownKeys(object, at: path, allowed: ["id", "secret", "secretFile", "secretCredential"])
            let id = reader.name(object, "id", at: path)
            let secret = reader.secret(object, at: path)
            guard let id else { continue }
            if let first = agentPaths[id] {
                reader.problem("\(path).id", "duplicate agent id '\(id)' (first at \(first))")
                continue
            }
            // Known even when its secret is bad, so its services get no second, wrong problem.
            agentPaths[id] = path
            if let secret { agents.append(Agent(id: id, secret: secret)) }
        }

        var services: [Service] = []
        var servicePaths: [String: String] = [:]
        var listenPaths: [HostPort: String] = [:]
        if let listen, listen.port != 0 { listenPaths[listen] = "$.listen" }
        for (path, object) in reader.objects(root, "services", at: "$") {
            reader.rejectUnknownKeys(object, at: path, allowed: Self.serviceKeys)
            let access = AccessRules(
                allow: reader.addressRanges(object, "allow", at: path),
                deny: reader.addressRanges(object, "deny", at: path))
            let acceptProxyProtocol = reader.acceptProxyProtocol(object, at: path)
            let name = reader.name(object, "name", at: path)
            let named = reader.oneOrList(
                object, single: "agent", list: "agents", at: path, maxCount: Self.maxAgentsPerService
            ) { reader.name($0, at: $1) }
            let address = reader.address(object, "listen", at: path)
            var agents = named?.map(\.value)
            for (itemPath, agent) in named ?? [] where agentPaths[agent] == nil {
                reader.problem(itemPath, "unknown agent '\(agent)' (not in $.agents)")
                agents = nil
            }
            if let name, let first = servicePaths[name] {
                reader.problem("\(path).name", "duplicate service name '\(name)' (first at \(first))")
            }
            if let address, address.port != 0 {
                if let (used, first) = listenPaths.first(where: { Self.overlap($0.key, address) }) {
                    reader.problem("\(path).listen", "address \(address) overlaps \(used) at \(first)")
                } else {
                    listenPaths[address] = "\(path).listen"
                }
            }
            guard let name, let agents, let address, servicePaths[name] == nil else { continue }
            servicePaths[name] = path
            services.append(
                Service(
                    name: name, agents: agents, listen: address, access: access,
                    acceptProxyProtocol: acceptProxyProtocol))
        }

        let interval = reader.seconds(root, "heartbeatIntervalSeconds", at: "$", default: 10, range: 0.05...3600)
        let timeout = reader.seconds(root, "heartbeatTimeoutSeconds", at: "$", default: 30, range: 0.1...86400)
        if timeout <= interval {
            reader.problem("$.heartbeatTimeoutSeconds", "must be longer than heartbeatIntervalSeconds (\(interval))")
        }
        let handshake = reader.seconds(root, "handshakeTimeoutSeconds", at: "$", default: 10, range: 0.05...600)
        let attach = reader.seconds(root, "attachTimeoutSeconds", at: "$", default: 10, range: 0.05...600)
        let drain = reader.seconds(root, "drainTimeoutSeconds", at: "$", default: 30, range: 0...86400)
        let metrics = root["metrics"] == nil ? nil : reader.address(root, "metrics", at: "$")
        let tcp = reader.tcpTuning(root)
        let removedRule = reader.removedServiceRule(root)
        let grace = reader.seconds(
            root, "secretRotationGraceSeconds", at: "$", default: Self.defaultSecretRotationGrace, range: 0...604800)
        let halfClose = reader.halfCloseTimeout(root)
        let dataPlane = reader.dataPlane(root)
        let limits = ProxyLimits.read(root, reader: reader)
        let idle = reader.sessionIdleTimeout(root)
        let tls = reader.proxyTLS(root)

        guard let listen, reader.problems.isEmpty else { return nil }
        return ProxyConfig(
            listen: listen,
            control: control,
            agents: agents,
            services: services,
            heartbeatInterval: interval,
            heartbeatTimeout: timeout,
            handshakeTimeout: handshake,
            attachTimeout: attach,
            drainTimeout: drain,
            metrics: metrics,
            tcp: tcp,
            halfCloseTimeout: halfClose,
            secretRotationGrace: grace,
            removedServiceSessions: removedRule,
            dataPlane: dataPlane,
            limits: limits,
            sessionIdleTimeout: idle,
            tls: tls
        )
    }

    /// Whether two listen addresses would collide: the same port on the same host, or on
    /// any host when one of them is a wildcard (`0.0.0.0`, `::`).
    static func overlap(_ a: HostPort, _ b: HostPort) -> Bool {
        let wildcards: Set<String> = ["0.0.0.0", "::", "[::]"]
        return a.port == b.port && (a.host == b.host || wildcards.contains(a.host) || wildcards.contains(b.host))
    }

    /// The credentials the control channel checks an agent against.
    public func credentials(for agentID: String) -> AgentCredentials? {
        guard let agent = self.agents.first(where: { $0.id == agentID }) else { return nil }
        let names = self.services.filter { $0.agents.contains(agentID) }.map(\.name)
        return AgentCredentials(secret: agent.secret, services: Set(names))
    }

    /// The service named `name`.
    public func service(named name: String) -> Service? {
        self.services.first { $0.name == name }
    }
}
