import ArgumentParser
import FoundationEssentials
import RelayControl
import RelaySupport

/// relayctl: inspect and control relay-proxy and relay-agent. See relayctl(1).
@main
struct RelayCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relayctl",
        abstract: "Inspect and control relay-proxy and relay-agent over their control sockets.",
        discussion: """
            Without --socket, relayctl talks to /run/relay/proxy.sock if it exists, else to \
            /run/relay/agent.sock. Exit status: 0 success, 1 failure, 3 daemon not running, \
            4 permission denied, 5 timeout, 6 no such session/service/agent, 7 reload refused, \
            8 request rejected, 9 unexpected answer, 64 usage error (see relayctl(1)).
            """,
        version: "relayctl \(RelayVersion.current)",
        subcommands: [
            StatusCommand.self, AgentsCommand.self, ServicesCommand.self, SessionsCommand.self,
            SessionCommand.self, KillCommand.self, ReloadCommand.self, MetricsCommand.self,
        ]
    )

    @OptionGroup var options: GlobalOptions
}

/// The options every command takes, before or after the command's name.
struct GlobalOptions: ParsableArguments {
    @Option(
        name: .long, help: ArgumentHelp("The daemon's control socket.", valueName: "path"),
        completion: .file())
    var socket: String?

    @Flag(name: .long, help: "Print one JSON document (stable keys, see relayctl(1)) instead of text.")
    var json = false

    @Option(
        name: .long, help: ArgumentHelp("How long to wait for the daemon's answer, in seconds.", valueName: "seconds"))
    var timeout: Double = 5

    func validate() throws {
        guard self.timeout > 0, self.timeout <= 3600 else {
            throw ValidationError("--timeout must be between 0 and 3600 seconds")
        }
    }

    var client: ControlClient { ControlClient(path: ControlClient.resolve(self.socket), timeout: self.timeout) }
}

/// What every command shares: one request, then printing, with failures as one stderr line and an exit status.
protocol ControlCommand: ParsableCommand {
    var options: GlobalOptions { get }
    /// Does the command's work; throws ``CtlError`` for a failure.
    func perform(_ output: Output) throws(CtlError)
}

extension ControlCommand {
    func run() throws {
        let output = Output(json: self.options.json)
        do {
            try self.perform(output)
        } catch {
            output.fail(error.message)
            throw ExitCode(error.status)
        }
    }

    /// Sends `command` and returns its result, or throws the daemon's failure as a ``CtlError``.
    func request<Result: Decodable>(_ command: String, args: [String: String]? = nil, as type: Result.Type)
        throws(CtlError) -> Result
    {
        let client = self.options.client
        let (ok, result, reported) = try client.call(command, args: args, as: type)
        if ok, let result { return result }
        let failure = reported ?? ControlFailure(.internal, "failed without a reason")
        let status: Int32
        switch failure.code {
        case .unknownSession, .unknownService, .unknownAgent: status = ExitStatus.notFound
        case .reloadRefused: status = ExitStatus.reloadRefused
        case .unknownCommand, .badRequest, .badJSON, .lineTooLong: status = ExitStatus.rejected
        case .internal: status = ExitStatus.failure
        }
        throw CtlError("\(client.daemonName) (\(client.path)): \(failure.message)", status: status)
    }
}

struct StatusCommand: ControlCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "The daemon's role, uptime, config, connections, services and sessions.")
    @OptionGroup var options: GlobalOptions

    func perform(_ output: Output) throws(CtlError) {
        let report = try self.request("status", as: StatusReport.self)
        if !output.json(report) { output.text(HumanReport.status(report, colour: output.colour)) }
    }
}

struct AgentsCommand: ControlCommand {
    static let configuration = CommandConfiguration(
        commandName: "agents", abstract: "relay-proxy: each agent, its address, uptime, heartbeat, services, sessions.")
    @OptionGroup var options: GlobalOptions

