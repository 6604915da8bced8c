import Foundation
import NIOCore
import NIOPosix

/// A relay-proxy and its relay-agents as real processes with configs in a temporary
/// directory, all on loopback with OS-chosen ports learnt from the daemons' logs.
final class RelayFixture {
    struct Agent {
        var id: String
        var secret: String
    }

    struct Service {
        var name: String
        var agent: String
    }

    let directory: String
    /// The loopback address every listener binds: `127.0.0.1` or `::1`.
    let host: String
    /// How agents name the relay (an address literal, or a host name such as `localhost`).
    var relayHost: String
    var agents: [Agent]
    var services: [Service]
    var proxyOptions: [String: Any]
    /// Keys added to a service's object in the proxy's config (e.g. `allow`, `deny`), by name.
    var serviceOptions: [String: [String: Any]] = [:]
    /// A command the agents are started through (an absolute path and its arguments, with
    /// the agent's command line appended), e.g. to run them in a namespace of their own.
    var agentWrapper: [String] = []
    /// Environment variables of the proxy processes started after it is set (for example
    /// `CREDENTIALS_DIRECTORY`).
    var proxyEnvironment: [String: String] = [:]
    private(set) var proxy: DaemonProcess!
    private(set) var agentPort = 0
    private(set) var servicePorts: [String: Int] = [:]
    private(set) var agentProcesses: [String: DaemonProcess] = [:]
    private var proxyGeneration = 0
    /// Every daemon this fixture started, in order, stopped at ``shutdown()``.
    private var started: [DaemonProcess] = []
    /// The ports the running proxy's config names (0 where the OS chose), so that a config
    /// rewritten for a reload changes only what the test changed.
    private var configuredPorts: (agent: Int, services: [String: Int]) = (0, [:])

    init(agents: [Agent], services: [Service], proxyOptions: [String: Any] = [:], host: String = "127.0.0.1") throws {
        self.host = host
        self.relayHost = host
        self.directory = NSTemporaryDirectory() + "relay-test-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        self.agents = agents
        self.services = services
        self.proxyOptions = proxyOptions
    }

    /// Writes the proxy's config (ports learnt before are kept, so a restart reuses them) and
    /// starts it; returns once it logged that it is ready.
    @discardableResult
    func startProxy() async throws -> DaemonProcess {
        self.proxyGeneration += 1
        self.configuredPorts = (self.agentPort, self.servicePorts)
        let path = try self.writeProxyConfig()
        let proxy = try DaemonProcess(
            "relay-proxy", arguments: ["--config", path], name: "proxy\(self.proxyGeneration)",
            environment: self.proxyEnvironment)
        self.proxy = proxy
        self.started.append(proxy)
        try await proxy.waitForLine(containing: "relay-proxy ready")
        for line in proxy.lines(containing: "listening") {
            let port = Self.port(in: line)
            if line.contains("role=agents") {
                self.agentPort = port
            } else if let name = Self.field("service", in: line) {
                self.servicePorts[name] = port
            }
        }
        return proxy
    }

    /// Writes the proxy's config from `agents`, `services` and `proxyOptions` (ports learnt
    /// before are kept; a new service listens on port 0); returns its path. A test changes
    /// those properties and calls this before a reload.
    @discardableResult
    func writeProxyConfig() throws -> String {
        var config: [String: Any] = [
            "listen": Self.address(self.host, self.configuredPorts.agent),
            "control": self.proxySocket,
            "agents": self.agents.map { ["id": $0.id, "secret": $0.secret] },
            "services": self.services.map {
                // `agents` in the service's options replaces `agent`.
                let options = self.serviceOptions[$0.name] ?? [:]
                return [
                    "name": $0.name, "agent": $0.agent,
                    "listen": Self.address(self.host, self.configuredPorts.services[$0.name] ?? 0),
                ].merging(options) { _, new in new }.filter { $0.key != "agent" || options["agents"] == nil }
            },
        ]
        config.merge(self.proxyOptions) { _, new in new }
        return try self.write(config, to: "proxy.json")
    }

    /// The proxy's control socket.
    var proxySocket: String { self.directory + "/proxy.sock" }

    /// The control socket of the agent `id` (its first live process).
    func agentSocket(_ id: String) -> String { self.directory + "/agent-\(id).sock" }

