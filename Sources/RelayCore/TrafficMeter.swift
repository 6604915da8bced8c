import NIOCore
import RelayDataPlane
import Synchronization

/// Something told about every chunk a pump moves, while it moves (per-service counters).
public protocol TrafficSink: Sendable {
    /// `bytes` moved forward (first endpoint to second) or backward.
    func add(_ bytes: Int, forward: Bool)
}

/// Live counters of one session's traffic, updated by the pump and read by status queries.
///
/// "Forward" is from the pump's first endpoint to its second (at the relay: client → agent,
/// so bytes in); "backward" is the other way (bytes out).
public final class TrafficMeter: SpliceMeter {
    private let forwardBytes = Atomic<Int64>(0)
    private let backwardBytes = Atomic<Int64>(0)
    private let forwardDone = Atomic<Bool>(false)
    private let backwardDone = Atomic<Bool>(false)
    /// When a byte last moved or a direction last ended (uptime nanoseconds).
    private let lastActivity = Atomic<UInt64>(NIODeadline.now().uptimeNanoseconds)
    private let sink: (any TrafficSink)?
    private let finishObserver = Mutex<(@Sendable (_ forward: Bool) -> Void)?>(nil)

    /// A meter at zero; `sink`, if given, is told about every chunk as it moves.
    public init(sink: (any TrafficSink)? = nil) {
        self.sink = sink
    }

    /// A meter that goes on from a session's counts and ended directions (a session taken
    /// over from the process before: ``HandoverState``); `sink` hears only what moves from now on.
    public convenience init(
        sink: (any TrafficSink)?, forward: Int64, backward: Int64, forwardFinished: Bool, backwardFinished: Bool
    ) {
        self.init(sink: sink)
        self.forwardBytes.store(forward, ordering: .relaxed)
        self.backwardBytes.store(backward, ordering: .relaxed)
        self.forwardDone.store(forwardFinished, ordering: .relaxed)
        self.backwardDone.store(backwardFinished, ordering: .relaxed)
    }

    /// Bytes moved from the first endpoint to the second.
    public var forward: Int64 { self.forwardBytes.load(ordering: .relaxed) }
    /// Bytes moved from the second endpoint to the first.
    public var backward: Int64 { self.backwardBytes.load(ordering: .relaxed) }
    /// Whether the first endpoint has finished sending (its FIN was passed on).
    public var forwardFinished: Bool { self.forwardDone.load(ordering: .relaxed) }
    /// Whether the second endpoint has finished sending.
    public var backwardFinished: Bool { self.backwardDone.load(ordering: .relaxed) }
    /// How long since a byte last moved either way or a direction last ended.
    public var idleFor: Duration {
        let now = NIODeadline.now().uptimeNanoseconds
        let last = self.lastActivity.load(ordering: .relaxed)
        return .nanoseconds(Int64(now > last ? now - last : 0))
    }

    /// Calls `body` when a direction finishes (its FIN passed on), from the pump's task,
    /// after the meter shows it: how a session hears of a half-close while its pump runs.
    public func onFinish(_ body: @escaping @Sendable (_ forward: Bool) -> Void) {
        self.finishObserver.withLock { $0 = body }
    }

    /// `count` bytes reached their destination (called by a pump).
    public func add(_ count: Int, forward: Bool) {
        self.lastActivity.store(NIODeadline.now().uptimeNanoseconds, ordering: .relaxed)
        if forward {
            self.forwardBytes.wrappingAdd(Int64(count), ordering: .relaxed)
        } else {
            self.backwardBytes.wrappingAdd(Int64(count), ordering: .relaxed)
        }
        self.sink?.add(count, forward: forward)
    }

    /// A direction's FIN was passed on (called by a pump).
    public func finish(forward: Bool) {
        self.lastActivity.store(NIODeadline.now().uptimeNanoseconds, ordering: .relaxed)
        if forward {
            self.forwardDone.store(true, ordering: .relaxed)
        } else {
            self.backwardDone.store(true, ordering: .relaxed)
        }
        self.finishObserver.withLock { $0 }?(forward)
    }
}
