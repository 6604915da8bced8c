import CDataPlane
import Glibc
import Synchronization

/// The splice(2) data plane: a fixed set of epoll loops, each on its own thread, that join
/// pairs of connected TCP sockets and move their bytes socket → pipe → socket inside the
/// kernel, both ways, until both directions have ended or one side fails.
///
/// ```swift
/// let plane = try SplicePlane()
/// let session = plane.start(first: client, second: dataChannel, pendingForward: leftovers)
/// let outcome = await session.outcome
/// ```
///
/// The contract is RelayCore's `SessionPump`'s: backpressure (a direction holds at most one
/// pipe; a slow reader stalls its sender through TCP), a FIN passed on as a write shutdown
/// only after every byte before it, a reset or error on either side resetting both at once,
/// the half-close limit, counters kept current, and an outcome that says how it ended.
///
/// A direction borrows its pipe from its loop's pool only while it has bytes in flight, so
/// an idle session holds no pipe: what limits idle sessions is the sockets themselves.
public final class SplicePlane: Sendable {
    /// How the loops learn that a socket is ready.
    public enum Trigger: Sendable, Equatable {
        /// Edge-triggered: each socket registered once for everything (EPOLLET); the pump
        /// always goes on until a call would block, so no edge is lost. No EPOLL_CTL_MOD,
        /// but a wakeup for every edge, wanted or not (EPOLLOUT after each ACK that frees room).
        case edge
        /// Level-triggered: each socket registered for only what its session waits for
        /// (EPOLLIN on a source with an empty pipe, EPOLLOUT on a blocked destination),
        /// changed with EPOLL_CTL_MOD as that changes, as systemd-socket-proxyd does. The
        /// default: fewer wakeups, which measured faster through iperf3 on this busy 2-core
        /// machine (docs/dataplane-splice.md).
        case level
    }

    /// How a plane is built.
    public struct Configuration: Sendable, Equatable {
        /// Each pipe's size, asked with F_SETPIPE_SZ: 256 KiB, as systemd-socket-proxyd.
        /// A direction holds at most this much beyond the two sockets' own buffers.
        public static let defaultPipeSize = 256 << 10
        /// Idle pipes the plane keeps by default, over all its loops: 64, 16 MiB of 256 KiB
        /// pipes, a quarter of the default per-user pipe limit (64 MiB), however many loops
        /// share them (up to 32; past that each loop keeps 2).
        public static let defaultPooledPipes = 64

        /// The default bound of each loop's pool: ``defaultPooledPipes`` shared out among
        /// `loops`, at least 2.
        public static func defaultPooledPipesPerLoop(loops: Int) -> Int {
            max(2, Self.defaultPooledPipes / max(1, loops))
        }

        /// Loops (threads); sessions are given to them in turn.
        public var loops: Int
        /// How the loops learn that a socket is ready.
        public var trigger: Trigger
        /// The size each pipe is asked to have (the kernel rounds it up to a power of two pages).
        public var pipeSize: Int
        /// The most idle pipes each loop keeps: the empty pipes its directions gave back,
        /// for the next to borrow; more are closed. Every pipe open counts against the
        /// per-user pipe limit at its full size, pooled ones too.
        public var pooledPipesPerLoop: Int

        /// One loop per CPU this process may run on, level-triggered, 256 KiB pipes, and
        /// 64 idle pipes kept over all loops (``defaultPooledPipesPerLoop(loops:)``).
        public init(
            loops: Int = SplicePlane.activeCPUCount, trigger: Trigger = .level, pipeSize: Int = Self.defaultPipeSize,
            pooledPipesPerLoop: Int? = nil
        ) {
            self.loops = max(1, loops)
            self.trigger = trigger
            self.pipeSize = pipeSize
            self.pooledPipesPerLoop = max(0, pooledPipesPerLoop ?? Self.defaultPooledPipesPerLoop(loops: self.loops))
        }
    }

