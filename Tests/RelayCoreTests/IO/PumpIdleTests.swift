import NIOCore
import RelayDataPlane
import Testing

@testable import RelayCore

extension IOTests {
    /// `sessionIdleTimeoutSeconds` on every data plane: a session that moves no byte either
    /// way for the limit is reset at both ends; one with bytes trickling is left alone.
    @Suite(.timeLimit(.minutes(1)))
    struct PumpIdleTests {
        static let up = TestPattern(seed: 3)

        @Test(arguments: PumpContractTests.planes)
        func anIdleSessionIsCut(plane: any DataPlane) async throws {
            let limit = 0.5
            try await PumpRig.with { rig in
                let run = rig.start(plane, limits: PumpLimits(halfCloseTimeoutSeconds: 0, idleTimeoutSeconds: limit))
                // Neither peer sends or closes.
                let start = ContinuousClock.now
                let outcome = await run.outcome(within: 10)
                let elapsed = Timing.milliseconds(since: start)
                print(
                    "figure: idle session through \(plane): cut after \(elapsed) ms (limit \(Int(limit * 1000)) ms): "
                        + "\(outcome.map { "\($0)" } ?? "not cut")")
                guard case .failed(_, let reason)? = outcome else {
                    Issue.record("not cut: \(String(describing: outcome))")
                    return
                }
                #expect(reason.contains("idle for") && reason.contains("sessionIdleTimeoutSeconds"), "\(reason)")
                #expect(Double(elapsed) >= limit * 1000 - 50, "never early")
                #expect(Double(elapsed) <= limit * 1000 + 1000 + 1000)
                let seen = try await Timing.withTimeout(5) { await rig.target.receive(Self.up) }
                #expect(seen?.end?.isReset == true, "\(String(describing: seen))")
            }
        }

        @Test(arguments: PumpContractTests.planes)
        func aSessionWithBytesTricklingIsNotCut(plane: any DataPlane) async throws {
            let limit = 0.5
            let ticks = 15
            let bytesPerTick = 100
            try await PumpRig.with { rig in
                let run = rig.start(plane, limits: PumpLimits(halfCloseTimeoutSeconds: 0, idleTimeoutSeconds: limit))
                async let received = rig.target.receive(Self.up)
                for tick in 0..<ticks {
                    try await rig.client.send(Self.up, from: tick * bytesPerTick, count: bytesPerTick)
                    try await Task.sleep(for: .milliseconds(100))
                }
                #expect(!run.ended.isRaised, "cut while bytes were moving")
                try await rig.client.finishWriting()
                try await rig.target.finishWriting()
                let got = await received
                #expect(got.isIntact(ticks * bytesPerTick), "\(got)")
                #expect(await run.outcome == .finished)
            }
        }
    }
}
