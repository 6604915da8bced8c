import FoundationEssentials
import Logging
import NIOCore
import RelayControl
import RelayProtocol
import ServiceLifecycle
import Synchronization

/// A live session as the shared daemon code sees it: both daemons' sessions answer alike.
public protocol DaemonSession: AnyObject, Sendable {
    /// The session's id.
    var id: String { get }
    /// The service it belongs to.
    var service: String { get }
    /// The client's address.
    var client: String { get }
    /// When it started.
    var startedAt: Date { get }
    /// Feeds an event to the session's state machine.
    @discardableResult func handle(_ event: SessionStateMachine.Event) -> [SessionStateMachine.Action]
}

/// What both daemons' servers share about their life: when they started and loaded their
/// config, the one reload path, and the helper tasks that keep the supervisor informed (reloads,
/// SIGHUP, the STATUS line, the watchdog) and that begin a graceful shutdown.
public final class DaemonLife: Sendable {
    /// How often the STATUS line is recomputed (it is sent only when it changed).
    public static let statusInterval = Duration.seconds(1)

    /// The config file the daemon reads (again at each reload).
    public let configPath: String
    /// When the daemon started.
    public let startedAt = Date()
    /// When the config in force was loaded.
    public let loadedAt = Mutex(Date())
    /// Every limit the daemon enforces: maxima, hits, rate-limited logging (`status`'s `limits`).
    public let limits = LimitCounters()
    private let hooks: DaemonHooks
    private let logger: Logger
    private let reloads: ReloadCoordinator

    /// The life of `daemon` ("relay-proxy"), reading `configPath`, reported through `hooks`.
    public init(daemon: String, configPath: String, hooks: DaemonHooks, logger: Logger) {
        self.configPath = configPath
        self.hooks = hooks
        self.logger = logger
        self.reloads = ReloadCoordinator(daemon: daemon)
    }

    /// Re-reads the config file and applies it without dropping live sessions; keeps the
    /// old config when the new one is invalid. SIGHUP, systemd and relayctl all come here.
    public func reload() async -> ReloadOutcome {
        await self.reloads.reload()
    }

    /// Reads the config file again for a reload with `load`: the new config, with its control
    /// socket (`control`) kept as in `old` (it changes only at a restart, which the changes say),
    /// or, when it is invalid, the refused outcome naming every problem.
    public func reread<Config>(
        with load: (String) throws(ConfigError) -> Config, keeping control: WritableKeyPath<Config, String>,
        of old: Config
    ) -> Result<(config: Config, changes: [String]), RereadRefused> {
        var new: Config
        do {
            new = try load(self.configPath)
        } catch {
            return .failure(
                RereadRefused(outcome: ReloadOutcome(applied: false, problems: error.problems.map(\.description))))
        }
        var changes: [String] = []
        if new[keyPath: control] != old[keyPath: control] {
            changes.append("control socket stays \(old[keyPath: control]) until a restart")
            new[keyPath: control] = old[keyPath: control]
        }
        return .success((new, changes))
    }

    /// Adds the helper tasks to `group`: serving reloads with `apply` (the daemon's own work),
    /// SIGHUP, the STATUS line `statusLine` whenever it changes, and the watchdog over
    /// `eventLoops` when one is enabled. They run until the group is cancelled.
    public func addHelpers(
        to group: inout DiscardingTaskGroup,
        eventLoops: any EventLoopGroup,
        apply: @escaping @Sendable () async -> ReloadOutcome,
        statusLine: @escaping @Sendable () -> String
    ) {
        group.addTask { await self.serveReloads(apply: apply) }
        group.addTask { await self.reloads.reloadOnSIGHUP(logger: self.logger) }
        group.addTask { await self.reportStatus(statusLine) }
        if let interval = self.hooks.watchdogInterval {
            group.addTask {
                await EventLoopWatchdog.run(group: eventLoops, interval: interval, alive: self.hooks.alive)
            }
        }
    }

    /// Waits for graceful shutdown (SIGTERM), then reports STOPPING and refuses further
    /// reloads. Returns whether the shutdown was graceful (false: the task was cancelled).
    public func waitForShutdown() async -> Bool {
        let graceful = (try? await gracefulShutdown()) != nil
        self.hooks.stopping()
        self.reloads.finish()
        return graceful
    }

    /// A config that ``reread(with:keeping:of:)`` refused.
    public struct RereadRefused: Error {
        /// The refused outcome, with every problem.
        public let outcome: ReloadOutcome
    }

    /// The end of a graceful shutdown: stops every session in `sessions()`, gives them `timeout`
    /// to drain (`waitForNoSessions`) when the shutdown was graceful and `live` were there, then
    /// closes those still live.
    public func drain<Session: DaemonSession>(
        _ sessions: () -> [Session], live: Int, graceful: Bool, timeout: Duration,
        waitForNoSessions: (Duration) async -> Bool
    ) async {
        for session in sessions() { session.handle(.stop) }
        if graceful, live > 0, await waitForNoSessions(timeout) {
            self.logger.info("all sessions drained")
        }
        let left = sessions()
        for session in left {
            self.logger.warning("closing a session still live at shutdown", metadata: ["session": "\(session.id)"])
            session.handle(.drainDeadlinePassed)
        }
        // Their ends are logged, and they are forgotten, on tasks of their own: let those run.
        if !left.isEmpty { _ = await waitForNoSessions(Self.closeWait) }
    }

    /// How long a stop waits, past the drain timeout, for the sessions it closed to be
    /// logged and forgotten.
    public static let closeWait = Duration.seconds(2)

    private func serveReloads(apply: () async -> ReloadOutcome) async {
        await self.reloads.serve(hooks: self.hooks, logger: self.logger) {
            let outcome = await apply()
            if outcome.applied { self.loadedAt.withLock { $0 = Date() } }
            return outcome
        }
    }

    /// Sends the STATUS line whenever it changes.
    private func reportStatus(_ statusLine: () -> String) async {
        var last = ""
        repeat {
            let line = statusLine()
            if line != last {
                self.hooks.status(line)
                last = line
            }
        } while (try? await Task.sleep(for: Self.statusInterval)) != nil
    }
}
