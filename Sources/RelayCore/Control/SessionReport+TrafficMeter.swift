import RelayControl

extension SessionReport {
    /// The state of a session whose pump runs, from its meter's finished flags.
    public static func state(of meter: TrafficMeter) -> String {
        switch (meter.forwardFinished, meter.backwardFinished) {
        case (false, false): "open"
        case (true, false): "half-closed-in"
        case (false, true): "half-closed-out"
        case (true, true): "closing"
        }
    }
}
