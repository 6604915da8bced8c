import NIOCore
import Testing

@testable import RelayCore

extension IOTests {
    /// The contract of `SessionPump` (SessionPump.swift), one test per rule, on real loopback
    /// connections, against every pump in ``pumps``.
    @Suite(.timeLimit(.minutes(1)))
    struct PumpContractTests {
        /// Every data plane the relay has; a new one joins this list and runs the same rules.
        static let pumps: [any SessionPump] = [AsyncChannelPump()]

        /// What the client sends (forward) and what the target sends (backward).
        static let up = TestPattern(seed: 1)
        static let down = TestPattern(seed: 524_287)

        /// More than any chain of socket buffers holds here: a writer that gets this far never stalled.
        static let writerCap = 256 << 20

        @Test(arguments: pumps)
        func bytesBothWaysArriveIntactAndAreCounted(pump: any SessionPump) async throws {
            let size = 8 << 20
            let meter = TrafficMeter()
            let start = ContinuousClock.now
            let (upstream, downstream, outcome) = try await PumpRig.with { rig in
                let run = rig.start(pump, meter: meter)
                async let upstream = rig.target.receive(Self.up)
                async let downstream = rig.client.receive(Self.down)
                async let clientSent: Void = Self.sendThenFinish(Self.up, count: size, by: rig.client)
                async let targetSent: Void = Self.sendThenFinish(Self.down, count: size, by: rig.target)
                try await clientSent
                try await targetSent
                return (await upstream, await downstream, await run.outcome)
            }
            print("figure: \(size >> 20) MiB each way through \(pump) in \(Timing.milliseconds(since: start)) ms")
            #expect(upstream.isIntact(size), "client to target: \(upstream)")
            #expect(downstream.isIntact(size), "target to client: \(downstream)")
            #expect(outcome == .finished)
            #expect(meter.forward == Int64(size))
            #expect(meter.backward == Int64(size))
            #expect(meter.forwardFinished)
            #expect(meter.backwardFinished)
        }

        @Test(arguments: pumps)
        func aStalledReaderStallsTheWriter(pump: any SessionPump) async throws {
            let meter = TrafficMeter()
            try await PumpRig.with { rig in
                let run = rig.start(pump, meter: meter)
                let pushed = Counter()
                let limit = Counter()
                limit.set(Self.writerCap)
                async let writing: Void = Self.sendThenFinish(Self.up, upTo: limit, progress: pushed, by: rig.client)
                // The target reads nothing: once the buffers on the way are full, the writes stall.
                let stalled = await Timing.settle { pushed.current }
                #expect(stalled != nil, "the writer never stalled")
                // Every byte the writer pushed is in a socket's kernel queue or in user space: the
                // client's writes are awaited, so the first endpoint's inbound reads, the pump,
                // the second endpoint's queued writes and the target's inbound reads. Those must
                // hold no more than NIO's limits.
                let second = rig.second.channel
                let queuedAtSecond = try await second.eventLoop.submit {
                    try second.syncOptions?.getOption(.bufferedWritableBytes) ?? 0
                }.get()
                let kernel = try KernelQueues.bytes(of: [rig.client, rig.first, rig.second, rig.target].map(\.channel))
                let pushedBytes = stalled ?? Self.writerCap
                let moved = Int(meter.forward)
                let upstream = pushedBytes - moved - kernel[0] - kernel[1]
                let downstream = moved - kernel[2] - kernel[3]
                let allowance = try await Self.userSpaceAllowance(rig)
                print(
                    "figure: stalled reader: writer pushed \(stalled.map(String.init) ?? "unbounded") bytes; "
                        + "kernel queues client \(kernel[0]), first \(kernel[1]), second \(kernel[2]), target \(kernel[3]); "
                        + "pump moved \(moved); user space before the pump \(upstream), after it \(downstream) "
                        + "(of which queued writes at the second endpoint \(queuedAtSecond)); NIO's limits allow \(allowance)"
                )
                withKnownIssue(
                    """
                    NIO's async writer accepts writes from the pump's task while the destination is \
                    writable, and learns it no longer is only once its event loop has run them: when \
                    that loop lags (a loaded machine), the pump queues more than the write watermark.
                    """,
                    isIntermittent: true
                ) {
                    #expect(upstream + downstream <= allowance)
                }
                // The reader resumes: the writer goes on for 4 MiB more, and everything arrives.
                let total = pushed.current + (4 << 20)
                limit.set(total)
                let received = await rig.target.receive(Self.up)
                try await writing
                #expect(received.isIntact(total), "\(received)")
                try await rig.target.finishWriting()
                #expect(await rig.client.receive(Self.down).isIntact(0))
                #expect(await run.outcome == .finished)
                #expect(meter.forward == Int64(total))
            }
        }

