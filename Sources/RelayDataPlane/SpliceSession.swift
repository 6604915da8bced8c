import Synchronization

/// The caller's handle on one spliced session: its counters, its outcome, and a way to end
/// it. Any thread may use it at any time; the session itself lives on its loop's thread.
public final class SpliceSession: Sendable {
    /// The session's number, unique in its plane (log lines, kill requests).
    public let id: UInt64
    /// The index of the loop the session runs on.
    public let loop: Int
    /// The meter given at start, told about every byte as it moves.
    public let meter: any SpliceMeter

    private let end = Mutex(End())
    private let onEnd: (@Sendable (SpliceOutcome) -> Void)?
    private let killer: @Sendable (UInt64, String) -> Void

    private struct End {
        var outcome: SpliceOutcome?
        var nextWaiter = 0
        var waiters: [Int: CheckedContinuation<SpliceOutcome?, Never>] = [:]
        var callbacks: [@Sendable (SpliceOutcome) -> Void] = []
    }

    init(
        id: UInt64, loop: Int, meter: any SpliceMeter, onEnd: (@Sendable (SpliceOutcome) -> Void)?,
        killer: @escaping @Sendable (UInt64, String) -> Void
    ) {
        self.id = id
        self.loop = loop
        self.meter = meter
        self.onEnd = onEnd
        self.killer = killer
    }

    /// How the session ended, or nil while it runs.
    public var endedWith: SpliceOutcome? { self.end.withLock { $0.outcome } }

    /// How the session ended; waits until it has. A session always ends: by its peers, by
    /// the half-close limit, or by ``kill(reason:)``.
    public var outcome: SpliceOutcome {
        get async {
            // A waiter without a time limit is only ever resumed with an outcome.
            await self.wait(timeout: nil)!
        }
    }

    /// How the session ended, or nil if it has not ended within `timeout`.
    public func outcome(timeout: Duration) async -> SpliceOutcome? {
        await self.wait(timeout: timeout)
    }

    /// Resets both sockets and ends the session with ``SpliceOutcome/aborted(reason:)``,
    /// unless it has already ended. Returns at once; the outcome follows from the loop.
    public func kill(reason: String = "killed") {
        guard self.endedWith == nil else { return }
        self.killer(self.id, reason)
    }

    /// Calls `body` once with the outcome: on the loop's thread when the session ends, or at
    /// once on the caller's if it has ended. No task waits meanwhile (an idle session costs
    /// no task's memory); `body` should be short, and hand longer work to a task.
    public func whenEnded(_ body: @escaping @Sendable (SpliceOutcome) -> Void) {
        let ended = self.end.withLock { end in
            if end.outcome == nil { end.callbacks.append(body) }
            return end.outcome
        }
        if let ended { body(ended) }
    }

    /// Records the outcome, resumes every waiter and calls every ``whenEnded(_:)`` body; the
    /// first call wins. Called on the loop.
    func resolve(_ outcome: SpliceOutcome) {
        let waiting = self.end.withLock {
            end -> ([CheckedContinuation<SpliceOutcome?, Never>], [@Sendable (SpliceOutcome) -> Void])? in
            guard end.outcome == nil else { return nil }
            end.outcome = outcome
            defer {
                end.waiters = [:]
                end.callbacks = []
            }
            return (Array(end.waiters.values), end.callbacks)
        }
        guard let (waiters, callbacks) = waiting else { return }
        for waiter in waiters { waiter.resume(returning: outcome) }
        for callback in callbacks { callback(outcome) }
        self.onEnd?(outcome)
    }

    private func wait(timeout: Duration?) async -> SpliceOutcome? {
        await withCheckedContinuation { continuation in
            let (id, ended) = self.end.withLock { end in
                end.nextWaiter += 1
                if end.outcome == nil { end.waiters[end.nextWaiter] = continuation }
                return (end.nextWaiter, end.outcome)
            }
            if let ended {
                continuation.resume(returning: ended)
            } else if let timeout {
                Task {
                    try? await Task.sleep(for: timeout)
                    self.end.withLock { $0.waiters.removeValue(forKey: id) }?.resume(returning: nil)
                }
            }
        }
    }
}
