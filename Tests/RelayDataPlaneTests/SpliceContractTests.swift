import Glibc
import RelayDataPlane
import Testing

/// The splice tests run one at a time: they move many MiB, time limits (the half-close
/// limit, a reset's teardown) and count the process's descriptors.
@Suite(.serialized) enum SpliceTests {}

extension SpliceTests {
    /// RelayCore's pump contract (`SessionPump`, PumpContractTests), one test per rule, for
    /// the splice pump on real loopback sockets, in both trigger modes where it matters.
    @Suite(.timeLimit(.minutes(1)))
    struct SpliceContractTests {
        /// What the client sends (forward) and what the target sends (backward).
        static let up = TestPattern(seed: 1)
        static let down = TestPattern(seed: 524_287)

        /// More than any chain of socket buffers and pipes holds here: a writer that gets
        /// this far never stalled.
        static let writerCap = 256 << 20

        @Test(arguments: [SplicePlane.Trigger.edge, .level])
        func bytesBothWaysArriveIntactAndAreCounted(trigger: SplicePlane.Trigger) async throws {
            let size = 16 << 20
            let counters = SpliceCounters()
            try await withPlane(trigger: trigger) { plane in
                let rig = try SpliceRig.start(on: plane, meter: counters)
                defer { rig.close() }
                let start = ContinuousClock.now
                let received = await Exchange.run([
                    .init(fd: rig.client.fd, sends: Self.up, sendCount: size, expects: Self.down),
                    .init(fd: rig.target.fd, sends: Self.down, sendCount: size, expects: Self.up),
                ])
                let outcome = await rig.session.outcome(timeout: .seconds(5))
                print(
                    "figure: \(size >> 20) MiB each way spliced (\(trigger)) in \(Timing.milliseconds(since: start)) ms"
                )
                #expect(received[1].isIntact(size), "client to target: \(received[1])")
                #expect(received[0].isIntact(size), "target to client: \(received[0])")
                #expect(outcome == .finished)
                #expect(counters.forward == Int64(size))
                #expect(counters.backward == Int64(size))
                #expect(counters.forwardFinished && counters.backwardFinished)
            }
        }

        /// Backpressure and bounded memory: the target reads nothing, so the client's writes
        /// stall, and every byte the client pushed is in a socket's kernel queue or in the
        /// forward pipe, which holds at most its capacity: the pump keeps nothing in user space.
        @Test(arguments: [SplicePlane.Trigger.edge, .level])
        func aStalledReaderStallsTheWriterWithBoundedMemory(trigger: SplicePlane.Trigger) async throws {
            let counters = SpliceCounters()
            try await withPlane(trigger: trigger) { plane in
                let rig = try SpliceRig.start(on: plane, meter: counters)
                defer { rig.close() }
                let pushed = Counter()
                let limit = Counter()
                limit.set(Self.writerCap)
                async let writing: Void = rig.client.send(Self.up, upTo: limit, progress: pushed)
                let stalled = await Timing.settle { pushed.current }
                #expect(stalled != nil, "the writer never stalled")
                let kernel = try KernelQueues.bytes(of: rig.ports)
                let pushedBytes = stalled ?? Self.writerCap
                let moved = Int(counters.forward)
                let inPipe = pushedBytes - moved - kernel[0] - kernel[1]
                let pastPump = moved - kernel[2] - kernel[3]
                let pipeSize = plane.configuration.pipeSize
                print(
                    "figure: stalled reader (\(trigger)): writer pushed \(pushedBytes) bytes; kernel queues client "
                        + "\(kernel[0]), first \(kernel[1]), second \(kernel[2]), target \(kernel[3]); pump moved "
                        + "\(moved); so \(inPipe) bytes in the pipe (capacity \(pipeSize)) and \(pastPump) "
                        + "unaccounted for past it")
                #expect(inPipe >= 0 && inPipe <= pipeSize, "the forward pipe holds at most its capacity")
                #expect(pastPump == 0, "every byte moved is in the second socket's or the target's queue")
                #expect(rig.session.endedWith == nil)
                // The reader resumes: the writer goes on for 4 MiB more, and everything arrives.
                let total = pushedBytes + (4 << 20)
                limit.set(total)
                let received = await rig.target.receive(Self.up)
                try await writing
                #expect(received.isIntact(total), "\(received)")
                try rig.target.finishWriting()
                #expect(await rig.client.receive(Self.down).isIntact(0))
                #expect(await rig.session.outcome(timeout: .seconds(5)) == .finished)
                #expect(counters.forward == Int64(total))
            }
        }

