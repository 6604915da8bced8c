import NIOCore

/// The portable pump: one task per direction over `NIOAsyncChannel` streams, so the two
/// connections may live on different event loops. Backpressure comes from the async
/// channel's inbound watermarks and its writer, which suspends while the socket is not writable.
public struct AsyncChannelPump: SessionPump {
    /// Creates the pump.
    public init() {}

    public func run(_ first: PumpEndpoint, _ second: PumpEndpoint, meter: TrafficMeter) async -> PumpOutcome {
        await withTaskGroup(of: PumpOutcome.self) { group in
            group.addTask { await Self.copy(from: first, to: second, forward: true, meter: meter) }
            group.addTask { await Self.copy(from: second, to: first, forward: false, meter: meter) }
            var outcome = PumpOutcome.finished
            for await result in group where result != .finished && outcome == .finished {
                outcome = result
                // Tear the whole session down: the other direction's read or write fails at
                // once, and both peers see a reset (a FIN would leave the next hop half-open).
                first.channel.abort()
                second.channel.abort()
            }
            return outcome
        }
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
