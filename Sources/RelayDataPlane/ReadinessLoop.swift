import CDataPlane
import Glibc
import Synchronization

/// One epoll loop on a thread of its own that tells async code when a plain descriptor is
/// ready: how the daemons accept, dial and read handshake lines on sockets they own from
/// birth, without NIO and without a thread per socket.
///
/// ```swift
/// let readiness = try ReadinessLoop()
/// switch await readiness.wait(for: .readable, on: socket, until: .now + .seconds(5)) {
/// case .ready: …          // read until EAGAIN, then wait again
/// case .timedOut, .cancelled: …
/// }
/// ```
///
/// A wait registers the descriptor with epoll (one interest at a time per descriptor),
/// and is resumed once: when epoll reports it, when its deadline passes (the loop sleeps
/// until the earliest one), or when its task is cancelled. Descriptors are not owned: the
/// caller closes them, after its wait has returned.
///
/// The loop is also a `TaskExecutor`: a task that prefers it
/// (`withTaskExecutorPreference(loop)`, `Task(executorPreference: loop)`) runs on the loop's
/// own thread between two `epoll_wait`s, so a wait that ends resumes it right there, with no
/// hop to another thread: a handshake (accept, read a line, answer, hand over) costs no
/// context switch. Such tasks must not block; they only wait through the loop.
public final class ReadinessLoop: TaskExecutor, Sendable {
    /// What a wait is for.
    public enum Interest: Sendable {
        /// Bytes to read, an end of stream, an error, or a connection to accept.
        case readable
        /// Room to write, or a nonblocking connect that finished (either way: read SO_ERROR).
        case writable
    }

    /// How a wait ended.
    public enum Wakeup: Sendable, Equatable {
        /// The descriptor is ready (or failed: the next call says how).
        case ready
        /// The deadline passed first.
        case timedOut
        /// The waiting task was cancelled, or the loop shut down.
        case cancelled
    }

    /// The most events taken from one `epoll_wait`.
    static let eventBatch = 64
    /// The epoll data of the loop's eventfd; waits use ids from 1.
    static let wakeupToken = UInt64.max

    private struct Waiter {
        let descriptor: Int32
        let deadline: ContinuousClock.Instant?
        let continuation: CheckedContinuation<Wakeup, Never>
    }

    private struct State {
        var waiters: [UInt64: Waiter] = [:]
        var nextID: UInt64 = 1
        /// The earliest deadline the loop's current `epoll_wait` will wake for (nil: none).
        var sleepsUntil: ContinuousClock.Instant?
        var stopped = false
        /// Jobs of tasks that prefer this executor, run in order on the loop's thread.
        var jobs: [UnownedJob] = []
        /// Whether the loop is in (or about to enter) an `epoll_wait` that a new job must end.
        var sleeping = false
    }

    private let epoll: Int32
    private let wakeup: Int32
    private let state = Mutex(State())
    private let thread = Mutex<pthread_t?>(nil)

    /// Starts the loop's thread.
    public init() throws(SystemError) {
        let loop = try EpollWakeup(token: Self.wakeupToken)
        self.epoll = loop.epoll.rawValue
        self.wakeup = loop.wakeup.rawValue
        let thread: pthread_t
        do {
            thread = try startThread(running: self) { $0.run() }
        } catch {
            loop.close()
            throw error
        }
        self.thread.withLock { $0 = thread }
    }

