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

    func run() async throws {
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
        let adopted = Dictionary(
            grouping: try Systemd.listenedSockets(), by: \.name
        ).mapValues { $0.map(\.descriptor) }
        let server = ProxyServer(
            config: config, configPath: configPath, logger: logger, hooks: hooks, adopted: adopted)
        let commands = ProxyControlCommands(server: server, metrics: metrics)
        return DaemonParts(
            server: server, handler: commands.handle, renderMetrics: commands.renderMetrics, limits: server.limits)
    }
}
