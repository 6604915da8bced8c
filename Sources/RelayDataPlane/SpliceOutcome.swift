/// One of the two sockets of a spliced session, in the order they were given to
/// ``SplicePlane/start(first:second:pendingForward:pendingBackward:meter:limits:onEnd:)``
/// (at the relay: the client first, the data channel second).
public enum SpliceSide: Sendable, Equatable, CustomStringConvertible {
    case first
    case second

    /// The other socket.
    public var other: SpliceSide { self == .first ? .second : .first }

    public var description: String { self == .first ? "first" : "second" }
}

/// How a spliced session ended. Every session ends exactly once, with one of these.
public enum SpliceOutcome: Sendable, Equatable, CustomStringConvertible {
    /// Both directions ended with a clean end of stream, each passed on as a write shutdown
    /// after every byte before it; both sockets were closed.
    case finished
    /// A read or write on `side`'s socket failed (a reset, a broken pipe, a pending socket
    /// error): both sockets were reset at once. `reason` is the error in lowercase words
    /// ("connection reset by peer").
    case failed(SpliceSide, reason: String)
    /// One direction had ended and nothing moved either way for `after`
    /// (``SpliceLimits/halfCloseTimeout``): `idle` is the side that never sent its FIN.
    /// Both sockets were reset.
    case halfCloseTimeout(idle: SpliceSide, after: Duration)
    /// Nothing moved either way for `after` (``SpliceLimits/idleTimeout``); both sockets were reset.
    case idleTimeout(after: Duration)
    /// Ended here, by neither peer: ``SpliceSession/kill(reason:)``, the plane shutting
    /// down, or a session that could not start (its sockets could not be made
    /// nonblocking). Both sockets were reset. (A session that gets no pipe is not ended:
    /// its direction waits for one.)
    case aborted(reason: String)

    /// The socket the failure is blamed on, if one is.
    public var side: SpliceSide? {
        switch self {
        case .finished, .aborted, .idleTimeout: nil
        case .failed(let side, _): side
        case .halfCloseTimeout(let idle, _): idle
        }
    }

    /// The reason in the words RelayCore's pump uses for `PumpOutcome.failed`
    /// ("connection reset by peer", "half-closed and idle for 120s"); "finished" when clean.
    public var reason: String {
        switch self {
        case .finished: "finished"
        case .failed(_, let reason): reason
        case .halfCloseTimeout(_, let after): "half-closed and idle for \(Self.seconds(after))s"
        case .idleTimeout(let after): "idle for \(Self.seconds(after))s (sessionIdleTimeoutSeconds)"
        case .aborted(let reason): reason
        }
    }

    public var description: String {
        switch self {
        case .finished: "finished"
        case .failed(let side, let reason): "failed at the \(side) socket: \(reason)"
        case .halfCloseTimeout(let idle, _): "\(self.reason) (the \(idle) socket stayed open)"
        case .idleTimeout: self.reason
        case .aborted(let reason): "aborted: \(reason)"
        }
    }

    /// Whole seconds without a fraction, else milliseconds as a decimal ("0.5").
    private static func seconds(_ duration: Duration) -> String {
        let milliseconds = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
        return milliseconds % 1000 == 0
            ? "\(milliseconds / 1000)" : "\(Double(milliseconds) / 1000)"
    }
}