        @Test(arguments: Side.allCases, [SplicePlane.Trigger.edge, .level])
        func finBecomesHalfClose(closer: Side, trigger: SplicePlane.Trigger) async throws {
            let counters = SpliceCounters()
            try await withPlane(trigger: trigger) { plane in
                let rig = try SpliceRig.start(on: plane, meter: counters)
                defer { rig.close() }
                let closing = rig.outer(closer)
                let staying = rig.outer(closer.other)
                let (said, answer) = closer == .client ? (Self.up, Self.down) : (Self.down, Self.up)
                let request = 256 << 10
                let reply = 1 << 20
                try await closing.send(said, count: request)
                try closing.finishWriting()
                // The FIN reaches the other peer as a clean end of stream, after every byte.
                let heard = await staying.receive(said)
                #expect(heard.isIntact(request), "\(heard)")
                // The other direction stays open: bytes sent after the FIN still arrive.
                async let answered = closing.receive(answer, count: reply)
                try await staying.send(answer, count: reply)
                let got = await answered
                #expect(got.count == reply && got.firstMismatch == nil && got.end == .stoppedAtCount, "\(got)")
                #expect(rig.session.endedWith == nil, "the session ended while one direction was still open")
                #expect(closer == .client ? counters.forwardFinished : counters.backwardFinished)
                #expect(!(closer == .client ? counters.backwardFinished : counters.forwardFinished))
                // Only the second FIN ends the session.
                try staying.finishWriting()
                let rest = await closing.receive(answer, from: reply)
                #expect(rest.isIntact(0), "\(rest)")
                #expect(await rig.session.outcome(timeout: .seconds(5)) == .finished)
                #expect(counters.forwardFinished && counters.backwardFinished)
            }
        }

        @Test(arguments: Side.allCases, [SplicePlane.Trigger.edge, .level])
        func aResetTearsBothSidesDown(resetter: Side, trigger: SplicePlane.Trigger) async throws {
            try await withPlane(trigger: trigger) { plane in
                let rig = try SpliceRig.start(on: plane)
                defer { rig.close() }
                try await rig.client.write("ping")
                #expect(try await rig.target.read(count: 4) == "ping")
                try await rig.target.write("pong")
                #expect(try await rig.client.read(count: 4) == "pong")
                let other = rig.outer(resetter.other)
                let start = ContinuousClock.now
                rig.outer(resetter).reset()
                let seen = await other.receive(Self.up, seconds: 5)
                let elapsed = Timing.milliseconds(since: start)
                let outcome = await rig.session.outcome(timeout: .seconds(5))
                print(
                    "figure: reset by the \(resetter) (\(trigger)) ended the \(resetter.other)'s connection in "
                        + "\(elapsed) ms (\(seen)); outcome \(outcome.map { "\($0)" } ?? "none")")
                #expect(seen.end?.isReset == true, "the \(resetter.other) saw no reset: \(seen)")
                #expect(elapsed < 2000)
                guard case .failed(let side, let reason)? = outcome else {
                    Issue.record("the session did not fail: \(String(describing: outcome))")
                    return
                }
                #expect(side == resetter.spliceSide)
                #expect(reason.contains("reset"), "\(reason)")
            }
        }

