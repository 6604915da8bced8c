import RelayCore
import Synchronization

/// A one-shot event that tasks await, each wait with a time bound.
final class Flag: Sendable {
    private struct State {
        var raised = false
        var nextWaiter = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    var isRaised: Bool { self.state.withLock { $0.raised } }

    func raise() {
        let waiters = self.state.withLock { state in
            defer { state.waiters = [:] }
            state.raised = true
            return state.waiters
        }
        for waiter in waiters.values { waiter.resume() }
    }

    /// Waits until the flag is raised or the task is cancelled.
    func wait() async {
        let id = self.state.withLock { state in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let now = self.state.withLock { state in
                    if state.raised || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            self.state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }

    /// Waits at most `seconds`; whether the flag was raised.
    func wait(seconds: Double) async -> Bool {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.wait() }
            group.addTask { try? await Task.sleep(for: .seconds(seconds)) }
            await group.next()
            group.cancelAll()
        }
        return self.isRaised
    }
}

/// A meter's sink that lets a test await the pump having moved a number of bytes.
final class CountingSink: TrafficSink {
    private struct State {
        var forward = 0
        var backward = 0
        var forwardWatches: [(atLeast: Int, flag: Flag)] = []
    }

    private let state = Mutex(State())

    var forward: Int { self.state.withLock { $0.forward } }

    func add(_ bytes: Int, forward: Bool) {
        let due: [Flag] = self.state.withLock { state in
            guard forward else {
                state.backward += bytes
                return []
            }
            state.forward += bytes
            let total = state.forward
            let due = state.forwardWatches.filter { $0.atLeast <= total }.map(\.flag)
            state.forwardWatches.removeAll { $0.atLeast <= total }
            return due
        }
        for flag in due { flag.raise() }
    }

    /// Waits at most `seconds` for the pump to have moved `count` bytes forward in all.
    func waitForward(atLeast count: Int, seconds: Double) async -> Bool {
        let flag = Flag()
        let reached = self.state.withLock { state in
            if state.forward >= count { return true }
            state.forwardWatches.append((count, flag))
            return false
        }
        return reached ? true : await flag.wait(seconds: seconds)
    }
}

/// A byte count that one task updates and others read.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)

    var current: Int { self.value.load(ordering: .relaxed) }

    func set(_ value: Int) {
        self.value.store(value, ordering: .relaxed)
    }
}

enum Timing {
    /// Runs `operation`, giving up after `seconds` (cancelling it): nil on timeout. The
    /// operation must end when cancelled.
    static func withTimeout<T: Sendable>(
        _ seconds: Double, _ operation: @escaping @Sendable () async throws -> T
    ) async throws -> T? {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await operation() }
            group.addTask {
                try? await Task.sleep(for: .seconds(seconds))
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    /// Waits until `value` has been positive and unchanged for `quiet`, looking every 50 ms,
    /// for at most `timeout`; the settled value, or nil if it kept changing.
    static func settle(
        _ value: () -> Int, quiet: Duration = .milliseconds(500), timeout: Duration = .seconds(30)
    ) async -> Int? {
        let end = ContinuousClock.now + timeout
        var last = value()
        var since = ContinuousClock.now
        while ContinuousClock.now < end {
            try? await Task.sleep(for: .milliseconds(50))
            let now = value()
            if now != last || now == 0 {
                last = now
                since = .now
            } else if ContinuousClock.now - since >= quiet {
                return now
            }
        }
        return nil
    }

    /// Milliseconds since `start`, for figures.
    static func milliseconds(since start: ContinuousClock.Instant) -> Int {
        let elapsed = ContinuousClock.now - start
        return Int(elapsed.inSeconds * 1000)
    }
}