    /// What the loops hold now. Each loop publishes its figures after each round of work
    /// and whenever a session ends, so a figure read while bytes move may be a round old.
    public struct Statistics: Sendable, Equatable {
        /// Running sessions, per loop.
        public var sessions: [Int]
        /// Pipes open, lent to directions with bytes in flight or idle in the pools, over all loops.
        public var openPipes: Int
        /// Idle pipes in the pools.
        public var idlePipes: Int
        /// Sessions with a direction that has bytes to read but got no pipe (`pipe2` failed:
        /// too many open files, …) and waits for one.
        public var waitingForPipe: Int

        /// Pipes lent to directions now: those with bytes in flight.
        public var pipesInUse: Int { self.openPipes - self.idlePipes }
    }

    /// The CPUs this process may run on (its affinity mask), at least 1.
    public static var activeCPUCount: Int { max(1, Int(cdataplane_active_cpu_count())) }

    public let configuration: Configuration
    private let loops: [SpliceLoop]
    private let threads: Mutex<[pthread_t]>
    private let nextLoop = Atomic<UInt64>(0)
    private let nextID = Atomic<UInt64>(1)

    /// Starts the loops' threads. Ignores SIGPIPE for the whole process: splice(2) into a
    /// socket whose peer has gone raises SIGPIPE (it has no MSG_NOSIGNAL), which would kill
    /// the daemon; ignored, the call fails with EPIPE and only that session ends.
    public init(_ configuration: Configuration = Configuration()) throws(SystemError) {
        cdataplane_ignore_sigpipe()
        self.configuration = configuration
        var loops: [SpliceLoop] = []
        for index in 0..<configuration.loops {
            do {
                loops.append(
                    try SpliceLoop(
                        index: index, trigger: configuration.trigger, pipeSize: configuration.pipeSize,
                        pooledPipes: configuration.pooledPipesPerLoop))
            } catch {
                for loop in loops { loop.closeUnstarted() }
                throw error
            }
        }
        self.loops = loops
        var threads: [pthread_t] = []
        for loop in loops {
            let thread: pthread_t
            do {
                thread = try startThread(running: loop) { $0.run() }
            } catch {
                for (started, loop) in zip(threads, loops) {
                    _ = loop.post(.stop)
                    pthread_join(started, nil)
                }
                for loop in loops.dropFirst(threads.count) { loop.closeUnstarted() }
                throw error
            }
            threads.append(thread)
        }
        self.threads = Mutex(threads)
    }

    deinit {
        self.shutdown()
    }

    /// Splices `first` and `second` until both directions have ended or one side fails.
    ///
    /// - Parameters:
    ///   - first, second: connected TCP sockets. The plane owns them from this call on: it
    ///     makes them nonblocking and closes them when the session ends (abortively unless
    ///     it finished cleanly); the caller must not use or close them again.
    ///   - pendingForward: bytes already read from `first` (past a handshake line, S12),
    ///     written to `second` before anything spliced from `first`.
    ///   - pendingBackward: the same for bytes already read from `second`, for `first`.
    ///   - meter: told about every byte as it reaches its destination, and about each FIN.
    ///   - limits: the half-close limit.
    ///   - onEnd: called once with the outcome, on the loop's thread: keep it short.
    /// - Returns: the session's handle. A plane that was shut down resets both sockets and
    ///   returns a session already ended with ``SpliceOutcome/aborted(reason:)``.
    public func start(
        first: Descriptor, second: Descriptor, pendingForward: [UInt8] = [], pendingBackward: [UInt8] = [],
        meter: any SpliceMeter = SpliceCounters(), limits: SpliceLimits = SpliceLimits(),
        onEnd: (@Sendable (SpliceOutcome) -> Void)? = nil
    ) -> SpliceSession {
        self.start(
            first: first, second: second, pendingForward: pendingForward, pendingBackward: pendingBackward,
            meter: meter, limits: limits, onEnd: onEnd, resuming: nil)
    }

