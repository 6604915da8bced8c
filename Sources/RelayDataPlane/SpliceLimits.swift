/// The limits of one spliced session (RelayCore's `PumpLimits`, without NIO).
public struct SpliceLimits: Sendable, Equatable {
    /// Once one direction has ended (its FIN was passed on), the session is reset when no
    /// byte moves either way for this long, counted from the FIN or the last byte, whichever
    /// came later: a peer that never answers and never closes cannot hold a session forever.
    /// Nil: no limit. Checked to the millisecond by the loop's own timer; never early.
    public var halfCloseTimeout: Duration?
    /// The session is reset when no byte moves either way for this long, half-closed or
    /// not (``SpliceOutcome/idleTimeout(after:)``). Nil: no limit. Checked like the half-close timeout.
    public var idleTimeout: Duration?

    /// Limits with the given half-close and idle timeouts (nil: none).
    public init(halfCloseTimeout: Duration? = .seconds(120), idleTimeout: Duration? = nil) {
        self.halfCloseTimeout = halfCloseTimeout
        self.idleTimeout = idleTimeout
    }
}
