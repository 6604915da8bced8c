import Synchronization

/// A signal that something a test may be waiting for has changed (a log line arrived, a
/// process exited, a connection closed): waiters re-check their condition at each change
/// instead of polling on a timer.
final class Changes: Sendable {
    private let version = Atomic<UInt64>(0)
    private let nextWaiter = Atomic<UInt64>(0)
    private let waiters = Mutex<[UInt64: CheckedContinuation<Void, Never>]>([:])

    /// Wakes every waiter.
    func notify() {
        let woken = self.waiters.withLock { waiters in
            self.version.add(1, ordering: .sequentiallyConsistent)
            defer { waiters = [:] }
            return Array(waiters.values)
        }
        for waiter in woken { waiter.resume() }
    }

    /// Returns the first non-nil value of `condition`, checked now and after every change,
    /// or nil once `timeout` has passed without one.
    func wait<T>(timeout: Duration, until condition: () throws -> T?) async rethrows -> T? {
        let deadline = ContinuousClock.now + timeout
        while true {
            let seen = self.version.load(ordering: .sequentiallyConsistent)
            if let value = try condition() { return value }
            guard ContinuousClock.now < deadline else { return nil }
            await self.change(after: seen, deadline: deadline)
        }
    }

    /// Suspends until a change after version `seen`, or until `deadline`.
    private func change(after seen: UInt64, deadline: ContinuousClock.Instant) async {
        let id = self.nextWaiter.add(1, ordering: .relaxed).newValue
        let timer = Task {
            guard (try? await Task.sleep(until: deadline)) != nil else { return }
            self.waiters.withLock { $0.removeValue(forKey: id) }?.resume()
        }
        await withCheckedContinuation { continuation in
            let changed = self.waiters.withLock { waiters in
                if self.version.load(ordering: .sequentiallyConsistent) != seen { return true }
                waiters[id] = continuation
                return false
            }
            if changed { continuation.resume() }
        }
        timer.cancel()
    }
}
