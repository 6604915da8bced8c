import FoundationEssentials
import Logging
import RelaySupport

extension Logger {
    /// The line every session ends with, at both daemons: bytes each way, how long it
    /// lasted, and why it ended.
    public func sessionClosed(meter: TrafficMeter, started: ContinuousClock.Instant, reason: String) {
        self.info(
            "session closed",
            metadata: [
                "bytesIn": "\(meter.forward)", "bytesOut": "\(meter.backward)",
                "duration": "\(started.elapsedForLog)", "reason": "\(reason)",
            ]
        )
    }
}

extension ContinuousClock.Instant {
    /// The time since this instant as a log field, in seconds with milliseconds ("1.234s").
    public var elapsedForLog: String {
        String(cFormat: "%.3fs", (ContinuousClock.now - self).inSeconds)
    }
}
