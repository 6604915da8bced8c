import NIOCore
import Synchronization

@testable import RelayCore

/// A data plane's two sockets on real loopback connections and the outer peers that drive them:
///
///     client ⇄ first ‖ data plane ‖ second ⇄ target
///
/// `first` and `second` are owned sockets, as the daemons hold them: `first` accepted from the
/// client by an `OwnedListener`, `second` dialled to the target with `SocketIO.dial`; the plane
/// takes both. `client` and `target` are NIO peers through which the test writes, reads,
/// half-closes and resets.
struct PumpRig: Sendable {
    let client: Peer
    let first: OwnedSocket
    let second: OwnedSocket
    let target: Peer
    private let runs: Runs

    /// Runs `body` with a fresh rig. Both outer connections end in `executeThenClose`; a run
    /// still going when `body` returns or throws (a test that failed half-way) is killed, so
    /// that it does not outlive its test.
    static func with<R: Sendable>(_ body: (PumpRig) async throws -> R) async throws -> R {
        try await Loopback.withAcceptedSocket { client, first in
            try await Loopback.withDialledSocket { second, target in
                let rig = PumpRig(client: client, first: first, second: second, target: target, runs: Runs())
                defer { rig.runs.killAll() }
                return try await body(rig)
            }
        }
    }

    /// The outer peer on `side`.
    func outer(_ side: Side) -> Peer {
        side == .client ? self.client : self.target
    }

    /// The owned socket on `side`, connected to that side's outer peer.
    func inner(_ side: Side) -> OwnedSocket {
        side == .client ? self.first : self.second
    }

    /// The (local, remote) ports of the client's, the first, the second and the target's
    /// sockets, in that order, for ``KernelQueues``. The inner sockets' are their outer
    /// peers' reversed: the plane holds those descriptors, and may close them.
    var ports: [(local: Int, remote: Int)] {
        let client = (
            local: self.client.channel.localAddress?.port ?? -1, remote: self.client.channel.remoteAddress?.port ?? -1
        )
        let target = (
            local: self.target.channel.localAddress?.port ?? -1, remote: self.target.channel.remoteAddress?.port ?? -1
        )
        return [client, (client.remote, client.local), (target.remote, target.local), target]
    }

    /// Hands both inner sockets to `plane` and starts it.
    func start(
        _ plane: any DataPlane, meter: TrafficMeter = TrafficMeter(), limits: PumpLimits = PumpLimits()
    ) -> PumpRun {
        let run = PumpRun(plane.start(self.first, self.second, meter: meter, limits: limits))
        self.runs.add(run)
        return run
    }

    /// The runs started on a rig.
    private final class Runs: Sendable {
        private let started = Mutex<[PumpRun]>([])

        func add(_ run: PumpRun) {
            self.started.withLock { $0.append(run) }
        }

        /// Kills every run that has not ended (a no-op for those that have).
        func killAll() {
            for run in self.started.withLock({ $0 }) where !run.ended.isRaised {
                run.kill(reason: "the test ended")
            }
        }
    }
}

/// A data plane's run, its outcome awaited in a task of its own.
final class PumpRun: Sendable {
    /// Raised when the outcome is known.
    let ended = Flag()
    private let running: any PumpRunning
    private let task: Task<PumpOutcome, Never>

    init(_ running: any PumpRunning) {
        let ended = self.ended
        self.running = running
        self.task = Task {
            let outcome = await running.outcome
            ended.raise()
            return outcome
        }
    }

    /// Ends the run now (`PumpRunning.kill(reason:)`).
    func kill(reason: String) {
        self.running.kill(reason: reason)
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

/// One side of a rig: the outer peer and the plane's socket it is connected to.
enum Side: String, Sendable, CaseIterable {
    case client
    case target

    /// The plane's endpoint on this side.
    var endpoint: PumpOutcome.Endpoint { self == .client ? .first : .second }

    var other: Side { self == .client ? .target : .client }
}