        /// A peer that half-closes and then resets: nothing reads its socket any more (its
        /// direction has ended) and nothing may be written to it, yet the reset must tear the
        /// session down at once (the NIO pump watches `closeFuture` for this), not linger
        /// until the half-close limit.
        @Test(arguments: Side.allCases, [SplicePlane.Trigger.edge, .level])
        func aResetAfterAHalfCloseTearsBothSidesDown(resetter: Side, trigger: SplicePlane.Trigger) async throws {
            try await withPlane(trigger: trigger) { plane in
                let rig = try SpliceRig.start(on: plane)
                defer { rig.close() }
                let closing = rig.outer(resetter)
                let other = rig.outer(resetter.other)
                try closing.finishWriting()
                #expect(await other.receive(Self.up).isIntact(0))
                let start = ContinuousClock.now
                closing.reset()
                let outcome = await rig.session.outcome(timeout: .seconds(5))
                let elapsed = Timing.milliseconds(since: start)
                print(
                    "figure: reset after a half-close by the \(resetter) (\(trigger)): ended in \(elapsed) ms: "
                        + "\(outcome.map { "\($0)" } ?? "not ended")")
                #expect(elapsed < 2000)
                guard case .failed(let side, let reason)? = outcome else {
                    Issue.record("the session did not fail: \(String(describing: outcome))")
                    return
                }
                #expect(side == resetter.spliceSide)
                // Linux reports a reset that comes after the peer's FIN (CLOSE_WAIT) as EPIPE.
                #expect(reason == "broken pipe" || reason.contains("reset"), "\(reason)")
                // The other peer had read the FIN, so its reads end cleanly; its writes fail.
                let late: Void? = try? await other.write("late")
                #expect(late == nil, "the \(resetter.other)'s connection was not reset")
            }
        }

        /// S12: bytes read past a handshake line (given as pending) go before anything
        /// spliced, both ways; the backward ones are more than the sockets on the way hold
        /// while the client does not read yet, so writing them meets a full socket.
        @Test(arguments: [SplicePlane.Trigger.edge, .level])
        func pendingBytesGoFirst(trigger: SplicePlane.Trigger) async throws {
            let counters = SpliceCounters()
            let earlyUp = 4000
            let earlyDown = 16 << 20
            let later = 1 << 20
            try await withPlane(trigger: trigger) { plane in
                let rig = try SpliceRig.start(
                    on: plane, meter: counters, pendingForward: Self.up.bytes(at: 0, count: earlyUp),
                    pendingBackward: Self.down.bytes(at: 0, count: earlyDown))
                defer { rig.close() }
                async let upstream = rig.target.receive(Self.up)
                @Sendable func answer() async throws {
                    try await rig.target.send(Self.down, from: earlyDown, count: later)
                    try rig.target.finishWriting()
                }
                async let downSent: Void = answer()
                try await rig.client.send(Self.up, from: earlyUp, count: later)
                try rig.client.finishWriting()
                // The client does not read yet: the pending bytes meet a full socket.
                try await Task.sleep(for: .milliseconds(300))
                let blocked = counters.backward
                let downstream = await rig.client.receive(Self.down)
                try await downSent
                let up = await upstream
                print(
                    "figure: pending (\(trigger)): \(blocked) of \(earlyDown) pending bytes out before the client read")
                #expect(blocked < Int64(earlyDown), "the pending bytes never met a full socket")
                #expect(up.isIntact(earlyUp + later), "\(up)")
                #expect(downstream.isIntact(earlyDown + later), "\(downstream)")
                #expect(await rig.session.outcome(timeout: .seconds(5)) == .finished)
                #expect(counters.forward == Int64(earlyUp + later))
                #expect(counters.backward == Int64(earlyDown + later))
            }
        }

