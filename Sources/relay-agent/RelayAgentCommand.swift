import ArgumentParser
import Logging
import RelayAgent
import RelayCore
import RelayDaemon
import RelayMetrics
import RelaySupport
import RelaySystemd

/// relay-agent: the inside end of a reverse tunnel. See relay-agent(8).
@main
struct RelayAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay-agent",
        abstract: "Carry clients of relay-proxy to TCP servers behind a firewall or NAT.",
        version: "relay-agent \(RelayVersion.current)"
    )

    @OptionGroup var options: DaemonOptions<AgentDaemon>

    func run() async throws {
        try await self.options.run()
    }
}

/// The agent's part of the shared start-up.
enum AgentDaemon: DaemonDefinition {
    static let name = "relay-agent"
    static let role = "agent"
    static let defaultConfigPath = AgentConfig.defaultPath

    static func load(path: String) throws(ConfigError) -> AgentConfig {
        try AgentConfig.load(path: path)
    }

    static func summary(_ config: AgentConfig) -> String {
        "agent \(config.id), relay \(config.relay), \(config.services.count) services"
    }

    static func control(_ config: AgentConfig) -> String { config.control }

    static func metrics(_ config: AgentConfig) -> HostPort? { config.metrics }

    static func start(
        config: AgentConfig, configPath: String, logger: Logger, hooks: DaemonHooks, metrics: MetricsRegistry
    ) throws -> DaemonParts {
        let passed = try Systemd.passedDescriptors()
        let server = AgentServer(
            config: config, configPath: configPath, logger: logger, hooks: hooks,
            handover: Handover.systemd(inherited: passed.handedOver))
        let commands = AgentControlCommands(server: server, metrics: metrics)
        return DaemonParts(
            server: server, handler: commands.handle, renderMetrics: commands.renderMetrics, limits: server.limits)
    }
}
