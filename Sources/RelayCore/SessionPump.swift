import NIOCore

/// How a pump run ended.
public enum PumpOutcome: Sendable, Equatable {
    /// Both directions ended with a clean end of stream (each FIN passed on as a half-close).
    case finished
    /// A read or write failed on one endpoint (a reset, an error, a close from outside):
    /// both connections were reset at once.
    case failed(endpoint: Endpoint, reason: String)

    /// Which endpoint of the pump an error came from.
    public enum Endpoint: Sendable, Equatable {
        case first, second
    }
}

/// Joins two connections and moves bytes both ways until both are done (S11–S20).
///
/// The contract every implementation keeps:
/// - backpressure: a slow reader stalls its writer; no buffer grows without bound;
/// - half-close: end of stream on one side becomes a shutdown of writes on the other, and
///   the run ends when both directions have ended; every byte read from one side has been
///   handed to the other side's socket before that side's write shutdown, so no tail is
///   lost behind a clean FIN;
/// - an error or reset on either side closes both connections at once, abortively
///   (`Channel.abort()`), so each peer sees a reset and the next hop tears down too;
/// - the meter is kept current while bytes move.
public protocol SessionPump: Sendable {
    /// Runs until both directions are done or one side fails. Never throws: the outcome says how it ended.
    func run(_ first: PumpEndpoint, _ second: PumpEndpoint, meter: TrafficMeter, limits: PumpLimits) async
        -> PumpOutcome
}

/// The time limits of one pump run, from the config in force when the session opened.
public struct PumpLimits: Sendable, Equatable {
    /// Default `halfCloseTimeoutSeconds`.
    public static let defaultHalfCloseTimeout = 120.0
    /// The half-close watch looks at the meter at least this often.
    static let longestHalfCloseTick = Duration.seconds(1)

    /// Once one direction has ended (one side sent its FIN), the session is reset when no
    /// byte moves either way for this long: a peer that never answers and never closes
    /// after a half-close cannot hold a session forever. Nil: no limit.
    public var halfCloseTimeout: Duration?

    /// Default `sessionIdleTimeoutSeconds`: an hour. Long enough for an interactive session
    /// (SSH with its keepalives off, a database console) left alone over a meeting; short
    /// enough that connections a client opened and abandoned (or opened to hold a target's
    /// connection slots) do not pile up for days. 0 turns the limit off.
    public static let defaultSessionIdleTimeout = 3600.0

    /// The session is reset when no byte moved either way for this long, whether or not a
    /// direction has ended. Nil: no limit.
    public var idleTimeout: Duration?

    /// Limits with the given half-close and idle timeouts in seconds (0: no limit).
    public init(halfCloseTimeoutSeconds: Double = Self.defaultHalfCloseTimeout, idleTimeoutSeconds: Double = 0) {
        self.halfCloseTimeout = halfCloseTimeoutSeconds > 0 ? .seconds(halfCloseTimeoutSeconds) : nil
        self.idleTimeout = idleTimeoutSeconds > 0 ? .seconds(idleTimeoutSeconds) : nil
    }
}

extension ConfigReader {
    /// `halfCloseTimeoutSeconds` of either daemon's config (default
    /// ``PumpLimits/defaultHalfCloseTimeout``; 0: no limit).
    public func halfCloseTimeout(_ root: [String: JSONValue]) -> Double {
        self.seconds(
            root, "halfCloseTimeoutSeconds", at: "$", default: PumpLimits.defaultHalfCloseTimeout, range: 0...86400)
    }
}
