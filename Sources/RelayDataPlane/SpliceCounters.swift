import Synchronization

/// What a spliced session tells about its traffic while bytes move, from its loop's thread:
/// ``SpliceCounters`` by default; RelayCore's `TrafficMeter` can conform when the daemons
/// are wired to this plane. Calls must be quick and must not block: they run on the loop.
public protocol SpliceMeter: Sendable {
    /// `bytes` reached the destination socket: forward (first → second) or backward.
    func add(_ bytes: Int, forward: Bool)
    /// One direction ended: its FIN was passed on as a write shutdown.
    func finish(forward: Bool)
}

/// Live counters of one session, readable from any thread at any time. "Forward" is from
/// the first socket to the second; a byte counts once the destination socket took it
/// (pending bytes written first count too).
public final class SpliceCounters: SpliceMeter {
    private let forwardBytes = Atomic<Int64>(0)
    private let backwardBytes = Atomic<Int64>(0)
    private let forwardDone = Atomic<Bool>(false)
    private let backwardDone = Atomic<Bool>(false)

    /// Counters at zero.
    public init() {}

    /// Bytes moved from the first socket to the second.
    public var forward: Int64 { self.forwardBytes.load(ordering: .relaxed) }
    /// Bytes moved from the second socket to the first.
    public var backward: Int64 { self.backwardBytes.load(ordering: .relaxed) }
    /// Whether the first socket's FIN was passed on.
    public var forwardFinished: Bool { self.forwardDone.load(ordering: .relaxed) }
    /// Whether the second socket's FIN was passed on.
    public var backwardFinished: Bool { self.backwardDone.load(ordering: .relaxed) }

    public func add(_ bytes: Int, forward: Bool) {
        if forward {
            self.forwardBytes.wrappingAdd(Int64(bytes), ordering: .relaxed)
        } else {
            self.backwardBytes.wrappingAdd(Int64(bytes), ordering: .relaxed)
        }
    }

    public func finish(forward: Bool) {
        if forward {
            self.forwardDone.store(true, ordering: .relaxed)
        } else {
            self.backwardDone.store(true, ordering: .relaxed)
        }
    }
}