    /// Waits until `descriptor` is ready for `interest`, `deadline` passes, or the task is
    /// cancelled. One wait per descriptor at a time.
    public func wait(
        for interest: Interest, on descriptor: Descriptor, until deadline: ContinuousClock.Instant? = nil
    ) async -> Wakeup {
        let id = self.state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Wakeup, Never>) in
                let (refused, wake) = self.state.withLock { state -> (Wakeup?, Bool) in
                    if state.stopped || Task.isCancelled { return (.cancelled, false) }
                    state.waiters[id] = Waiter(
                        descriptor: descriptor.rawValue, deadline: deadline, continuation: continuation)
                    guard let deadline else { return (nil, false) }
                    if let sleeping = state.sleepsUntil, sleeping <= deadline { return (nil, false) }
                    state.sleepsUntil = deadline
                    return (nil, true)
                }
                if let refused { return continuation.resume(returning: refused) }
                var event = epoll_event()
                // One-shot: a registration that outlives its wait (a cancel raced the ADD) fires at
                // most once, and the next wait on the descriptor replaces it (EEXIST → MOD).
                event.events =
                    (interest == .readable ? EPOLLIN.rawValue : EPOLLOUT.rawValue) | EPOLLRDHUP.rawValue
                    | EPOLLONESHOT.rawValue
                event.data.u64 = id
                if epoll_ctl(self.epoll, EPOLL_CTL_ADD, descriptor.rawValue, &event) != 0
                    && (errno != EEXIST || epoll_ctl(self.epoll, EPOLL_CTL_MOD, descriptor.rawValue, &event) != 0)
                {
                    // Not pollable (closed, or already registered): let the caller's next call find out.
                    self.finish(id, .ready, unregister: false)
                    return
                }
                if wake { self.signal() }
            }
        } onCancel: {
            self.finish(id, .cancelled, unregister: true)
        }
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let wake = self.state.withLock { state in
            state.jobs.append(job)
            defer { state.sleeping = false }
            return state.sleeping
        }
        if wake { self.signal() }
    }

    /// Resumes every wait on `descriptor` with ``Wakeup/cancelled`` (its socket was aborted).
    public func cancelWaits(on descriptor: Descriptor) {
        let ids = self.state.withLock { state in
            state.waiters.filter { $0.value.descriptor == descriptor.rawValue }.map(\.key)
        }
        for id in ids { self.finish(id, .cancelled, unregister: true) }
    }

    /// Resumes every wait with ``Wakeup/cancelled``, stops the thread and closes the loop's
    /// descriptors. Idempotent.
    public func shutdown() {
        let waiters = self.state.withLock { state in
            state.stopped = true
            defer { state.waiters = [:] }
            return state.waiters
        }
        for waiter in waiters.values { waiter.continuation.resume(returning: .cancelled) }
        self.signal()
        if let thread = self.thread.withLock({ thread in
            defer { thread = nil }
            return thread
        }), pthread_equal(thread, pthread_self()) == 0 {
            pthread_join(thread, nil)
        }
    }

    deinit {
        _ = close(self.epoll)
        _ = close(self.wakeup)
    }

    private func signal() {
        var one: UInt64 = 1
        _ = Glibc.write(self.wakeup, &one, MemoryLayout<UInt64>.size)
    }

    /// Takes wait `id` out (if still there), unregisters its descriptor and resumes it.
    private func finish(_ id: UInt64, _ wakeup: Wakeup, unregister: Bool) {
        guard let waiter = self.state.withLock({ $0.waiters.removeValue(forKey: id) }) else { return }
        if unregister { _ = epoll_ctl(self.epoll, EPOLL_CTL_DEL, waiter.descriptor, nil) }
        waiter.continuation.resume(returning: wakeup)
    }

    private func run() {
        cdataplane_name_thread("relay-ready")
        var events = [epoll_event](repeating: epoll_event(), count: Self.eventBatch)
        let executor = self.asUnownedTaskExecutor()
        while true {
            let jobs = self.state.withLock { state in
                defer { state.jobs = [] }
                return state.jobs
            }
            for job in jobs { job.runSynchronously(on: executor) }
            let timeout: Int32? = self.state.withLock { state in
                if state.stopped { return nil }
                // Jobs queued meanwhile: look at epoll without sleeping, then run them.
                if !state.jobs.isEmpty { return 0 }
                state.sleeping = true
                guard let deadline = state.waiters.values.compactMap(\.deadline).min() else {
                    state.sleepsUntil = nil
                    return -1
                }
                state.sleepsUntil = deadline
                let left = ContinuousClock.now.duration(to: deadline)
                guard left > .zero else { return 0 }
                // Rounded up, so that a deadline is never reported early.
                let milliseconds =
                    left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1
                return Int32(min(milliseconds, Int64(Int32.max)))
            }
            guard let timeout else { return }
            let count = events.withUnsafeMutableBufferPointer { buffer in
                epoll_wait(self.epoll, buffer.baseAddress, Int32(buffer.count), timeout)
            }
            self.state.withLock { $0.sleeping = false }
            if count < 0 && errno != EINTR { return }
            for index in 0..<max(0, Int(count)) {
                let token = events[index].data.u64
                if token == Self.wakeupToken {
                    var value: UInt64 = 0
                    _ = Glibc.read(self.wakeup, &value, MemoryLayout<UInt64>.size)
                } else {
                    self.finish(token, .ready, unregister: true)
                }
            }
            let now = ContinuousClock.now
            let expired = self.state.withLock { state in
                state.waiters.filter { $0.value.deadline.map { $0 <= now } ?? false }.map(\.key)
            }
            for id in expired { self.finish(id, .timedOut, unregister: true) }
        }
    }
}
