/// One direction of a session stopped for a handover (``SplicePlane/freeze()``): what the
/// next process needs to go on with it exactly where it stopped.
public struct FrozenDirection: Sendable, Equatable {
    /// Bytes read from the source and not yet written to the destination: those read past a
    /// handshake line and not sent yet, then what the direction's pipe held. Written first
    /// when the session resumes.
    public var pending: [UInt8]
    /// The source's end of stream was read (it is not read again).
    public var sourceEnded: Bool
    /// The end of stream was passed on (the destination's write side is shut down): the
    /// direction has ended.
    public var finished: Bool

    /// A direction's state.
    public init(pending: [UInt8] = [], sourceEnded: Bool = false, finished: Bool = false) {
        self.pending = pending
        self.sourceEnded = sourceEnded
        self.finished = finished
    }
}

/// A session stopped for a handover: its two sockets, untouched (still connected, no FIN,
/// no reset, blocking mode as the plane left it: nonblocking), and both directions' state.
/// The caller owns the sockets from here on: it hands them to the next process, resumes them
/// (``SplicePlane/resume(_:meter:limits:onEnd:)``), or closes them.
public struct FrozenSplice: Sendable {
    /// The ``SpliceSession/id`` the session had.
    public let id: UInt64
    public let first: Descriptor
    public let second: Descriptor
    /// First → second.
    public var forward: FrozenDirection
    /// Second → first.
    public var backward: FrozenDirection

    /// A frozen session (also how a new process rebuilds one from what it was handed).
    public init(id: UInt64, first: Descriptor, second: Descriptor, forward: FrozenDirection, backward: FrozenDirection)
    {
        self.id = id
        self.first = first
        self.second = second
        self.forward = forward
        self.backward = backward
    }
}