    /// Writes the config of agent `id` and returns its path; ``startAgent`` uses it, and a
    /// test calls it again before reloading the agent.
    @discardableResult
    func writeAgentConfig(
        id: String,
        secret: String? = nil,
        services: [String: Int],
        options: [String: Any] = [:],
        targetHost: String = "127.0.0.1",
        control: String? = nil
    ) throws -> String {
        let secret = secret ?? self.agents.first { $0.id == id }?.secret ?? "unknown-agent-secret-0123456789"
        var config: [String: Any] = [
            "relay": Self.address(self.relayHost, self.agentPort),
            "id": id,
            "secret": secret,
            "control": control ?? self.agentSocket(id),
            "services": services.keys.sorted().map { ["name": $0, "target": Self.address(targetHost, services[$0]!)] },
            "reconnectInitialDelaySeconds": 0.2,
            "reconnectMaxDelaySeconds": 1.0,
        ]
        config.merge(options) { _, new in new }
        // `relays` in the options replaces `relay`; `secretFile` or `secretCredential`, `secret`.
        if options["relays"] != nil { config["relay"] = nil }
        if options["secretFile"] != nil || options["secretCredential"] != nil { config["secret"] = nil }
        return try self.write(config, to: "agent-\(id).json")
    }

    /// Starts an agent serving `services` (name → target port); by default waits until it registered.
    @discardableResult
    func startAgent(
        id: String,
        secret: String? = nil,
        services: [String: Int],
        options: [String: Any] = [:],
        targetHost: String = "127.0.0.1",
        waitForRegistration: Bool = true,
        environment: [String: String] = [:]
    ) async throws -> DaemonProcess {
        // A second live process with the same id (a takeover test) needs its own socket.
        let control = self.directory + "/agent-\(id)\(self.agentProcesses[id]?.isRunning == true ? "-2" : "").sock"
        let path = try self.writeAgentConfig(
            id: id, secret: secret, services: services, options: options, targetHost: targetHost, control: control)
        let agent =
            self.agentWrapper.isEmpty
            ? try DaemonProcess(
                "relay-agent", arguments: ["--config", path], name: "agent-\(id)", environment: environment)
            : try DaemonProcess(
                self.agentWrapper[0],
                arguments: self.agentWrapper.dropFirst() + [Binaries.path("relay-agent"), "--config", path],
                name: "agent-\(id)")
        self.agentProcesses[id] = agent
        self.started.append(agent)
        if waitForRegistration {
            try await agent.waitForLine(containing: "registered with relay")
        }
        return agent
    }

    /// The port of service `name`, as the proxy last logged it (a reload may add or move one).
    func servicePort(_ name: String) -> Int {
        if let line = self.proxy.lines(containing: "listening").last(where: { Self.field("service", in: $0) == name }) {
            return Self.port(in: line)
        }
        return self.servicePorts[name]!
    }

    /// Stops every daemon and removes the directory.
    func shutdown() async {
        // Every process started, not only the latest of each name: one left running would go
        // on dialling a port that a later test's listener may reuse.
        for process in self.started.reversed() { await process.stop() }
        try? FileManager.default.removeItem(atPath: self.directory)
    }

    func write(_ object: Any, to name: String) throws -> String {
        let path = self.directory + "/" + name
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    /// `host:port`, with brackets around an IPv6 host.
    static func address(_ host: String, _ port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    static func port(in line: String) -> Int {
        guard let address = field("address", in: line), let colon = address.lastIndex(of: ":") else { return 0 }
        return Int(address[address.index(after: colon)...]) ?? 0
    }

    static func field(_ key: String, in line: String) -> String? {
        for part in line.split(separator: " ") where part.hasPrefix(key + "=") {
            return String(part.dropFirst(key.count + 1))
        }
        return nil
    }
}

/// Runs `body` with a fixture and always shuts it down, also when the body throws.
func withFixture<T>(
    agents: [RelayFixture.Agent],
    services: [RelayFixture.Service],
    proxyOptions: [String: Any] = [:],
    host: String = "127.0.0.1",
    _ body: (RelayFixture) async throws -> T
) async throws -> T {
    let fixture = try RelayFixture(agents: agents, services: services, proxyOptions: proxyOptions, host: host)
    do {
        let result = try await body(fixture)
        await fixture.shutdown()
        return result
    } catch {
        await fixture.shutdown()
        throw error
    }
}
