import RelayControl

/// The settings both daemons' configs share, so that a reload reports their changes the
/// same way at the relay and at the agent.
public protocol DaemonSettings {
    /// `drainTimeoutSeconds`.
    var drainTimeout: Double { get }
    /// `halfCloseTimeoutSeconds`.
    var halfCloseTimeout: Double { get }
    /// `sessionIdleTimeoutSeconds`.
    var sessionIdleTimeout: Double { get }
    /// `tcpKeepaliveSeconds`, `tcpUserTimeoutSeconds`, `dataUserTimeoutSeconds`.
    var tcp: TCPTuning { get }
    /// `removedServiceSessions`.
    var removedServiceSessions: RemovedServiceRule { get }
    /// `metrics`: bound at start, kept until a restart.
    var metrics: HostPort? { get set }
    /// `dataPlane`: chosen at start, kept until a restart.
    var dataPlane: DataPlaneKind { get set }
}

extension DaemonSettings {
    /// Change lines for the shared settings and the daemon's own `timeouts`, against `old`;
    /// a changed `metrics` address is put back to `old`'s (it needs a restart) and said so.
    public mutating func reloadChanges(
        from old: Self,
        timeouts: [(key: String, old: Double, new: Double)]
    ) -> [String] {
        let shared: [(key: String, old: Double, new: Double)] = [
            ("drainTimeoutSeconds", old.drainTimeout, self.drainTimeout),
            ("halfCloseTimeoutSeconds", old.halfCloseTimeout, self.halfCloseTimeout),
            ("sessionIdleTimeoutSeconds", old.sessionIdleTimeout, self.sessionIdleTimeout),
            ("tcpKeepaliveSeconds", old.tcp.keepalive, self.tcp.keepalive),
            ("tcpUserTimeoutSeconds", old.tcp.userTimeout, self.tcp.userTimeout),
            ("dataUserTimeoutSeconds", old.tcp.dataUserTimeout, self.tcp.dataUserTimeout),
        ]
        var changes = ReloadOutcome.changedSeconds(timeouts + shared)
        if self.removedServiceSessions != old.removedServiceSessions {
            changes.append("removedServiceSessions is now \(self.removedServiceSessions.rawValue)")
        }
        if self.metrics != old.metrics {
            changes.append("metrics stays \(old.metrics.map { "\($0)" } ?? "off") until a restart")
            self.metrics = old.metrics
        }
        if let warning = self.metrics?.metricsExposureWarning { changes.append("warning: \(warning)") }
        if self.dataPlane != old.dataPlane {
            changes.append("dataPlane stays \(old.dataPlane.rawValue) until a restart")
            self.dataPlane = old.dataPlane
        }
        return changes
    }
}