    private func start(
        first: Descriptor, second: Descriptor, pendingForward: [UInt8] = [], pendingBackward: [UInt8] = [],
        meter: any SpliceMeter, limits: SpliceLimits, onEnd: (@Sendable (SpliceOutcome) -> Void)?,
        resuming: (FrozenDirection, FrozenDirection)?
    ) -> SpliceSession {
        let turn = self.nextLoop.wrappingAdd(1, ordering: .relaxed).oldValue
        let loop = self.loops[Int(turn % UInt64(self.loops.count))]
        let session = SpliceSession(
            id: self.nextID.wrappingAdd(1, ordering: .relaxed).oldValue, loop: loop.index, meter: meter,
            onEnd: onEnd
        ) { id, reason in
            _ = loop.post(.kill(id: id, reason: reason))
        }
        let start = SpliceLoop.Start(
            first: first, second: second, pendingForward: pendingForward, pendingBackward: pendingBackward,
            limits: limits, session: session, resuming: resuming)
        if !loop.post(.start(start)) {
            first.reset()
            second.reset()
            session.resolve(.aborted(reason: "data plane stopped"))
        }
        return session
    }

    /// Stops every running session for a handover and returns them: each one's two sockets,
    /// still open and connected (no FIN, no reset), and per direction the bytes not yet
    /// written (read out of its pipe) and whether its end of stream was read or passed on.
    /// The sessions' outcomes are never reported. The caller owns the sockets from here on.
    /// Sessions started later run as usual.
    public func freeze() async -> [FrozenSplice] {
        await withCheckedContinuation { (continuation: CheckedContinuation<[FrozenSplice], Never>) in
            let collected = Mutex((remaining: self.loops.count, sessions: [FrozenSplice]()))
            let reply: @Sendable ([FrozenSplice]) -> Void = { frozen in
                let done = collected.withLock { state -> [FrozenSplice]? in
                    state.sessions += frozen
                    state.remaining -= 1
                    return state.remaining == 0 ? state.sessions : nil
                }
                if let done { continuation.resume(returning: done) }
            }
            for loop in self.loops where !loop.post(.freeze(reply: reply)) { reply([]) }
        }
    }

    /// Goes on with a session frozen by ``freeze()`` (in this process or the one before it):
    /// each direction's unsent bytes first, an end of stream already read is not read again
    /// and one already passed on is not passed on again. Otherwise as ``start(first:second:pendingForward:pendingBackward:meter:limits:onEnd:)``.
    public func resume(
        _ frozen: FrozenSplice, meter: any SpliceMeter = SpliceCounters(), limits: SpliceLimits = SpliceLimits(),
        onEnd: (@Sendable (SpliceOutcome) -> Void)? = nil
    ) -> SpliceSession {
        self.start(
            first: frozen.first, second: frozen.second, meter: meter, limits: limits, onEnd: onEnd,
            resuming: (frozen.forward, frozen.backward))
    }

    /// What the loops hold now.
    public var statistics: Statistics {
        Statistics(
            sessions: self.loops.map { $0.liveSessions.load(ordering: .relaxed) },
            openPipes: self.loops.reduce(0) { $0 + $1.openPipes.load(ordering: .relaxed) },
            idlePipes: self.loops.reduce(0) { $0 + $1.idlePipes.load(ordering: .relaxed) },
            waitingForPipe: self.loops.reduce(0) { $0 + $1.waitingForPipe.load(ordering: .relaxed) })
    }

    /// Resets every running session (``SpliceOutcome/aborted(reason:)``, "data plane
    /// stopped"), closes every pipe and the loops' own descriptors, and waits for the
    /// threads to exit. Later ``start`` calls reset their sockets at once. Idempotent; it
    /// blocks for as long as the loops take to finish their current batch.
    public func shutdown() {
        let threads = self.threads.withLock { threads in
            defer { threads = [] }
            return threads
        }
        for loop in self.loops { _ = loop.post(.stop) }
        // A loop thread cannot wait for itself (the last reference dropped in an `onEnd`
        // callback): that loop stops once the callback returns.
        for thread in threads where pthread_equal(thread, pthread_self()) == 0 { pthread_join(thread, nil) }
    }
}
