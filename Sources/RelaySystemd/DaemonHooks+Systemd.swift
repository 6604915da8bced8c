import RelayControl
import RelayCore

extension DaemonHooks {
    /// Hooks that tell systemd about the daemon's life through sd_notify(3): READY=1,
    /// RELOADING=1 then READY=1 (with the outcome in STATUS when a reload is refused),
    /// STOPPING=1, STATUS= lines, and WATCHDOG=1 at half the watchdog interval when the
    /// watchdog is enabled. Outside systemd they do nothing.
    public static func systemd() -> DaemonHooks {
        DaemonHooks(
            ready: { Systemd.notify("READY=1") },
            reloading: { Systemd.notifyReloading() },
            reloaded: { outcome in
                if outcome.applied {
                    Systemd.notify("READY=1")
                } else {
                    let reason = outcome.problems.first ?? "invalid config"
                    Systemd.notify("READY=1\nSTATUS=reload refused, old config kept: \(reason)")
                }
            },
            stopping: { Systemd.notify("STOPPING=1") },
            status: { line in Systemd.notify("STATUS=\(line)") },
            alive: { Systemd.notify("WATCHDOG=1") },
            watchdogInterval: Systemd.watchdogInterval().map { $0 / 2 }
        )
    }
}
