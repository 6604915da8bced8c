/// Exponential reconnect backoff with jitter: `initial`, doubling up to `maximum`, each
/// delay spread by ±`jitter` so that many agents do not reconnect in step.
public struct Backoff: Sendable {
    /// The first delay.
    public let initial: Duration
    /// The longest delay.
    public let maximum: Duration
    /// The fraction by which a delay is randomly lengthened or shortened.
    public let jitter: Double
    private var current: Duration

    /// Creates a backoff starting at `initial`.
    public init(initial: Duration, maximum: Duration, jitter: Double = 0.2) {
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.current = initial
    }

    /// The delay to wait now; the next one will be twice as long, up to the maximum.
    public mutating func next() -> Duration {
        let base = self.current
        self.current = min(self.current * 2, self.maximum)
        let spread = Double.random(in: -self.jitter...self.jitter)
        return base * (1 + spread)
    }

    /// Back to the first delay (after a connection that lasted).
    public mutating func reset() {
        self.current = self.initial
    }
}