        @Test(arguments: pumps, Side.allCases)
        func finBecomesHalfClose(pump: any SessionPump, closer: Side) async throws {
            let meter = TrafficMeter()
            try await PumpRig.with { rig in
                let run = rig.start(pump, meter: meter)
                let closing = rig.outer(closer)
                let staying = rig.outer(closer.other)
                let (said, answer) = closer == .client ? (Self.up, Self.down) : (Self.down, Self.up)
                let request = 256 << 10
                let reply = 1 << 20
                try await Self.sendThenFinish(said, count: request, by: closing)
                // The FIN reaches the other peer as a clean end of stream, after every byte.
                let heard = await staying.receive(said)
                #expect(heard.isIntact(request), "\(heard)")
                // The other direction stays open: bytes sent after the FIN still arrive.
                async let answered = closing.receive(answer, count: reply)
                try await staying.send(answer, count: reply)
                let got = await answered
                #expect(got.count == reply && got.firstMismatch == nil && got.end == .stoppedAtCount, "\(got)")
                #expect(!run.ended.isRaised, "the run ended while one direction was still open")
                #expect(!(closer == .client ? meter.backwardFinished : meter.forwardFinished))
                // Only the second FIN ends the run.
                try await staying.finishWriting()
                let rest = await closing.receive(answer, from: reply)
                #expect(rest.isIntact(0), "\(rest)")
                #expect(await run.outcome == .finished)
                #expect(meter.forwardFinished && meter.backwardFinished)
            }
        }

        @Test(arguments: pumps, Side.allCases)
        func aResetTearsBothSidesDown(pump: any SessionPump, resetter: Side) async throws {
            try await PumpRig.with { rig in
                let run = rig.start(pump)
                try await rig.client.write("ping")
                #expect(try await rig.target.read(count: 4) == "ping")
                try await rig.target.write("pong")
                #expect(try await rig.client.read(count: 4) == "pong")
                let other = rig.outer(resetter.other)
                let start = ContinuousClock.now
                rig.outer(resetter).reset()
                let seen = try await Timing.withTimeout(5) { await other.receive(Self.up) }
                let elapsed = Timing.milliseconds(since: start)
                let outcome = await run.outcome(within: 5)
                print(
                    "figure: reset by the \(resetter) ended the \(resetter.other)'s connection in \(elapsed) ms "
                        + "(\(seen.map { "\($0)" } ?? "not ended")); outcome \(outcome.map { "\($0)" } ?? "none")")
                #expect(
                    seen?.end?.isReset == true, "the \(resetter.other) saw no reset: \(String(describing: seen))")
                #expect(elapsed < 2000)
                guard case .failed(let endpoint, let reason)? = outcome else {
                    Issue.record("the run did not fail: \(String(describing: outcome))")
                    return
                }
                #expect(endpoint == resetter.endpoint)
                #expect(reason.contains("reset"), "\(reason)")
            }
        }

