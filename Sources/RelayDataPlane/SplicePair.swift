import CDataPlane
import Glibc

/// One spliced session as its loop holds it: the two sockets, a direction each way, the
/// readiness the loop has learned from epoll, and the half-close clock. Lives on its loop's
/// thread only.
final class SplicePair {
    let id: UInt64
    let first: Descriptor
    let second: Descriptor
    /// First → second.
    var forward: SpliceDirection
    /// Second → first.
    var backward: SpliceDirection
    let meter: any SpliceMeter
    let session: SpliceSession
    let limits: SpliceLimits
    /// ``SpliceLimits/halfCloseTimeout`` in nanoseconds.
    let halfCloseNanoseconds: UInt64?
    /// ``SpliceLimits/idleTimeout`` in nanoseconds.
    let idleNanoseconds: UInt64?

    /// When a byte last moved or a direction last ended, in monotonic nanoseconds; kept
    /// from the start with an idle timeout, else only once one direction has ended (before
    /// that, the FIN itself is the later event).
    var lastActivity: UInt64 = 0
    /// EPOLLERR came for the first or the second socket: look at SO_ERROR before moving bytes.
    var errorOnFirst = false
    var errorOnSecond = false
    /// Both sockets are registered with the loop's epoll.
    var watched = false
    /// The events registered per socket (what level-triggered mode changes).
    private var maskFirst: UInt32 = 0
    private var maskSecond: UInt32 = 0
    /// Already in the loop's list of pairs to service after this batch of events.
    var scheduled = false
    /// Ended: its sockets are closed (their numbers may already be reused), so it must not
    /// be serviced again, even from a list it is still in.
    var ended = false

    init(
        id: UInt64, first: Descriptor, second: Descriptor, pending: ([UInt8], [UInt8]), meter: any SpliceMeter,
        session: SpliceSession, limits: SpliceLimits, resuming: (FrozenDirection, FrozenDirection)? = nil
    ) {
        self.id = id
        self.first = first
        self.second = second
        self.forward = SpliceDirection(source: first, destination: second, forward: true, pending: pending.0)
        self.backward = SpliceDirection(source: second, destination: first, forward: false, pending: pending.1)
        if let resuming {
            self.forward = SpliceDirection(source: first, destination: second, forward: true, resuming: resuming.0)
            self.backward = SpliceDirection(source: second, destination: first, forward: false, resuming: resuming.1)
        }
        self.meter = meter
        self.session = session
        self.limits = limits
        func nanoseconds(_ duration: Duration) -> UInt64 {
            let (seconds, attoseconds) = duration.components
            return UInt64(max(0, seconds)) * 1_000_000_000 + UInt64(max(0, attoseconds) / 1_000_000_000)
        }
        self.halfCloseNanoseconds = limits.halfCloseTimeout.map(nanoseconds)
        self.idleNanoseconds = limits.idleTimeout.map(nanoseconds)
    }

    /// The idle time allowed now: the idle timeout, or, half-closed, the shorter of it and
    /// the half-close timeout; nil when neither applies.
    var allowedIdleNanoseconds: UInt64? {
        let halfClose = self.isHalfClosed ? self.halfCloseNanoseconds : nil
        switch (halfClose, self.idleNanoseconds) {
        case (let a?, let b?): return min(a, b)
        case (let a?, nil): return a
        case (nil, let b?): return b
        case (nil, nil): return nil
        }
    }

    /// Both directions have passed their end of stream on.
    var isFinished: Bool { self.forward.finished && self.backward.finished }

    /// Exactly one direction has ended.
    var isHalfClosed: Bool { self.forward.finished != self.backward.finished }

    /// A direction has its source to read but could get no pipe: its loop must retry it.
    var waitsForPipe: Bool { self.forward.waitsForPipe || self.backward.waitsForPipe }

    /// Stops the session for a handover: both directions' unsent bytes and flags, and the
    /// sockets, untouched; its pipes go back to `pool` empty.
    func freeze(pool: PipePool) -> FrozenSplice {
        FrozenSplice(
            id: self.id, first: self.first, second: self.second, forward: self.forward.freeze(pool: pool),
            backward: self.backward.freeze(pool: pool))
    }

    /// Gives both directions' pipes back at the end of the session: a pipe still holding
    /// bytes is closed.
    func releasePipes(to pool: PipePool) {
        self.forward.release(to: pool)
        self.backward.release(to: pool)
    }

    /// The events registered for `side`'s socket.
    func watching(_ side: SpliceSide) -> UInt32 {
        side == .first ? self.maskFirst : self.maskSecond
    }

    /// Records what `side`'s socket is registered for.
    func setWatching(_ side: SpliceSide, _ mask: UInt32) {
        if side == .first { self.maskFirst = mask } else { self.maskSecond = mask }
    }

    /// Learns from an epoll event on `side`'s socket. Hang-up and error wake both
    /// directions too: the next read or write reports what happened.
    func note(_ events: UInt32, on side: SpliceSide) {
        let readable = events & (EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0
        let writable = events & (EPOLLOUT.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0
        let error = events & EPOLLERR.rawValue != 0
        switch side {
        case .first:
            if readable { self.forward.sourceReadable = true }
            if writable { self.backward.destinationWritable = true }
            if error { self.errorOnFirst = true }
        case .second:
            if readable { self.backward.sourceReadable = true }
            if writable { self.forward.destinationWritable = true }
            if error { self.errorOnSecond = true }
        }
    }

    /// Moves what both directions can move now, borrowing pipes from `pool` and giving them
    /// back. Returns what the turn did (unfinished if either direction is), or the side whose
    /// socket failed and its errno.
    func run(pool: PipePool) -> Result<SpliceDirection.Turn, PairFailure> {
        // A pending socket error (a reset) fails the session at once, even when no direction
        // has anything to read or write on that socket any more.
        if self.errorOnFirst {
            self.errorOnFirst = false
            let code = self.first.takePendingError()
            if code != 0 { return .failure(PairFailure(side: .first, code: code)) }
        }
        if self.errorOnSecond {
            self.errorOnSecond = false
            let code = self.second.takePendingError()
            if code != 0 { return .failure(PairFailure(side: .second, code: code)) }
        }
        let forward: SpliceDirection.Turn
        switch self.forward.run(meter: self.meter, pool: pool) {
        case .success(let turn): forward = turn
        case .failure(.source(let code)): return .failure(PairFailure(side: .first, code: code))
        case .failure(.destination(let code)): return .failure(PairFailure(side: .second, code: code))
        }
        switch self.backward.run(meter: self.meter, pool: pool) {
        case .success(let backward):
            if forward == .unfinished || backward == .unfinished { return .success(.unfinished) }
            return .success(forward == .moved || backward == .moved ? .moved : .idle)
        case .failure(.source(let code)): return .failure(PairFailure(side: .second, code: code))
        case .failure(.destination(let code)): return .failure(PairFailure(side: .first, code: code))
        }
    }

    /// The level-triggered interest of `side`'s socket: EPOLLIN while the direction reading
    /// it waits for bytes, EPOLLOUT while the direction writing it waits for room. Errors and
    /// hang-ups are reported whatever the interest.
    func interest(of side: SpliceSide) -> UInt32 {
        let (reading, writing) = side == .first ? (self.forward, self.backward) : (self.backward, self.forward)
        return (reading.awaitsSource ? EPOLLIN.rawValue : 0) | (writing.awaitsDestination ? EPOLLOUT.rawValue : 0)
    }
}

/// A socket of a pair failed: which one, with which errno.
struct PairFailure: Error {
    let side: SpliceSide
    let code: Int32
}
