import Foundation
import NIOCore

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
        await withTaskGroup(of: PumpOutcome?.self) { group in
            group.addTask { await Self.copy(from: first, to: second, forward: true, meter: meter) }
            group.addTask { await Self.copy(from: second, to: first, forward: false, meter: meter) }
            if let timeout = limits.halfCloseTimeout {
                group.addTask { await Self.watchHalfClose(meter, timeout: timeout) }
            }
            var outcome = PumpOutcome.finished
            var directionsDone = 0
            for await result in group {
                if let result, result != .finished, outcome == .finished {
                    outcome = result
                    // Tear the whole session down: the other direction's read or write fails at
                    // once, and both peers see a reset (a FIN would leave the next hop half-open).
                    first.channel.abort()
                    second.channel.abort()
                }
                if result != nil { directionsDone += 1 }
                if directionsDone == 2 { group.cancelAll() }
            }
            return outcome
        }
    }

    /// Returns a failure once one direction has ended and no byte has moved either way for
    /// `timeout`; nil when cancelled (both directions ended first).
    private static func watchHalfClose(_ meter: TrafficMeter, timeout: Duration) async -> PumpOutcome? {
        let tick = min(PumpLimits.longestHalfCloseTick, timeout / 4)
        var moved = meter.forward + meter.backward
        var since = ContinuousClock.now
        while (try? await Task.sleep(for: tick)) != nil {
            let now = ContinuousClock.now
            let total = meter.forward + meter.backward
            let halfClosed = meter.forwardFinished != meter.backwardFinished
            if total != moved || !halfClosed {
                moved = total
                since = now
                continue
            }
            if now - since >= timeout {
                let idle: PumpOutcome.Endpoint = meter.forwardFinished ? .second : .first
                let seconds = String(format: "%g", timeout.inSeconds)
                return .failed(endpoint: idle, reason: "half-closed and idle for \(seconds)s")
            }
        }
        return nil
    }

    private static func copy(
        from source: PumpEndpoint,
        to destination: PumpEndpoint,
        forward: Bool,
        meter: TrafficMeter
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
        destination.writer.finish()
        meter.finish(forward: forward)
        return .finished
    }

    /// Why a direction stopped, in a few lowercase words ("connection reset by peer").
    static func describe(_ error: any Error) -> String {
        if error is ChannelError { return "connection closed" }
        if error is CancellationError { return "cancelled" }
        return Network.describe(error)
    }
}
