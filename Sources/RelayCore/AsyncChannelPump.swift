import FoundationEssentials
import NIOCore
import RelaySupport
import Synchronization

/// The portable pump: one task per direction over `NIOAsyncChannel` streams, so the two
/// connections may live on different event loops. Backpressure comes from the async
/// channel's inbound watermarks and its writer, which suspends while the socket is not writable.
public struct AsyncChannelPump: SessionPump {
    /// Creates the pump.
    public init() {}

    public func run(
        _ first: PumpEndpoint,
        _ second: PumpEndpoint,
        meter: TrafficMeter,
        limits: PumpLimits
    ) async -> PumpOutcome {
        // The first failure wins and tears the whole session down: the other direction's
        // read or write fails at once, and both peers see a reset (a FIN would leave the next
        // hop half-open).
        let failure = FirstFailure()
        @Sendable func fail(_ outcome: PumpOutcome) {
            guard failure.record(outcome) else { return }
            first.channel.abort()
            second.channel.abort()
        }
        // A connection that closes after its peer's half-close (a reset then), while bytes may
        // still be written to it, fails the session: nothing reads it any more to notice. While
        // a direction still reads it, that read fails with the precise reason instead.
        for (endpoint, side) in [(first, PumpOutcome.Endpoint.first), (second, .second)] {
            endpoint.channel.closeFuture.whenComplete { _ in
                let readsDone = side == .first ? meter.forwardFinished : meter.backwardFinished
                let writesDone = side == .first ? meter.backwardFinished : meter.forwardFinished
                if readsDone && !writesDone { fail(.failed(endpoint: side, reason: "connection closed")) }
            }
        }
        await withTaskGroup(of: PumpOutcome?.self) { group in
            group.addTask { await Self.copy(from: first, to: second, forward: true, meter: meter, failure: failure) }
            group.addTask { await Self.copy(from: second, to: first, forward: false, meter: meter, failure: failure) }
            if limits.halfCloseTimeout != nil || limits.idleTimeout != nil {
                group.addTask { await Self.watchIdle(meter, limits: limits) }
            }
            var directionsDone = 0
            for await result in group {
                if let result, result != .finished { fail(result) }
                if result != nil { directionsDone += 1 }
                if directionsDone == 2 { group.cancelAll() }
            }
        }
        return failure.outcome ?? .finished
    }

    /// Returns a failure once no byte has moved either way for the idle timeout, or, after
    /// one direction has ended, for the half-close timeout; nil when cancelled (both
    /// directions ended first). Never early; late by at most one tick.
    private static func watchIdle(_ meter: TrafficMeter, limits: PumpLimits) async -> PumpOutcome? {
        let shortest = [limits.halfCloseTimeout, limits.idleTimeout].compactMap { $0 }.min() ?? .seconds(1)
        let tick = min(PumpLimits.longestHalfCloseTick, shortest / 4)
        while (try? await Task.sleep(for: tick)) != nil {
            let idleFor = meter.idleFor
            if let timeout = limits.idleTimeout, idleFor >= timeout {
                let seconds = String(cFormat: "%g", timeout.inSeconds)
                return .failed(endpoint: .first, reason: "idle for \(seconds)s (sessionIdleTimeoutSeconds)")
            }
            guard let timeout = limits.halfCloseTimeout, meter.forwardFinished != meter.backwardFinished,
                idleFor >= timeout
            else { continue }
            let idle: PumpOutcome.Endpoint = meter.forwardFinished ? .second : .first
            let seconds = String(cFormat: "%g", timeout.inSeconds)
            return .failed(endpoint: idle, reason: "half-closed and idle for \(seconds)s")
        }
        return nil
    }

    private static func copy(
        from source: PumpEndpoint,
        to destination: PumpEndpoint,
        forward: Bool,
        meter: TrafficMeter,
        failure: FirstFailure
    ) async -> PumpOutcome {
        let sourceSide: PumpOutcome.Endpoint = forward ? .first : .second
        let destinationSide: PumpOutcome.Endpoint = forward ? .second : .first
        while true {
            let chunk: ByteBuffer?
            do {
                chunk = try await source.reader.nextChunk()
            } catch {
                return .failed(endpoint: sourceSide, reason: Self.describe(error))
            }
            guard let chunk else { break }
            do {
                try await destination.writer.write(chunk)
            } catch {
                return .failed(endpoint: destinationSide, reason: Self.describe(error))
            }
            meter.add(chunk.readableBytes, forward: forward)
        }
        // The stream also ends, without an error, when the source was closed here (the
        // session is being torn down, or an operator killed it): that is no FIN to pass on,
        // or the next hop would see a clean close instead of a reset. A source closed in
        // full after its peer's FIN because its own writes are done is a FIN all the same.
        let writesIntoSourceDone = forward ? meter.backwardFinished : meter.forwardFinished
        if failure.outcome != nil || (!source.channel.isActive && !writesIntoSourceDone) {
            return .failed(endpoint: sourceSide, reason: "connection closed")
        }
        // End of stream: pass the FIN on as a shutdown of the destination's write side, but
        // only once every byte queued for it has reached its socket. NIO turns a write
        // shutdown into a full close when the channel's input is already closed (its peer
        // half-closed first), and a full close fails the writes still queued: the tail of
        // the stream would be lost behind a clean-looking FIN. Writes complete in order,
        // so an empty write that completes is the barrier.
        do {
            try await destination.channel.writeAndFlush(ByteBuffer())
        } catch {
            return .failed(endpoint: destinationSide, reason: Self.describe(error))
        }
        // Recorded first: the write shutdown may close the channel in full (see above), and
        // that close must not count as an early one.
        meter.finish(forward: forward)
        destination.writer.finish()
        return .finished
    }

    /// Why a direction stopped, in a few lowercase words ("connection reset by peer").
    static func describe(_ error: any Error) -> String {
        if error is ChannelError { return "connection closed" }
        if error is CancellationError { return "cancelled" }
        return Network.describe(error)
    }
}

/// The first failure of a pump run, recorded once from whichever task or callback sees it.
private final class FirstFailure: Sendable {
    private let stored = Mutex<PumpOutcome?>(nil)

    /// The failure recorded, if any.
    var outcome: PumpOutcome? { self.stored.withLock { $0 } }

    /// Records `outcome` unless a failure came first; `true` if it was recorded.
    func record(_ outcome: PumpOutcome) -> Bool {
        self.stored.withLock { stored in
            guard stored == nil else { return false }
            stored = outcome
            return true
        }
    }
}
