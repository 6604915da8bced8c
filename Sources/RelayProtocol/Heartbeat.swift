/// Liveness of one control channel, seen from one end: when to ping, when the peer is dead,
/// and the last measured round trip. Any line received counts as a sign of life.
public struct Heartbeat: Sendable {
    /// What the owner of a heartbeat must do after a ``tick(at:)``.
    public enum TickAction: Equatable, Sendable {
        /// Nothing is due.
        case none
        /// Send `ping` with this sequence number.
        case sendPing(UInt64)
        /// Nothing was heard for longer than the timeout: the peer is dead, close the channel.
        case expired
    }

    /// How often a ping is sent.
    public private(set) var interval: Duration
    /// How long the peer may stay silent before it is declared dead.
    public private(set) var timeout: Duration
    /// When the peer was last heard from.
    public private(set) var lastHeard: ContinuousClock.Instant
    /// The round trip of the last answered ping, if any.
    public private(set) var lastRoundTrip: Duration?
    private var nextPing: ContinuousClock.Instant
    private var nextSequence: UInt64 = 1
    private var outstanding: (seq: UInt64, sentAt: ContinuousClock.Instant)?

    /// Starts the clock at `now`, as if the peer had just spoken.
    public init(interval: Duration, timeout: Duration, now: ContinuousClock.Instant) {
        self.interval = interval
        self.timeout = timeout
        self.lastHeard = now
        self.nextPing = now + interval
    }

    /// Applies new settings (a reload) without forgetting when the peer was last heard;
    /// the next ping is due one new interval from `now` at the latest.
    public mutating func retune(interval: Duration, timeout: Duration, now: ContinuousClock.Instant) {
        self.interval = interval
        self.timeout = timeout
        self.nextPing = min(self.nextPing, now + interval)
    }

    /// Records a sign of life (any received line).
    public mutating func heard(at now: ContinuousClock.Instant) {
        self.lastHeard = now
    }

    /// Records a `pong`; a pong for the outstanding ping yields a round-trip figure.
    public mutating func pong(seq: UInt64, at now: ContinuousClock.Instant) {
        self.lastHeard = now
        if let outstanding = self.outstanding, outstanding.seq == seq {
            self.lastRoundTrip = now - outstanding.sentAt
            self.outstanding = nil
        }
    }

    /// Decides what is due at `now`: call it at least every ``interval``.
    public mutating func tick(at now: ContinuousClock.Instant) -> TickAction {
        if now - self.lastHeard > self.timeout { return .expired }
        guard now >= self.nextPing else { return .none }
        let seq = self.nextSequence
        self.nextSequence += 1
        self.nextPing = now + self.interval
        if self.outstanding == nil { self.outstanding = (seq, now) }
        return .sendPing(seq)
    }
}