        /// The destination half-closed first and is not reading when the source's FIN comes:
        /// bytes are still in the pipe and the destination's socket, and they must reach the
        /// target before its FIN.
        @Test(arguments: [SplicePlane.Trigger.edge, .level])
        func theTailIsNeverLost(trigger: SplicePlane.Trigger) async throws {
            let counters = SpliceCounters()
            try await withPlane(trigger: trigger) { plane in
                let rig = try SpliceRig.start(on: plane, meter: counters)
                defer { rig.close() }
                try rig.target.finishWriting()
                #expect(await rig.client.receive(Self.down).isIntact(0))
                // The client sends 64 KiB at a time, each once the pump has passed the one
                // before on, until the pump stops taking bytes (the target reads nothing).
                let chunk = 64 << 10
                var sent = 0
                while sent < Self.writerCap {
                    try await rig.client.send(Self.up, from: sent, count: chunk)
                    sent += chunk
                    let target = Int64(sent)
                    guard await Timing.wait(seconds: 1, until: { counters.forward >= target }) else { break }
                }
                try rig.client.finishWriting()
                // The source has finished; the target still does not read for a moment: a
                // pump that ends the session at the FIN does it now.
                try await Task.sleep(for: .milliseconds(300))
                let endedEarly = rig.session.endedWith
                let received = await rig.target.receive(Self.up)
                print(
                    "figure: tail (\(trigger)): client sent \(sent) bytes, \(Int(counters.forward)) passed on when "
                        + "its FIN came; session ended before the target read: \(endedEarly.map { "\($0)" } ?? "no"); "
                        + "target received \(received)")
                #expect(sent < Self.writerCap, "the pump never stalled")
                #expect(endedEarly == nil)
                #expect(received.isIntact(sent), "\(received)")
                #expect(await rig.session.outcome(timeout: .seconds(5)) == .finished)
                #expect(counters.forward == Int64(sent))
            }
        }

        @Test(arguments: [SplicePlane.Trigger.edge, .level])
        func aHalfClosedIdleSessionIsCut(trigger: SplicePlane.Trigger) async throws {
            let limit = Duration.milliseconds(500)
            try await withPlane(trigger: trigger) { plane in
                let rig = try SpliceRig.start(on: plane, limits: SpliceLimits(halfCloseTimeout: limit))
                defer { rig.close() }
                try rig.target.finishWriting()
                #expect(await rig.client.receive(Self.down).isIntact(0))
                // The client neither sends nor closes.
                let start = ContinuousClock.now
                let outcome = await rig.session.outcome(timeout: .seconds(10))
                let elapsed = Timing.milliseconds(since: start)
                print(
                    "figure: half-closed and idle (\(trigger)): cut \(elapsed) ms after the client saw the FIN "
                        + "(limit 500 ms): \(outcome.map { "\($0)" } ?? "not cut")")
                #expect(outcome == .halfCloseTimeout(idle: .first, after: limit))
                #expect(outcome?.reason == "half-closed and idle for 0.5s")
                #expect(elapsed >= 450, "never early: the limit counts from the FIN")
                #expect(elapsed <= 1500)
                // Cut means both connections end with a reset: the target, reading now, sees it.
                let seen = await rig.target.receive(Self.up, seconds: 5)
                #expect(seen.end?.isReset == true, "\(seen)")
                // The client had read the FIN, so its reads end cleanly; its writes fail.
                let late: Void? = try? await rig.client.write("late")
                #expect(late == nil, "the client's connection was not reset")
            }
        }

        @Test(arguments: [SplicePlane.Trigger.edge, .level])
        func aHalfClosedSessionWithBytesTricklingIsNotCut(trigger: SplicePlane.Trigger) async throws {
            let ticks = 15
            let bytesPerTick = 100
            try await withPlane(trigger: trigger) { plane in
                let rig = try SpliceRig.start(on: plane, limits: SpliceLimits(halfCloseTimeout: .milliseconds(500)))
                defer { rig.close() }
                try rig.target.finishWriting()
                #expect(await rig.client.receive(Self.down).isIntact(0))
                async let received = rig.target.receive(Self.up)
                // 1.5 s of a few bytes every 100 ms: three times the limit, never idle for long.
                for tick in 0..<ticks {
                    try await rig.client.send(Self.up, from: tick * bytesPerTick, count: bytesPerTick)
                    try await Task.sleep(for: .milliseconds(100))
                }
                #expect(rig.session.endedWith == nil, "cut while bytes were moving")
                try rig.client.finishWriting()
                let got = await received
                #expect(got.isIntact(ticks * bytesPerTick), "\(got)")
                #expect(await rig.session.outcome(timeout: .seconds(5)) == .finished)
            }
        }

