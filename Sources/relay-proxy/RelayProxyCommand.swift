import ArgumentParser
import Logging
import RelayCore
import RelayDaemon
import RelayMetrics
import RelayProxy
import RelaySupport
import RelaySystemd

/// relay-proxy: the public relay of a reverse tunnel. See relay-proxy(8).
@main
struct RelayProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay-proxy",
        abstract: "Relay TCP clients to servers behind firewalls, through relay-agent.",
        version: "relay-proxy \(RelayVersion.current)"
    )

    @OptionGroup var options: DaemonOptions<ProxyDaemon>

    @Flag(
        name: .customLong("print-tls-pin"),
        help: """
            Print the pin of the agent port's TLS certificate (sha256// and the base64 of the SHA-256 \
            of its public key, curl's --pinnedpubkey form) for an agent's tls.pin, and exit.
            """)
    var printTLSPin = false

    func run() async throws {
        if self.printTLSPin {
            let path = self.options.configPath
            do {
                guard let tls = try ProxyConfig.load(path: path).tls else {
                    StandardStream.error.write("relay-proxy: \(path) has no 'tls': the agent port is plaintext\n")
                    throw ExitCode(1)
                }
                print(tls.pin)
                return
            } catch let error as ConfigError {
                DaemonSupport.printProblems(error)
                throw ExitCode(1)
            }
        }
        try await self.options.run()
    }
}

/// The relay's part of the shared start-up: it also adopts the sockets systemd passed.
enum ProxyDaemon: DaemonDefinition {
    static let name = "relay-proxy"
    static let role = "proxy"
    static let defaultConfigPath = ProxyConfig.defaultPath

    static func load(path: String) throws(ConfigError) -> ProxyConfig {
        try ProxyConfig.load(path: path)
    }

    static func summary(_ config: ProxyConfig) -> String {
        "\(config.agents.count) agents, \(config.services.count) services"
    }

    static func control(_ config: ProxyConfig) -> String { config.control }

    static func metrics(_ config: ProxyConfig) -> HostPort? { config.metrics }

    static func start(
        config: ProxyConfig, configPath: String, logger: Logger, hooks: DaemonHooks, metrics: MetricsRegistry
    ) throws -> DaemonParts {
        let passed = try Systemd.passedDescriptors()
        let adopted = Dictionary(grouping: passed.listeners, by: \.name).mapValues { $0.map(\.descriptor) }
        let server = ProxyServer(
            config: config, configPath: configPath, logger: logger, hooks: hooks, adopted: adopted,
            handover: Handover.systemd(inherited: passed.handedOver))
        let commands = ProxyControlCommands(server: server, metrics: metrics)
        return DaemonParts(
            server: server, handler: commands.handle, renderMetrics: commands.renderMetrics, limits: server.limits)
    }
}
