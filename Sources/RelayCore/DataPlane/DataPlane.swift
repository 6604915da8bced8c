import NIOCore
import RelayDataPlane

/// Where a session's bytes move once both its sockets are joined (S11–S20): the seam
/// between a session and its data path. Both sockets are owned descriptors; the data plane
/// takes them and keeps ``SessionPump``'s contract (backpressure, FIN passed on after every
/// byte before it, a reset on either side resets both, the half-close limit, counters kept
/// current). Bytes already read past a handshake line (``OwnedSocket/pending``) go first.
///
/// Two implementations: ``SpliceDataPlane`` (splice(2) in the kernel, the default on Linux
/// for plaintext sessions) and ``UserSpaceDataPlane`` (adopts both sockets into NIO and runs a
/// ``SessionPump``: the portable fallback, and the path for sessions that need user space,
/// such as TLS).
public protocol DataPlane: Sendable {
    /// Starts pumping `first` and `second` (each taken from its owner) and returns the run.
    /// "Forward" is first → second.
    func start(_ first: OwnedSocket, _ second: OwnedSocket, meter: TrafficMeter, limits: PumpLimits) -> any PumpRunning
}

/// A session's pump while it runs.
public protocol PumpRunning: Sendable {
    /// Ends the run now, resetting both sockets; the outcome then says `reason`.
    func kill(reason: String)
    /// How the run ended (waits for it).
    var outcome: PumpOutcome { get async }
    /// Calls `body` once with the outcome, on a task of the global executor, when the run
    /// ends (or soon, if it has): how a daemon finishes a session without a task of its own
    /// waiting through the session's life (an idle session would keep that task's memory).
    func whenEnded(_ body: @escaping @Sendable (PumpOutcome) -> Void)
    /// The run's ``SpliceSession/id`` on the splice plane (what a handover freezes), or nil
    /// for a run in user space.
    var spliceID: UInt64? { get }
}

extension PumpRunning {
    public var spliceID: UInt64? { nil }

    /// A task awaits ``outcome`` (a run in user space has its own task anyway).
    public func whenEnded(_ body: @escaping @Sendable (PumpOutcome) -> Void) {
        Task { body(await self.outcome) }
    }
}

/// The data planes a daemon can be configured with (`dataPlane` in either config).
public enum DataPlaneKind: String, Sendable, Equatable, CaseIterable {
    /// splice(2) on epoll loops of the daemon's own (Linux).
    case splice
    /// NIO in user space: the portable pump.
    case userspace

    /// The default: splice.
    public static let `default` = DataPlaneKind.splice
}

extension ConfigReader {
    /// `dataPlane` of either daemon's config: "splice" (default) or "userspace".
    public func dataPlane(_ root: [String: JSONValue]) -> DataPlaneKind {
        guard let text = self.string(root, "dataPlane", at: "$", required: false) else { return .default }
        guard let kind = DataPlaneKind(rawValue: text) else {
            let names = DataPlaneKind.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: " or ")
            self.problem("$.dataPlane", "must be \(names), not \"\(text)\"")
            return .default
        }
        return kind
    }
}

extension DataPlaneKind {
    /// The data plane of this kind: the process's shared splice plane, or a user-space pump
    /// on `group`'s event loops.
    public func make(group: any EventLoopGroup) -> any DataPlane {
        switch self {
        case .splice: SpliceDataPlane(plane: SpliceDataPlane.shared)
        case .userspace: UserSpaceDataPlane(group: group)
        }
    }
}

extension DataPlane {
    /// Starts pumping two session links: two owned sockets go to this data plane (splice
    /// for a plaintext session); a link already in NIO (a TLS data channel) puts the session
    /// in user space, on this plane when it is the user-space one.
    public func start(_ first: SessionLink, _ second: SessionLink, meter: TrafficMeter, limits: PumpLimits)
        -> any PumpRunning
    {
        if case .socket(let firstSocket) = first, case .socket(let secondSocket) = second {
            return self.start(firstSocket, secondSocket, meter: meter, limits: limits)
        }
        let userSpace = self as? UserSpaceDataPlane ?? UserSpaceDataPlane()
        return userSpace.start(links: first, second, meter: meter, limits: limits)
    }
}