        /// The counters move with the bytes, not at the end: after the target has read
        /// 1 MiB, the forward counter says 1 MiB while the session still runs.
        @Test func countersAreCurrentDuringATransfer() async throws {
            let counters = SpliceCounters()
            try await withPlane { plane in
                let rig = try SpliceRig.start(on: plane, meter: counters, pendingBackward: Array("hello".utf8))
                defer { rig.close() }
                #expect(try await rig.client.read(count: 5) == "hello")
                // The loop counts right after the send(2) or splice(2) that the reader may
                // already have seen through: give it a moment, no more.
                #expect(await Timing.wait(seconds: 1) { counters.backward == 5 }, "\(counters.backward)")
                let size = 1 << 20
                try await rig.client.send(Self.up, count: size)
                let got = await rig.target.receive(Self.up, count: size)
                #expect(got.count == size && got.firstMismatch == nil)
                #expect(await Timing.wait(seconds: 1) { counters.forward == Int64(size) }, "\(counters.forward)")
                try await rig.target.send(Self.down, count: size / 2)
                #expect(await rig.client.receive(Self.down, count: size / 2).count == size / 2)
                #expect(
                    await Timing.wait(seconds: 1) { counters.backward == Int64(5 + size / 2) }, "\(counters.backward)")
                #expect(!counters.forwardFinished && !counters.backwardFinished)
                #expect(rig.session.endedWith == nil)
                try rig.client.finishWriting()
                try rig.target.finishWriting()
                #expect(await rig.session.outcome(timeout: .seconds(5)) == .finished)
            }
        }

        @Test func killResetsBothSides() async throws {
            try await withPlane { plane in
                let rig = try SpliceRig.start(on: plane)
                defer { rig.close() }
                try await rig.client.write("ping")
                #expect(try await rig.target.read(count: 4) == "ping")
                rig.session.kill(reason: "killed by relayctl")
                #expect(await rig.session.outcome(timeout: .seconds(5)) == .aborted(reason: "killed by relayctl"))
                let client = await rig.client.receive(Self.down, seconds: 5)
                let target = await rig.target.receive(Self.up, seconds: 5)
                #expect(client.end?.isReset == true, "\(client)")
                #expect(target.end?.isReset == true, "\(target)")
            }
        }

        /// A target that closes its socket while bytes still flow to it: its FIN reaches the
        /// client, its kernel answers the next bytes with a reset, the splice into the second
        /// socket fails (ECONNRESET or EPIPE; a SIGPIPE would kill this test process), and the
        /// client's writes fail.
        @Test(arguments: [SplicePlane.Trigger.edge, .level])
        func aPeerGoneWhileBytesFlowToItFailsTheSessionWithoutSIGPIPE(trigger: SplicePlane.Trigger) async throws {
            try await withPlane(trigger: trigger) { plane in
                let rig = try SpliceRig.start(on: plane)
                defer { rig.close() }
                try await rig.client.write("ping")
                #expect(try await rig.target.read(count: 4) == "ping")
                rig.target.close()
                // The client keeps sending until its writes fail.
                let writes: Void? = try? await rig.client.send(Self.up, count: 64 << 20, seconds: 10)
                let outcome = await rig.session.outcome(timeout: .seconds(5))
                print("figure: target gone (\(trigger)): \(outcome.map { "\($0)" } ?? "not ended")")
                #expect(writes == nil, "the client's 64 MiB all went out")
                guard case .failed(.second, let reason)? = outcome else {
                    Issue.record("not failed at the second socket: \(String(describing: outcome))")
                    return
                }
                #expect(reason.contains("reset") || reason.contains("broken pipe"), "\(reason)")
            }
        }
    }
}
