import ArgumentParser
import FoundationEssentials
import Logging
import RelayAgent
import RelayCore
import RelayMetrics
import RelaySupport
import RelaySystemd
import ServiceLifecycle
import UnixSignals

/// relay-agent: the inside end of a reverse tunnel. See relay-agent(8).
@main
struct RelayAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay-agent",
        abstract: "Carry clients of relay-proxy to TCP servers behind a firewall or NAT.",
        version: "relay-agent \(RelayVersion.current)"
    )

    @Option(help: "The config file.")
    var config: String = AgentConfig.defaultPath

    @Flag(help: "Validate the config, print every problem with its JSON path, and exit (1 if invalid).")
    var checkConfig = false

    @Flag(
        help: """
            Exit 1, naming each one, if the config still holds a shipped CHANGE-ME placeholder; \
            else exit 0. Checks nothing else (the packaged unit's ExecCondition=).
            """)
    var checkPlaceholders = false

    @Option(help: "Least severe log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func run() async throws {
        if self.checkPlaceholders {
            guard DaemonSupport.reportPlaceholders(path: self.config, package: "relay-agent") else { throw ExitCode(1) }
            return
        }
        if self.checkConfig {
            do {
                let config = try AgentConfig.load(path: self.config)
                print(
                    "\(self.config): OK (agent \(config.id), relay \(config.relay), \(config.services.count) services)")
                return
            } catch {
                DaemonSupport.printProblems(error)
                throw ExitCode(1)
            }
        }
        let level: Logger.Level
        do {
            level = try DaemonSupport.bootstrap(logLevel: self.logLevel)
        } catch {
            StandardStream.error.write("relay-agent: \(error)\n")
            throw ExitCode(1)
        }
        var logger = Logger(label: "relay-agent")
        logger.logLevel = level
        do {
            let config = try AgentConfig.load(path: self.config)
            let metrics = RelayMetrics.bootstrap()
            let server = AgentServer(
                config: config, configPath: self.config, logger: logger,
                hooks: DaemonHooks.systemd().countingReloads(role: "agent"))
            let commands = AgentControlCommands(server: server, metrics: metrics)
            // The control socket (and the metrics endpoint) are up before the server reports readiness.
            let services = try await DaemonSupport.bindControlServices(
                control: config.control, metrics: config.metrics, logger: logger,
                handler: commands.handle, renderMetrics: commands.renderMetrics)
            var quiet = logger
            quiet.logLevel = .warning
            try await ServiceGroup(
                services: services + [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: quiet
            ).run()
        } catch {
            logger.critical("relay-agent cannot run: \(error)")
            throw ExitCode(1)
        }
    }
}
