import NIOCore
import RelayDataPlane

#if canImport(Glibc)
    import Glibc
#endif

/// How the daemons find a dead peer at the TCP level: keepalive probes on an idle
/// connection (every connection the daemon holds), and `TCP_USER_TIMEOUT` on a connection
/// whose sent bytes go unacknowledged.
///
/// The user timeout is on for control channels by default and off for the connections that
/// carry sessions (data channels, clients, targets): Linux counts a closed receive window
/// against it too, so a client that pauses reading for longer than the timeout (a paused
/// download, a suspended terminal) would have its session cut. Keys of both daemons:
/// `tcpKeepaliveSeconds`, `tcpUserTimeoutSeconds` (control channels),
/// `dataUserTimeoutSeconds` (session connections); 0 turns one off.
public struct TCPTuning: Sendable, Equatable {
    /// The kind of connection a setting applies to.
    public enum Role: Sendable {
        /// A control channel: always read by its peer, so a closed window means a stuck peer.
        case control
        /// A data channel, a client or a target connection: its window closes when a reader
        /// downstream pauses.
        case data
    }

    /// Default `tcpKeepaliveSeconds`.
    public static let defaultKeepalive = 30.0
    /// Default `tcpUserTimeoutSeconds`.
    public static let defaultUserTimeout = 60.0
    /// Default `dataUserTimeoutSeconds`: off.
    public static let defaultDataUserTimeout = 0.0
    /// Keepalive probes sent before an idle peer is declared dead.
    public static let keepaliveProbes: CInt = 3

    /// Seconds of silence before the first keepalive probe; probes then follow every third
    /// of that, and after ``keepaliveProbes`` unanswered ones the connection fails. 0: off.
    public var keepalive: Double
    /// Seconds that bytes sent on a control channel may stay unacknowledged before it
    /// fails. 0: off.
    public var userTimeout: Double
    /// The same for data channels, clients and targets. 0: off.
    public var dataUserTimeout: Double

    /// A tuning with these settings.
    public init(
        keepalive: Double = Self.defaultKeepalive,
        userTimeout: Double = Self.defaultUserTimeout,
        dataUserTimeout: Double = Self.defaultDataUserTimeout
    ) {
        self.keepalive = keepalive
        self.userTimeout = userTimeout
        self.dataUserTimeout = dataUserTimeout
    }

    /// Whole seconds for the kernel's keepalive settings: idle time and probe interval.
    var keepaliveTimes: (idle: CInt, interval: CInt)? {
        guard self.keepalive > 0 else { return nil }
        let idle = max(1, CInt(self.keepalive.rounded(.up)))
        return (idle, max(1, idle / 3))
    }

    /// The `TCP_USER_TIMEOUT` a connection of `role` gets, in seconds (0: none): its
    /// configured value, but never longer than the keepalive's own bound. Linux lets a set
    /// user timeout, not the probe count, decide when keepalive gives up, so a longer one
    /// would stretch `tcpKeepaliveSeconds`'s bound.
    public func userTimeout(for role: Role) -> Double {
        let configured = role == .control ? self.userTimeout : self.dataUserTimeout
        guard configured > 0, let bound = self.keepaliveBound else { return configured }
        return min(configured, bound)
    }

    /// Idle time plus every probe, or nil when keepalive is off.
    private var keepaliveBound: Double? {
        guard let times = self.keepaliveTimes else { return nil }
        return Double(times.idle + times.interval * Self.keepaliveProbes)
    }

    /// The longest an idle session connection to a vanished peer stays open, or nil when
    /// keepalive is off.
    public var deadIdlePeerBound: Double? {
        guard let bound = self.keepaliveBound else { return nil }
        let userTimeout = self.userTimeout(for: .data)
        return userTimeout > 0 ? userTimeout : bound
    }

    /// Applies the settings for `role` to a TCP socket, on its event loop.
    public func apply(to channel: any Channel, role: Role) throws {
        guard let options = channel.syncOptions else { return }
        if let times = self.keepaliveTimes {
            try options.setOption(.socketOption(.so_keepalive), value: 1)
            try options.setOption(.tcpOption(.init(rawValue: TCP_KEEPIDLE)), value: Int(times.idle))
            try options.setOption(.tcpOption(.init(rawValue: TCP_KEEPINTVL)), value: Int(times.interval))
            try options.setOption(.tcpOption(.init(rawValue: TCP_KEEPCNT)), value: Int(Self.keepaliveProbes))
        }
        try Self.setUserTimeout(self.userTimeout(for: role), on: options)
    }

    /// Applies the settings for `role` to a TCP socket the daemon owns as a descriptor.
    public func apply(to descriptor: Descriptor, role: Role) throws(SystemError) {
        if let times = self.keepaliveTimes {
            try descriptor.setOption(level: SOL_SOCKET, name: SO_KEEPALIVE, value: 1)
            try descriptor.setOption(level: Int32(IPPROTO_TCP), name: TCP_KEEPIDLE, value: times.idle)
            try descriptor.setOption(level: Int32(IPPROTO_TCP), name: TCP_KEEPINTVL, value: times.interval)
            try descriptor.setOption(level: Int32(IPPROTO_TCP), name: TCP_KEEPCNT, value: Self.keepaliveProbes)
        }
        let milliseconds = Int32(min(max(0, self.userTimeout(for: role)) * 1000, Double(Int32.max)))
        try descriptor.setOption(level: Int32(IPPROTO_TCP), name: Int32(TCP_USER_TIMEOUT), value: milliseconds)
    }

    /// Gives an accepted descriptor the control channel's user timeout, once its first line
    /// showed it is one.
    public func applyControl(to descriptor: Descriptor) throws(SystemError) {
        let milliseconds = Int32(min(max(0, self.userTimeout(for: .control)) * 1000, Double(Int32.max)))
        try descriptor.setOption(level: Int32(IPPROTO_TCP), name: Int32(TCP_USER_TIMEOUT), value: milliseconds)
    }

    private static func setUserTimeout(_ seconds: Double, on options: some NIOSynchronousChannelOptions) throws {
        let milliseconds = Int(min(max(0, seconds) * 1000, Double(CInt.max)))
        try options.setOption(.tcpOption(.init(rawValue: CInt(TCP_USER_TIMEOUT))), value: milliseconds)
    }
}

extension ConfigReader {
    /// The config keys both daemons share for ``TCPTuning``.
    public static let tcpTuningKeys: Set<String> = [
        "tcpKeepaliveSeconds", "tcpUserTimeoutSeconds", "dataUserTimeoutSeconds",
    ]

    /// `tcpKeepaliveSeconds`, `tcpUserTimeoutSeconds` and `dataUserTimeoutSeconds` of a
    /// daemon's config (0 turns one off).
    public func tcpTuning(_ root: [String: JSONValue]) -> TCPTuning {
        TCPTuning(
            keepalive: self.seconds(
                root, "tcpKeepaliveSeconds", at: "$", default: TCPTuning.defaultKeepalive, range: 0...7200),
            userTimeout: self.seconds(
                root, "tcpUserTimeoutSeconds", at: "$", default: TCPTuning.defaultUserTimeout, range: 0...86400),
            dataUserTimeout: self.seconds(
                root, "dataUserTimeoutSeconds", at: "$", default: TCPTuning.defaultDataUserTimeout, range: 0...86400)
        )
    }
}
