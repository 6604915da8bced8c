import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// How the daemons find a dead peer at the TCP level, on every connection they hold
/// (control channels, data channels, clients, targets): keepalive probes on an idle
/// connection, and `TCP_USER_TIMEOUT` on a connection whose sent bytes go unacknowledged.
/// Both are config keys of both daemons (`tcpKeepaliveSeconds`, `tcpUserTimeoutSeconds`);
/// 0 turns one off (the kernel's defaults: no probes, about 15 minutes of retransmissions).
public struct TCPTuning: Sendable, Equatable {
    /// Default `tcpKeepaliveSeconds`.
    public static let defaultKeepalive = 30.0
    /// Default `tcpUserTimeoutSeconds`.
    public static let defaultUserTimeout = 60.0
    /// Keepalive probes sent before an idle peer is declared dead.
    public static let keepaliveProbes: CInt = 3

    /// Seconds of silence before the first keepalive probe; probes then follow every third
    /// of that, and after ``keepaliveProbes`` unanswered ones the connection fails. 0: off.
    public var keepalive: Double
    /// Seconds that sent bytes may stay unacknowledged before the connection fails. 0: off.
    public var userTimeout: Double

    /// A tuning with both settings.
    public init(keepalive: Double = Self.defaultKeepalive, userTimeout: Double = Self.defaultUserTimeout) {
        self.keepalive = keepalive
        self.userTimeout = userTimeout
    }

    /// Whole seconds for the kernel's keepalive settings: idle time and probe interval.
    var keepaliveTimes: (idle: CInt, interval: CInt)? {
        guard self.keepalive > 0 else { return nil }
        let idle = max(1, CInt(self.keepalive.rounded(.up)))
        return (idle, max(1, idle / 3))
    }

    /// The longest an idle connection to a vanished peer stays open: the idle time plus
    /// every probe, or nil when keepalive is off.
    public var deadIdlePeerBound: Double? {
        guard let times = self.keepaliveTimes else { return nil }
        return Double(times.idle + times.interval * Self.keepaliveProbes)
    }

    /// Applies the settings to a connected TCP socket, on its event loop.
    func apply(to channel: any Channel) throws {
        guard let options = channel.syncOptions else { return }
        if let times = self.keepaliveTimes {
            try options.setOption(.socketOption(.so_keepalive), value: 1)
            try options.setOption(.tcpOption(.init(rawValue: TCP_KEEPIDLE)), value: Int(times.idle))
            try options.setOption(.tcpOption(.init(rawValue: TCP_KEEPINTVL)), value: Int(times.interval))
            try options.setOption(.tcpOption(.init(rawValue: TCP_KEEPCNT)), value: Int(Self.keepaliveProbes))
        }
        if self.userTimeout > 0 {
            let milliseconds = CInt(min(self.userTimeout * 1000, Double(CInt.max)))
            try options.setOption(.tcpOption(.init(rawValue: CInt(TCP_USER_TIMEOUT))), value: Int(milliseconds))
        }
    }
}

extension ConfigReader {
    /// The config keys both daemons share for ``TCPTuning``.
    public static let tcpTuningKeys: Set<String> = ["tcpKeepaliveSeconds", "tcpUserTimeoutSeconds"]

    /// `tcpKeepaliveSeconds` and `tcpUserTimeoutSeconds` of a daemon's config (0 turns one off).
    public func tcpTuning(_ root: [String: JSONValue]) -> TCPTuning {
        TCPTuning(
            keepalive: self.seconds(
                root, "tcpKeepaliveSeconds", at: "$", default: TCPTuning.defaultKeepalive, range: 0...7200),
            userTimeout: self.seconds(
                root, "tcpUserTimeoutSeconds", at: "$", default: TCPTuning.defaultUserTimeout, range: 0...86400)
        )
    }
}
