import NIOCore

@testable import RelayCore

/// A pump's two endpoints on real loopback connections and the outer peers that drive them:
///
///     client ⇄ first ‖ pump ‖ second ⇄ target
///
/// `first` and `second` are what the pump gets; the test writes, reads, half-closes and
/// resets through `client` and `target`.
struct PumpRig: Sendable {
    let client: Peer
    let first: Peer
    let second: Peer
    let target: Peer

    /// Runs `body` with a fresh rig; all four connections end in `executeThenClose`.
    static func with<R: Sendable>(_ body: (PumpRig) async throws -> R) async throws -> R {
        try await Loopback.withConnection { client, first in
            try await Loopback.withConnection { second, target in
                try await body(PumpRig(client: client, first: first, second: second, target: target))
            }
        }
    }

    /// The outer peer on `side`.
    func outer(_ side: Side) -> Peer {
        side == .client ? self.client : self.target
    }

    /// Starts `pump` on the two inner endpoints.
    func start(
        _ pump: any SessionPump, meter: TrafficMeter = TrafficMeter(), limits: PumpLimits = PumpLimits()
    ) -> PumpRun {
        PumpRun(pump: pump, first: self.first.endpoint, second: self.second.endpoint, meter: meter, limits: limits)
    }
}

/// A pump running in its own task.
final class PumpRun: Sendable {
    /// Raised when `run` has returned.
    let ended = Flag()
    private let task: Task<PumpOutcome, Never>

    init(pump: any SessionPump, first: PumpEndpoint, second: PumpEndpoint, meter: TrafficMeter, limits: PumpLimits) {
        let ended = self.ended
        self.task = Task {
            let outcome = await pump.run(first, second, meter: meter, limits: limits)
            ended.raise()
            return outcome
        }
    }

    /// How the run ended (waits for it).
    var outcome: PumpOutcome {
        get async { await self.task.value }
    }

    /// How the run ended, or nil if it has not ended within `seconds`.
    func outcome(within seconds: Double) async -> PumpOutcome? {
        await self.ended.wait(seconds: seconds) ? await self.task.value : nil
    }
}

/// One side of a rig: the outer peer and the pump endpoint it stands behind.
enum Side: String, Sendable, CaseIterable {
    case client
    case target

    /// The pump endpoint on this side.
    var endpoint: PumpOutcome.Endpoint { self == .client ? .first : .second }

    var other: Side { self == .client ? .target : .client }
}
