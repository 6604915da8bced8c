import Logging
import RelayControl
import UnixSignals

/// The one reload path of a daemon: SIGHUP, `systemctl reload` (which sends SIGHUP) and
/// `relayctl reload` all queue here, and reloads run one at a time in the order asked,
/// bracketed by the RELOADING/READY hooks and logged with their outcome.
public final class ReloadCoordinator: Sendable {
    private let daemon: String
    private let requests: AsyncStream<CheckedContinuation<ReloadOutcome, Never>>
    private let input: AsyncStream<CheckedContinuation<ReloadOutcome, Never>>.Continuation

    /// Creates the coordinator of `daemon` ("relay-proxy").
    public init(daemon: String) {
        self.daemon = daemon
        (self.requests, self.input) = AsyncStream.makeStream()
    }

    /// Asks for a reload and waits for its outcome.
    public func reload() async -> ReloadOutcome {
        await withCheckedContinuation { continuation in
            if case .terminated = self.input.yield(continuation) {
                continuation.resume(
                    returning: ReloadOutcome(applied: false, problems: ["\(self.daemon) is shutting down"]))
            }
        }
    }

    /// Serves reload requests until ``finish()``; `apply` does the daemon's own work.
    public func serve(hooks: DaemonHooks, logger: Logger, apply: () async -> ReloadOutcome) async {
        for await request in self.requests {
            hooks.reloading()
            let outcome = await apply()
            if outcome.applied {
                let changes = outcome.changes.isEmpty ? "none" : outcome.changes.joined(separator: "; ")
                logger.info("config reloaded", metadata: ["changes": "\(changes)"])
            } else {
                logger.error(
                    "config reload refused; the old config stays in force: \(outcome.problems.joined(separator: "; "))")
            }
            hooks.reloaded(outcome)
            request.resume(returning: outcome)
        }
    }

    /// Turns every SIGHUP into a reload, until the task is cancelled.
    public func reloadOnSIGHUP(logger: Logger) async {
        for await _ in await UnixSignalsSequence(trapping: .sighup) {
            logger.info("SIGHUP: reloading the config")
            _ = await self.reload()
        }
    }

    /// Refuses further reloads (shutdown has begun); queued ones still run.
    public func finish() {
        self.input.finish()
    }
}
