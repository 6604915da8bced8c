import RelayControl

/// What a daemon reports about its life, for a supervisor: the executables connect these to
/// sd_notify(3) (READY=1, RELOADING=1, STOPPING=1, STATUS=, WATCHDOG=1); tests observe them.
public struct DaemonHooks: Sendable {
    /// Every listener is bound and the daemon serves (READY=1).
    public var ready: @Sendable () -> Void
    /// A reload has started (RELOADING=1).
    public var reloading: @Sendable () -> Void
    /// A reload has finished, applied or refused (READY=1 again).
    public var reloaded: @Sendable (ReloadOutcome) -> Void
    /// Graceful shutdown has started (STOPPING=1).
    public var stopping: @Sendable () -> Void
    /// A one-line status for people (STATUS=), sent when it changes.
    public var status: @Sendable (String) -> Void
    /// Every event loop answered in time (WATCHDOG=1).
    public var alive: @Sendable () -> Void
    /// How often ``alive`` should be reported, when a watchdog is enabled.
    public var watchdogInterval: Duration?

    /// Hooks that do nothing.
    public init(
        ready: @escaping @Sendable () -> Void = {},
        reloading: @escaping @Sendable () -> Void = {},
        reloaded: @escaping @Sendable (ReloadOutcome) -> Void = { _ in },
        stopping: @escaping @Sendable () -> Void = {},
        status: @escaping @Sendable (String) -> Void = { _ in },
        alive: @escaping @Sendable () -> Void = {},
        watchdogInterval: Duration? = nil
    ) {
        self.ready = ready
        self.reloading = reloading
        self.reloaded = reloaded
        self.stopping = stopping
        self.status = status
        self.alive = alive
        self.watchdogInterval = watchdogInterval
    }
}
