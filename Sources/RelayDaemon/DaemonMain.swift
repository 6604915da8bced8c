import ArgumentParser
import Logging
import RelayCore
import RelayMetrics
import RelaySupport
import RelaySystemd
import ServiceLifecycle
import UnixSignals

/// What one daemon brings to the start-up both executables share (``DaemonOptions``): its
/// name, its config, and how to make its server and control commands.
public protocol DaemonDefinition {
    /// The daemon's config.
    associatedtype Config: Sendable

    /// The executable's name ("relay-agent"): the logger's label, the package of its config.
    static var name: String { get }
    /// The daemon's role in metrics ("agent").
    static var role: String { get }
    /// The config file read when `--config` is not given.
    static var defaultConfigPath: String { get }
    /// Reads and validates the config at `path`.
    static func load(path: String) throws(ConfigError) -> Config
    /// What `--check-config` prints in brackets after "OK" about a valid config.
    static func summary(_ config: Config) -> String
    /// The control socket's path in `config`.
    static func control(_ config: Config) -> String
    /// The metrics endpoint in `config`, if any.
    static func metrics(_ config: Config) -> HostPort?
    /// Makes the daemon's server (run last in the service group) and its control commands.
    static func start(
        config: Config, configPath: String, logger: Logger, hooks: DaemonHooks, metrics: MetricsRegistry
    ) throws -> DaemonParts
}

/// A daemon's server and what answers on its control socket and metrics endpoint.
public struct DaemonParts {
    /// The daemon itself.
    public var server: any Service
    /// Answers relayctl's requests.
    public var handler: ControlSocketServer.Handler
    /// The metrics text.
    public var renderMetrics: @Sendable () -> String
    /// The daemon's limit counters, which the control socket and metrics endpoint count in too.
    public var limits: LimitCounters

    /// The parts of a daemon.
    public init(
        server: any Service, handler: @escaping ControlSocketServer.Handler,
        renderMetrics: @escaping @Sendable () -> String, limits: LimitCounters = LimitCounters()
    ) {
        self.server = server
        self.handler = handler
        self.renderMetrics = renderMetrics
        self.limits = limits
    }
}

/// Both daemons' command line: the options, `--check-config`, `--check-placeholders`, the log
/// setup, the systemd hooks, and the service group (control socket, metrics endpoint, daemon).
public struct DaemonOptions<Daemon: DaemonDefinition>: ParsableArguments {
    @Option(help: "The config file.")
    var config: String = Daemon.defaultConfigPath

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

    public init() {}

    /// The config file given (or the default).
    public var configPath: String { self.config }

    /// Runs the daemon (or the check asked for); exits 1 on any failure.
    public func run() async throws {
        if self.checkPlaceholders {
            guard DaemonSupport.reportPlaceholders(path: self.config, package: Daemon.name) else { throw ExitCode(1) }
            return
        }
        if self.checkConfig {
            do {
                let config = try Daemon.load(path: self.config)
                print("\(self.config): OK (\(Daemon.summary(config)))")
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
            StandardStream.error.write("\(Daemon.name): \(error)\n")
            throw ExitCode(1)
        }
        var logger = Logger(label: Daemon.name)
        logger.logLevel = level
        do {
            let config = try Daemon.load(path: self.config)
            let parts = try Daemon.start(
                config: config, configPath: self.config, logger: logger,
                hooks: DaemonHooks.systemd().countingReloads(role: Daemon.role), metrics: RelayMetrics.bootstrap())
            // The control socket (and the metrics endpoint) are up before the server reports readiness.
            let services = try await DaemonSupport.bindControlServices(
                control: Daemon.control(config), metrics: Daemon.metrics(config), logger: logger,
                limits: parts.limits, handler: parts.handler, renderMetrics: parts.renderMetrics)
            var quiet = logger
            quiet.logLevel = .warning
            try await ServiceGroup(
                services: services + [parts.server], gracefulShutdownSignals: [.sigterm, .sigint], logger: quiet
            ).run()
        } catch {
            logger.critical("\(Daemon.name) cannot run: \(error)")
            throw ExitCode(1)
        }
    }
}
