import NIOCore

/// Proves every event loop is alive: each round submits a no-op to every loop of the group
/// and reports ``DaemonHooks/alive`` only if all of them ran it within the round. A stuck
/// loop stops the reports, so the supervisor's watchdog fires and restarts the daemon.
public enum EventLoopWatchdog {
    /// Runs until cancelled, one round every `interval`.
    public static func run(group: any EventLoopGroup, interval: Duration, alive: @Sendable () -> Void) async {
        while (try? await Task.sleep(for: interval)) != nil {
            let probes = group.makeIterator().map { loop in loop.submit {} }
            let allAnswered = await withTaskGroup(of: Bool.self) { round in
                round.addTask {
                    for probe in probes { _ = try? await probe.get() }
                    return true
                }
                round.addTask {
                    try? await Task.sleep(for: interval)
                    return false
                }
                let first = await round.next() ?? false
                round.cancelAll()
                return first
            }
            if allAnswered { alive() }
        }
    }
}