        @Test(arguments: pumps)
        func bytesReadPastAHandshakeLineComeFirst(pump: any SessionPump) async throws {
            let meter = TrafficMeter()
            let line = #"{"type":"attach"}"#
            let early = 4000
            let later = 1 << 20
            try await PumpRig.with { rig in
                // One write: the line and the first bytes of the stream arrive in one read.
                var opening = ByteBuffer(string: line + "\n")
                opening.writeImmutableBuffer(Self.up.bytes(at: 0, count: early))
                try await rig.client.writer.write(opening)
                let handshake = try await rig.first.reader.readLine()
                #expect(handshake.map { String(buffer: $0) } == line)
                let run = rig.start(pump, meter: meter)
                async let received = rig.target.receive(Self.up)
                try await Self.sendThenFinish(Self.up, from: early, count: later, by: rig.client)
                let got = await received
                #expect(got.isIntact(early + later), "\(got)")
                try await rig.target.finishWriting()
                #expect(await rig.client.receive(Self.down).isIntact(0))
                #expect(await run.outcome == .finished)
                #expect(meter.forward == Int64(early + later))
            }
        }

        /// The destination half-closed first and is not reading when the source's FIN comes:
        /// bytes are still queued for it, and they must reach it before its FIN (the defect
        /// fixed in 2955e2b lost them: NIO turned the write shutdown into a full close).
        @Test(arguments: pumps)
        func theTailIsNeverLost(pump: any SessionPump) async throws {
            let sink = CountingSink()
            let meter = TrafficMeter(sink: sink)
            try await PumpRig.with { rig in
                let run = rig.start(pump, meter: meter)
                try await rig.target.finishWriting()
                #expect(await rig.client.receive(Self.down).isIntact(0))
                // The client sends 16 KiB at a time, each once the pump has taken the one before,
                // until the second endpoint's connection is backed up (NIO: not writable) or the
                // pump stops taking bytes; the target reads nothing.
                let second = rig.second.channel
                let chunk = 16 << 10
                var sent = 0
                var queued = 0
                var stoppedBy = "the cap"
                while sent < Self.writerCap {
                    try await rig.client.send(Self.up, from: sent, count: chunk)
                    sent += chunk
                    guard await sink.waitForward(atLeast: sent, seconds: 2) else {
                        stoppedBy = "the pump stalling"
                        break
                    }
                    let (writable, buffered) = try await second.eventLoop.submit {
                        (second.isWritable, try second.syncOptions?.getOption(.bufferedWritableBytes) ?? 0)
                    }.get()
                    if !writable {
                        queued = buffered
                        stoppedBy = "the second endpoint not writable"
                        break
                    }
                }
                try await rig.client.finishWriting()
                // The source has finished; the target still does not read for a moment (fault
                // injection): a pump that ends the second endpoint at the FIN does it now.
                let closedEarly = await Self.closed(second, within: 0.3)
                let received = await rig.target.receive(Self.up)
                print(
                    "figure: tail: client sent \(sent) bytes (stopped by \(stoppedBy)), \(queued) queued at the "
                        + "second endpoint at its FIN; second endpoint closed before the target read: \(closedEarly); "
                        + "target received \(received)")
                #expect(stoppedBy != "the cap")
                #expect(received.isIntact(sent), "\(received)")
                #expect(await run.outcome == .finished)
                #expect(meter.forward == Int64(sent))
            }
        }

        @Test(arguments: pumps)
        func aHalfClosedIdleSessionIsCut(pump: any SessionPump) async throws {
            let limit = 0.5
            try await PumpRig.with { rig in
                let run = rig.start(pump, limits: PumpLimits(halfCloseTimeoutSeconds: limit))
                try await rig.target.finishWriting()
                #expect(await rig.client.receive(Self.down).isIntact(0))
                // The client neither sends nor closes.
                let start = ContinuousClock.now
                let outcome = await run.outcome(within: 10)
                let elapsed = Timing.milliseconds(since: start)
                print(
                    "figure: half-closed and idle: cut \(elapsed) ms after the client saw the FIN "
                        + "(limit \(Int(limit * 1000)) ms): \(outcome.map { "\($0)" } ?? "not cut")")
                guard case .failed(let endpoint, let reason)? = outcome else {
                    Issue.record("not cut: \(String(describing: outcome))")
                    return
                }
                #expect(reason.contains("half-closed and idle"), "\(reason)")
                #expect(endpoint == .first, "the client is the side that stayed idle")
                let tick = PumpLimits.longestHalfCloseTick.inSeconds * 1000
                #expect(Double(elapsed) >= limit * 1000 - 50, "never early: the limit counts from the FIN")
                #expect(Double(elapsed) <= limit * 1000 + tick + 1000)
                // Cut means both connections end, with a reset: the target, reading now, sees it.
                let seen = try await Timing.withTimeout(5) { await rig.target.receive(Self.up) }
                #expect(seen?.end != nil, "the target's connection did not end")
                #expect(seen?.end?.isReset == true, "\(String(describing: seen))")
            }
        }

