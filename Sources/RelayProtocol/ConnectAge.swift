/// How late a `connect` reaches the agent, judged without comparing the two hosts' wall
/// clocks: the relay stamps what it sends with its monotonic clock (`at`, milliseconds), the
/// agent notes its own monotonic clock when a message arrives, and the difference of the two
/// is the clocks' offset plus the one-way delay. Its minimum over recent handshake and
/// heartbeat messages is the channel's baseline; a `connect` whose difference exceeds the
/// baseline by more than its `expiresIn` arrived after the relay stopped waiting (the agent
/// was stalled, or the path held it), and is dropped without dialling the target.
///
/// One per control channel: the relay's clock readings mean nothing across channels.
public struct ConnectAge: Sendable {
    /// Recent (receive time − `at`) differences, oldest first, at most `capacity`.
    private var samples: [Int64] = []
    private let capacity: Int

    /// An estimator keeping the last `capacity` samples.
    public init(capacity: Int = ProtocolLimits.connectAgeSamples) {
        self.capacity = max(1, capacity)
    }

    /// The smallest offset seen recently, once there is one.
    public var baseline: Int64? { self.samples.min() }

    /// Notes a handshake or heartbeat message stamped `at` by the relay, received at
    /// `receivedAt` on the agent's monotonic clock (both milliseconds).
    public mutating func observe(at: UInt64, receivedAt: UInt64) {
        if self.samples.count == self.capacity { self.samples.removeFirst() }
        self.samples.append(Self.offset(at: at, receivedAt: receivedAt))
    }

    /// How much later than the quickest recent message a message stamped `at` and received
    /// at `receivedAt` arrived, in milliseconds (0 without a baseline yet).
    public func lag(at: UInt64, receivedAt: UInt64) -> Int64 {
        let offset = Self.offset(at: at, receivedAt: receivedAt)
        guard let baseline = self.baseline else { return 0 }
        // Stamps come from the peer: any values, so no arithmetic may trap.
        let (difference, overflow) = offset.subtractingReportingOverflow(baseline)
        if overflow { return offset > baseline ? .max : 0 }
        return max(0, difference)
    }

    /// Whether `connect` arrived after the relay stopped waiting for it: its lag exceeds its
    /// `expiresIn`. A `connect` without `at` or `expiresIn` never expires here.
    public func isExpired(_ connect: ControlMessage.Connect, receivedAt: UInt64) -> Bool {
        guard let at = connect.at, let expiresIn = connect.expiresIn else { return false }
        return self.lag(at: at, receivedAt: receivedAt) > Int64(clamping: expiresIn)
    }

    private static func offset(at: UInt64, receivedAt: UInt64) -> Int64 {
        Int64(clamping: receivedAt) &- Int64(clamping: at)
    }
}
