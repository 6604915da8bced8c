import CDataPlane
import Glibc
import Synchronization

/// One epoll loop on a thread of its own, running the spliced sessions assigned to it.
///
/// Other threads reach it only through ``post(_:)``: a command queued under a lock, and an
/// eventfd that wakes the loop when the queue was empty. Everything else (the sessions,
/// the pipe pool, the half-close timers, the sessions waiting for a pipe) belongs to the
/// loop's thread, which is why the class is `@unchecked Sendable`: it is shared for `post`
/// and the statistics only.
final class SpliceLoop: @unchecked Sendable {
    /// What other threads ask of a loop.
    enum Command: Sendable {
        case start(Start)
        case kill(id: UInt64, reason: String)
        /// Stops every session for a handover and replies with them (``SplicePlane/freeze()``).
        case freeze(reply: @Sendable ([FrozenSplice]) -> Void)
        case stop
    }

    /// A session to start: the caller's arguments to `SplicePlane.start`.
    struct Start: Sendable {
        let first: Descriptor
        let second: Descriptor
        let pendingForward: [UInt8]
        let pendingBackward: [UInt8]
        let limits: SpliceLimits
        let session: SpliceSession
        /// A session taken over from a frozen one: both directions' state.
        var resuming: (FrozenDirection, FrozenDirection)? = nil
    }

    /// The loop's index in its plane.
    let index: Int
    /// Sessions running now.
    let liveSessions = Atomic<Int>(0)
    /// Pipes open (lent to directions and idle in the pool).
    let openPipes = Atomic<Int>(0)
    /// Idle pipes in the pool.
    let idlePipes = Atomic<Int>(0)
    /// Sessions with a direction waiting for a pipe (`pipe2` failed).
    let waitingForPipe = Atomic<Int>(0)

    /// The most events taken from one `epoll_wait`.
    private static let eventBatch = 256
    /// The epoll data of the eventfd; a session's sockets use `id << 1 | side`, and ids start at 1.
    private static let wakeupToken = UInt64.max

    private let trigger: SplicePlane.Trigger
    private let epoll: Descriptor
    private let wakeup: Descriptor
    private let inbox = Mutex(Inbox())

    private struct Inbox {
        var commands: [Command] = []
        var stopped = false
    }

    // The loop thread's own state.
    private var pairs: [UInt64: SplicePair] = [:]
    private let pool: PipePool
    /// Sessions with a direction that could get no pipe: serviced again once a pipe is back
    /// in the pool or the pool's retry pause is over.
    private var waiting: [UInt64: SplicePair] = [:]
    /// Sessions with an idle clock running (an idle timeout, or half-closed with a half-close timeout).
    private var timed: Set<UInt64> = []
    /// When a half-closed session next needs a look (monotonic nanoseconds; .max: none).
    private var nextTimerCheck = UInt64.max
    private var due: [SplicePair] = []
    /// Pairs that used up their turn with more to move: serviced next time round, without
    /// waiting for epoll.
    private var again: [SplicePair] = []
    private var commands: [Command] = []

    init(index: Int, trigger: SplicePlane.Trigger, pipeSize: Int, pooledPipes: Int) throws(SystemError) {
        self.index = index
        self.trigger = trigger
        self.pool = PipePool(pipeSize: pipeSize, limit: pooledPipes)
        let loop = try EpollWakeup(token: Self.wakeupToken)
        self.epoll = loop.epoll
        self.wakeup = loop.wakeup
    }

    /// Closes the loop's own descriptors when its thread was never started.
    func closeUnstarted() {
        self.epoll.close()
        self.wakeup.close()
    }

    /// Queues `command` and wakes the loop; false (nothing queued) once the loop has stopped.
    func post(_ command: Command) -> Bool {
        let (queued, wake) = self.inbox.withLock { inbox -> (Bool, Bool) in
            guard !inbox.stopped else { return (false, false) }
            inbox.commands.append(command)
            if case .stop = command { inbox.stopped = true }
            // Only the first command of a batch writes the eventfd: the loop takes them all.
            return (true, inbox.commands.count == 1)
        }
        if wake {
            var one: UInt64 = 1
            _ = write(self.wakeup.rawValue, &one, MemoryLayout<UInt64>.size)
        }
        return queued
    }

