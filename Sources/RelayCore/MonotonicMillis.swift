/// This process's monotonic clock in whole milliseconds since its first reading: what the
/// relay stamps control messages with (`at`) and what the agent notes when they arrive.
/// Never compared across hosts, only differences within one control channel count.
public enum MonotonicMillis {
    private static let origin = ContinuousClock.now

    /// Milliseconds since the origin (taken at the first call).
    public static func now() -> UInt64 {
        let elapsed = self.origin.duration(to: .now).components
        return UInt64(max(0, elapsed.seconds)) * 1000 + UInt64(max(0, elapsed.attoseconds) / 1_000_000_000_000_000)
    }
}