    func perform(_ output: Output) throws(CtlError) {
        let agents = try self.request("agents", as: [AgentReport].self)
        if !output.json(agents) { output.text(HumanReport.agents(agents, colour: output.colour)) }
    }
}

struct ServicesCommand: ControlCommand {
    static let configuration = CommandConfiguration(
        commandName: "services", abstract: "Each service: listener or target, agent, up or down, sessions, bytes.")
    @OptionGroup var options: GlobalOptions

    func perform(_ output: Output) throws(CtlError) {
        let services = try self.request("services", as: [ServiceReport].self)
        if !output.json(services) { output.text(HumanReport.services(services, colour: output.colour)) }
    }
}

struct SessionsCommand: ControlCommand {
    static let configuration = CommandConfiguration(
        commandName: "sessions", abstract: "Live sessions: id, service, client, state, bytes in and out, age.")
    @OptionGroup var options: GlobalOptions

    @Option(help: ArgumentHelp("Only the sessions of this service.", valueName: "name"))
    var service: String?

    @Option(help: ArgumentHelp("Only the sessions through this agent (relay-proxy).", valueName: "id"))
    var agent: String?

    func perform(_ output: Output) throws(CtlError) {
        var args: [String: String] = [:]
        args["service"] = self.service
        args["agent"] = self.agent
        let sessions = try self.request("sessions", args: args.isEmpty ? nil : args, as: [SessionReport].self)
        if !output.json(sessions) { output.text(HumanReport.sessions(sessions)) }
    }
}

struct SessionCommand: ControlCommand {
    static let configuration = CommandConfiguration(
        commandName: "session", abstract: "Everything known about one session.")
    @OptionGroup var options: GlobalOptions

    @Argument(help: ArgumentHelp("The session id (12 hex digits, from 'relayctl sessions').", valueName: "id"))
    var id: String

    func perform(_ output: Output) throws(CtlError) {
        let session = try self.request("session", args: ["id": self.id], as: SessionReport.self)
        if !output.json(session) { output.text(HumanReport.session(session)) }
    }
}

struct KillCommand: ControlCommand {
    static let configuration = CommandConfiguration(
        commandName: "kill", abstract: "End a session now: both sides are reset and closed.")
    @OptionGroup var options: GlobalOptions

    @Argument(help: ArgumentHelp("The session id.", valueName: "id"))
    var id: String

    func perform(_ output: Output) throws(CtlError) {
        let killed = try self.request("kill", args: ["id": self.id], as: KillReport.self)
        if !output.json(killed) {
            output.text("session \(HumanReport.safe(killed.id)) killed (was \(HumanReport.safe(killed.state)))")
        }
    }
}

struct ReloadCommand: ControlCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload", abstract: "Re-read the daemon's config (as SIGHUP does); print what changed.")
    @OptionGroup var options: GlobalOptions

    func perform(_ output: Output) throws(CtlError) {
        let client = self.options.client
        let (ok, outcome, failure) = try client.call("reload", as: ReloadOutcome.self)
        if let outcome { output.json(outcome) }
        if ok, let outcome {
            if !output.isJSON { output.text(HumanReport.reload(outcome)) }
            return
        }
        let problems = outcome?.problems.joined(separator: "; ") ?? failure?.message ?? "no reason given"
        let status = failure?.code == .reloadRefused ? ExitStatus.reloadRefused : ExitStatus.failure
        throw CtlError(
            "\(client.daemonName) (\(client.path)) refused the reload and keeps its old config: \(problems)",
            status: status)
    }
}

struct MetricsCommand: ControlCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics", abstract: "The daemon's metrics in the Prometheus text format.")
    @OptionGroup var options: GlobalOptions

    func perform(_ output: Output) throws(CtlError) {
        let metrics = try self.request("metrics", as: MetricsReport.self)
        if !output.json(metrics) { output.raw(metrics.text) }
    }
}