    /// The loop; returns after a `stop` command, having reset every session it still ran.
    func run() {
        cdataplane_name_thread("relay-splice-\(self.index)")
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: Self.eventBatch)
        defer { events.deallocate() }
        var running = true
        while running {
            if !self.waiting.isEmpty { self.retryWaiting() }
            let timeout = self.again.isEmpty ? self.waitMilliseconds() : 0
            let count = epoll_wait(self.epoll.rawValue, events, Int32(Self.eventBatch), timeout)
            if count < 0 {
                guard errno == EINTR else { fatalError("epoll_wait: \(SystemError.describe(errno))") }
                continue
            }
            var woken = false
            for index in 0..<Int(count) {
                let data = events[index].data.u64
                guard data != Self.wakeupToken else {
                    woken = true
                    continue
                }
                // Events of a session ended earlier in this batch find nothing.
                guard let pair = self.pairs[data >> 1] else { continue }
                pair.note(events[index].events, on: data & 1 == 0 ? .first : .second)
                if !pair.scheduled {
                    pair.scheduled = true
                    self.due.append(pair)
                }
            }
            for pair in self.again where !pair.scheduled {
                pair.scheduled = true
                self.due.append(pair)
            }
            self.again.removeAll(keepingCapacity: true)
            for pair in self.due {
                pair.scheduled = false
                self.service(pair)
            }
            self.due.removeAll(keepingCapacity: true)
            if woken { running = self.takeCommands() }
            if self.nextTimerCheck != .max { self.checkHalfClosed() }
            self.updateStatistics()
        }
        for pair in Array(self.pairs.values) { self.end(pair, .aborted(reason: "data plane stopped"), reset: true) }
        self.pool.closeIdle()
        self.updateStatistics()
        self.epoll.close()
        self.wakeup.close()
    }

    // MARK: - Commands

    /// Runs the queued commands; false once `stop` came.
    private func takeCommands() -> Bool {
        var value: UInt64 = 0
        _ = read(self.wakeup.rawValue, &value, MemoryLayout<UInt64>.size)
        self.inbox.withLock { swap(&$0.commands, &self.commands) }
        defer { self.commands.removeAll(keepingCapacity: true) }
        for command in self.commands {
            switch command {
            case .start(let start):
                self.begin(start)
            case .kill(let id, let reason):
                if let pair = self.pairs[id] { self.end(pair, .aborted(reason: reason), reset: true) }
            case .freeze(let reply):
                reply(self.freezeAll())
            case .stop:
                return false
            }
        }
        return true
    }

    /// Starts a session: from here on every path closes its sockets. It holds no pipe yet:
    /// its directions borrow one when they have bytes to move.
    private func begin(_ start: Start) {
        do {
            try start.first.setNonBlocking()
            try start.second.setNonBlocking()
        } catch {
            start.first.reset()
            start.second.reset()
            start.session.resolve(.aborted(reason: "cannot start: \(error)"))
            return
        }
        let pair = SplicePair(
            id: start.session.id, first: start.first, second: start.second,
            pending: (start.pendingForward, start.pendingBackward), meter: start.session.meter,
            session: start.session, limits: start.limits, resuming: start.resuming)
        self.pairs[pair.id] = pair
        self.liveSessions.add(1, ordering: .relaxed)
        if let idle = pair.idleNanoseconds {
            let now = MonotonicClock.now()
            pair.lastActivity = now
            self.timed.insert(pair.id)
            self.nextTimerCheck = min(self.nextTimerCheck, now + idle)
        }
        // Try first, watch after: EPOLL_CTL_ADD reports a socket that is already ready, so
        // nothing that happens in between is missed, and the usual first attempt (nothing to
        // read yet) tells the level-triggered mode what to wait for.
        self.service(pair)
        guard self.pairs[pair.id] != nil else { return }
        for side in [SpliceSide.first, .second] {
            let mask: UInt32
            switch self.trigger {
            case .edge: mask = EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
            case .level: mask = pair.interest(of: side)
            }
            guard self.watch(pair, side, mask, EPOLL_CTL_ADD) else { return }
        }
        pair.watched = true
    }

    // MARK: - Sessions

    /// Moves what the pair can move, then ends it, or arms its half-close timer, or (level
    /// mode) changes what epoll watches for, or keeps it to retry when it got no pipe.
    private func service(_ pair: SplicePair) {
        guard !pair.ended else { return }
        switch pair.run(pool: self.pool) {
        case .failure(let failure):
            self.end(pair, .failed(failure.side, reason: SystemError.describe(failure.code)), reset: true)
        case .success(let turn):
            if pair.isFinished {
                self.end(pair, .finished, reset: false)
                return
            }
            if turn == .unfinished { self.again.append(pair) }
            if pair.waitsForPipe {
                self.waiting[pair.id] = pair
            } else if !self.waiting.isEmpty {
                self.waiting.removeValue(forKey: pair.id)
            }
            if turn != .idle, let timeout = pair.allowedIdleNanoseconds {
                let now = MonotonicClock.now()
                pair.lastActivity = now
                self.timed.insert(pair.id)
                self.nextTimerCheck = min(self.nextTimerCheck, now + timeout)
            }
            if self.trigger == .level && pair.watched {
                let first = pair.interest(of: .first)
                if first != pair.watching(.first) {
                    guard self.watch(pair, .first, first, EPOLL_CTL_MOD) else { return }
                }
                let second = pair.interest(of: .second)
                if second != pair.watching(.second) {
                    _ = self.watch(pair, .second, second, EPOLL_CTL_MOD)
                }
            }
        }
    }

    /// Adds or changes the epoll registration of `side`'s socket; on failure the session is
    /// aborted and false returned.
    private func watch(_ pair: SplicePair, _ side: SpliceSide, _ mask: UInt32, _ operation: Int32) -> Bool {
        var event = epoll_event()
        event.events = mask
        event.data.u64 = pair.id << 1 | (side == .first ? 0 : 1)
        let socket = side == .first ? pair.first : pair.second
        guard epoll_ctl(self.epoll.rawValue, operation, socket.rawValue, &event) == 0 else {
            let error = SystemError(call: "epoll_ctl")
            // A failed ADD of the second socket leaves the first one registered.
            pair.watched = operation == EPOLL_CTL_MOD || side == .second
            self.end(pair, .aborted(reason: "cannot watch the sockets: \(error)"), reset: true)
            return false
        }
        pair.setWatching(side, mask)
        return true
    }

    /// Ends a session: unwatches and closes both sockets (reset: abortively), returns the
    /// pipes it holds to the pool (a pipe still holding bytes is closed), and reports the
    /// outcome.
    private func end(_ pair: SplicePair, _ outcome: SpliceOutcome, reset: Bool) {
        guard self.pairs.removeValue(forKey: pair.id) != nil else { return }
        pair.ended = true
        self.timed.remove(pair.id)
        self.waiting.removeValue(forKey: pair.id)
        for socket in [pair.first, pair.second] {
            if pair.watched {
                var unused = epoll_event()
                _ = epoll_ctl(self.epoll.rawValue, EPOLL_CTL_DEL, socket.rawValue, &unused)
            }
            if reset { socket.reset() } else { socket.close() }
        }
        pair.releasePipes(to: self.pool)
        self.liveSessions.subtract(1, ordering: .relaxed)
        self.updateStatistics()
        pair.session.resolve(outcome)
    }

    /// Stops every session for a handover: unwatched, their unsent bytes read out of their
    /// pipes, their sockets left as they are (open, connected) and handed to the caller.
    /// Their outcomes are never reported: the process hands them on and exits.
    private func freezeAll() -> [FrozenSplice] {
        var frozen: [FrozenSplice] = []
        for pair in Array(self.pairs.values) {
            self.pairs.removeValue(forKey: pair.id)
            pair.ended = true
            self.timed.remove(pair.id)
            self.waiting.removeValue(forKey: pair.id)
            if pair.watched {
                for socket in [pair.first, pair.second] {
                    var unused = epoll_event()
                    _ = epoll_ctl(self.epoll.rawValue, EPOLL_CTL_DEL, socket.rawValue, &unused)
                }
            }
            frozen.append(pair.freeze(pool: self.pool))
            self.liveSessions.subtract(1, ordering: .relaxed)
        }
        self.updateStatistics()
        return frozen
    }

    // MARK: - Sessions waiting for a pipe

    /// Services again, in the next round, the sessions that got no pipe, once the pool can
    /// lend one: a pipe was given back, or the pause after a failed `pipe2` is over. Those
    /// that still get none wait again (without another `pipe2` until the next pause is over).
    private func retryWaiting() {
        guard self.pool.mayLend(now: MonotonicClock.now()) else { return }
        for pair in self.waiting.values { self.again.append(pair) }
        self.waiting.removeAll(keepingCapacity: true)
    }

    // MARK: - Timers

    /// How long `epoll_wait` may sleep: until the next half-close deadline or, with sessions
    /// waiting for a pipe, the end of the pool's retry pause, rounded up to the millisecond
    /// so the check is never early; -1 (forever) when none.
    private func waitMilliseconds() -> Int32 {
        let deadline = self.waiting.isEmpty ? self.nextTimerCheck : min(self.nextTimerCheck, self.pool.retryAt)
        guard deadline != .max else { return -1 }
        let now = MonotonicClock.now()
        guard deadline > now else { return 0 }
        return Int32(clamping: (deadline - now + 999_999) / 1_000_000)
    }

    /// Cuts every half-closed session idle for its limit, and finds the next deadline.
    private func checkHalfClosed() {
        let now = MonotonicClock.now()
        guard now >= self.nextTimerCheck else { return }
        var next = UInt64.max
        var expired: [SplicePair] = []
        for id in self.timed {
            guard let pair = self.pairs[id], let timeout = pair.allowedIdleNanoseconds else { continue }
            let deadline = pair.lastActivity + timeout
            if now >= deadline {
                expired.append(pair)
            } else {
                next = min(next, deadline)
            }
        }
        self.nextTimerCheck = next
        for pair in expired {
            let halfClose = pair.isHalfClosed ? pair.halfCloseNanoseconds : nil
            if let halfClose, halfClose <= (pair.idleNanoseconds ?? .max) {
                let idle: SpliceSide = pair.forward.finished ? .second : .first
                self.end(pair, .halfCloseTimeout(idle: idle, after: pair.limits.halfCloseTimeout ?? .zero), reset: true)
            } else {
                self.end(pair, .idleTimeout(after: pair.limits.idleTimeout ?? .zero), reset: true)
            }
        }
    }

    private func updateStatistics() {
        self.openPipes.store(self.pool.open, ordering: .relaxed)
        self.idlePipes.store(self.pool.idleCount, ordering: .relaxed)
        self.waitingForPipe.store(self.waiting.count, ordering: .relaxed)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: what the half-close timers count in.
enum MonotonicClock {
    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}