        @Test(arguments: pumps)
        func aHalfClosedSessionWithBytesTricklingIsNotCut(pump: any SessionPump) async throws {
            let limit = 0.5
            let ticks = 15
            let bytesPerTick = 100
            try await PumpRig.with { rig in
                let run = rig.start(pump, limits: PumpLimits(halfCloseTimeoutSeconds: limit))
                try await rig.target.finishWriting()
                #expect(await rig.client.receive(Self.down).isIntact(0))
                async let received = rig.target.receive(Self.up)
                // 1.5 s of a few bytes every 100 ms: three times the limit, never idle for long.
                for tick in 0..<ticks {
                    do {
                        try await rig.client.send(Self.up, from: tick * bytesPerTick, count: bytesPerTick)
                    } catch {
                        let outcome = await run.outcome(within: 5)
                        Issue.record("write \(tick) failed (\(error)); the run: \(String(describing: outcome))")
                        return
                    }
                    try await Task.sleep(for: .milliseconds(100))
                }
                #expect(!run.ended.isRaised, "cut while bytes were moving")
                try await rig.client.finishWriting()
                let got = await received
                #expect(got.isIntact(ticks * bytesPerTick), "\(got)")
                #expect(await run.outcome == .finished)
            }
        }

        // MARK: - Helpers

        /// Sends `count` bytes of `pattern` from `offset` on, then half-closes.
        static func sendThenFinish(_ pattern: TestPattern, from offset: Int = 0, count: Int, by peer: Peer) async throws
        {
            try await peer.send(pattern, from: offset, count: count)
            try await peer.finishWriting()
        }

        /// Sends `pattern` until `limit` bytes (which may change meanwhile) are out, then
        /// half-closes. Each write is awaited until it reached the socket, so `progress` counts
        /// bytes the kernel took, and the writer itself holds at most one chunk.
        static func sendThenFinish(_ pattern: TestPattern, upTo limit: Counter, progress: Counter, by peer: Peer)
            async throws
        {
            var sent = 0
            while sent < limit.current {
                let length = min(64 << 10, limit.current - sent)
                try await peer.channel.writeAndFlush(pattern.bytes(at: sent, count: length))
                sent += length
                progress.set(sent)
            }
            try await peer.finishWriting()
        }

        /// The most bytes that may sit in user space between the client's socket and the
        /// target's reader when nothing buffers more than it should: the first endpoint's and
        /// the target's inbound reads (up to the high watermark plus one read loop, each read at
        /// most 64 KiB), the second endpoint's queued writes (up to its write high watermark plus
        /// one write), and a chunk in the pump's hands.
        static func userSpaceAllowance(_ rig: PumpRig) async throws -> Int {
            let read = 64 << 10
            func limits(_ channel: any Channel) async throws -> (reads: Int, writes: Int) {
                try await channel.eventLoop.submit {
                    let options = channel.syncOptions!
                    let reads = Network.inboundHighWatermark + Int(try options.getOption(.maxMessagesPerRead))
                    return (reads * read, try options.getOption(.writeBufferWaterMark).high + read)
                }.get()
            }
            return try await limits(rig.first.channel).reads + limits(rig.second.channel).writes
                + limits(rig.target.channel).reads + read
        }

        /// Whether `channel` closes within `seconds`.
        static func closed(_ channel: any Channel, within seconds: Double) async -> Bool {
            let flag = Flag()
            channel.closeFuture.whenComplete { _ in flag.raise() }
            return await flag.wait(seconds: seconds)
        }
    }
}
