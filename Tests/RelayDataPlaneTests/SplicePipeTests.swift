import Foundation
import Glibc
import RelayDataPlane
import Testing

extension SpliceTests {
    /// Pipes are lent to directions only while bytes are in flight: idle sessions hold none,
    /// busy ones borrow from their loop's pool and give the pipe back, the pools stay within
    /// their bound, a pipe that still holds bytes is closed, and a direction that gets no
    /// pipe waits for one instead of failing its session.
    @Suite(.timeLimit(.minutes(2)))
    struct SplicePipeTests {
        static let up = TestPattern(seed: 1)
        static let down = TestPattern(seed: 524_287)

        /// 200 idle sessions on 4 loops hold no pipe; then 64 KiB each way in every one
        /// (400 directions busy at once, with pools of 8 pipes per loop), all intact, and the
        /// sessions idle again hold none, every pipe left open being in a pool; then a second
        /// round and the FINs: every session finishes cleanly, every byte counted.
        @Test(arguments: [SplicePlane.Trigger.edge, .level])
        func idleSessionsHoldNoPipe(trigger: SplicePlane.Trigger) async throws {
            let sessions = 200
            let loops = 4
            let pooled = 8
            let size = 64 << 10
            try await withPlane(loops: loops, trigger: trigger, pooledPipesPerLoop: pooled) { plane in
                let counters = (0..<sessions).map { _ in SpliceCounters() }
                let rigs = try counters.map { try SpliceRig.start(on: plane, meter: $0) }
                defer { for rig in rigs { rig.close() } }
                let idle = await Self.settled(plane, sessions: sessions)
                print("figure: \(sessions) idle sessions (\(trigger)) on \(loops) loops: \(idle)")
                #expect(idle.sessions.reduce(0, +) == sessions)
                #expect(idle.pipesInUse == 0, "\(idle)")
                #expect(idle.idlePipes <= loops * pooled, "\(idle)")
                #expect(idle.waitingForPipe == 0)

                // Bytes in every session, both ways, the connections left open.
                func ends(from offset: Int, halfClose: Bool) -> [Exchange.End] {
                    rigs.flatMap { rig in
                        [
                            Exchange.End(
                                fd: rig.client.fd, sends: Self.up, sendCount: size, expects: Self.down,
                                sendFrom: offset, expectFrom: offset, halfCloses: halfClose,
                                readCount: halfClose ? nil : size),
                            Exchange.End(
                                fd: rig.target.fd, sends: Self.down, sendCount: size, expects: Self.up,
                                sendFrom: offset, expectFrom: offset, halfCloses: halfClose,
                                readCount: halfClose ? nil : size),
                        ]
                    }
                }
                let first = await Exchange.run(ends(from: 0, halfClose: false), threads: 4)
                let broken = first.enumerated().filter { _, received in
                    received.count != size || received.firstMismatch != nil || received.end != .stoppedAtCount
                }
                #expect(broken.isEmpty, "\(broken.count) streams broken, first: \(broken.first.map { "\($0)" } ?? "")")
                let again = await Self.settled(plane, sessions: sessions)
                print("figure: the same sessions (\(trigger)) idle again after \(size >> 10) KiB each way: \(again)")
                #expect(again.pipesInUse == 0, "\(again)")
                #expect(again.openPipes <= loops * pooled, "\(again)")
                #expect(rigs.allSatisfy { $0.session.endedWith == nil })

                // A second round, then the FINs: the pump contract as before.
                let second = await Exchange.run(ends(from: size, halfClose: true), threads: 4)
                let unfinished = second.enumerated().filter { !$0.element.isIntact(size) }
                #expect(
                    unfinished.isEmpty,
                    "\(unfinished.count) streams broken, first: \(unfinished.first.map { "\($0)" } ?? "")")
                var outcomes: [SpliceOutcome?] = []
                for rig in rigs { outcomes.append(await rig.session.outcome(timeout: .seconds(10))) }
                #expect(outcomes.allSatisfy { $0 == .finished })
                #expect(counters.allSatisfy { $0.forward == Int64(2 * size) && $0.backward == Int64(2 * size) })
                #expect(counters.allSatisfy { $0.forwardFinished && $0.backwardFinished })
                let end = plane.statistics
                #expect(end.sessions == [0, 0, 0, 0])
                #expect(end.pipesInUse == 0 && end.openPipes <= loops * pooled, "\(end)")
            }
        }

        /// Directions hold their pipes while their bytes cannot go on, and give them back once
        /// they can: 200 sessions on 4 loops (pools of 8) whose targets do not read and take
        /// little (minimal buffers), so each forward pipe holds what its client sent past a
        /// few KiB: 200 pipes in use. Once the targets have read everything, none is, and the
        /// pools keep 8 each of the 200 pipes given back: the rest were closed.
        @Test(arguments: [SplicePlane.Trigger.edge, .level])
        func blockedDirectionsHoldPipesAndThePoolsKeepTheirBound(trigger: SplicePlane.Trigger) async throws {
            let sessions = 200
            let loops = 4
            let pooled = 8
            let most = 128 << 10
            try await withPlane(loops: loops, trigger: trigger, pooledPipesPerLoop: pooled) { plane in
                let rigs = try (0..<sessions).map { _ in try SpliceRig.start(on: plane, smallTargetBuffers: true) }
                defer { for rig in rigs { rig.close() } }
                #expect(await Self.settled(plane, sessions: sessions).pipesInUse == 0)
                // Each client sends what its socket takes at once, up to 128 KiB.
                var sent = [Int](repeating: 0, count: sessions)
                for (index, rig) in rigs.enumerated() {
                    while sent[index] < most {
                        let result = Self.up.withBytes(at: index + sent[index], count: most - sent[index]) {
                            send(rig.client.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                        }
                        guard result > 0 else { break }
                        sent[index] += result
                    }
                }
                let full = await Timing.wait(seconds: 10) { plane.statistics.pipesInUse == sessions }
                let blocked = plane.statistics
                print(
                    "figure: \(sessions) sessions (\(trigger)) whose targets do not read, \(sent.min() ?? 0)–"
                        + "\(sent.max() ?? 0) bytes sent each: \(blocked)")
                #expect(full, "\(blocked)")
                let received = await Exchange.run(
                    rigs.enumerated().map { index, rig in
                        Exchange.End(
                            fd: rig.target.fd, sends: Self.down, sendCount: 0, expects: Self.up, expectFrom: index,
                            halfCloses: false, readCount: sent[index])
                    }, threads: 4)
                let broken = received.enumerated().filter { index, received in
                    received.count != sent[index] || received.firstMismatch != nil || received.end != .stoppedAtCount
                }
                #expect(broken.isEmpty, "\(broken.count) streams broken, first: \(broken.first.map { "\($0)" } ?? "")")
                let drained = await Self.settled(plane, sessions: sessions)
                print("figure: the same once the targets have read everything: \(drained)")
                #expect(drained.pipesInUse == 0, "\(drained)")
                #expect(drained.idlePipes == loops * pooled, "\(drained)")
                #expect(rigs.allSatisfy { $0.session.endedWith == nil })
            }
        }

        /// Up to 10,000 idle sessions, chained (each session's second socket is connected to
        /// the next one's first, over socket pairs, which use no port): no pipe in use, at
        /// most 16 KiB of resident memory each; then 64 KiB each way through the whole chain,
        /// every byte through every session, intact; and idle again without a pipe. The
        /// chain needs two descriptors a session in this process, and this machine caps it at
        /// 20,000 (no CAP_SYS_RESOURCE to raise the hard limit), so it runs as many sessions
        /// as fit.
        @Test(arguments: [SplicePlane.Trigger.edge, .level])
        func tenThousandIdleSessions(trigger: SplicePlane.Trigger) async throws {
            let wanted = 10_000
            let limits = FileLimit.current
            defer { FileLimit.set(limits) }
            let limit = FileLimit.raise(to: 2 * wanted + 1000)
            // Room for the pools' pipes and what else the test process opens.
            let sessions = min(wanted, (limit - OpenDescriptors.snapshot().count - 400) / 2)
            let loops = 2
            try await withPlane(loops: loops, trigger: trigger) { plane in
                let bound = plane.configuration.pooledPipesPerLoop * loops
                Memory.trim()
                let before = Memory.residentBytes()
                let start = ContinuousClock.now
                var handles: [SpliceSession] = []
                handles.reserveCapacity(sessions)
                let (head, first) = try SocketPair.make()
                var previous = first
                for _ in 0..<sessions {
                    let (second, next) = try SocketPair.make()
                    handles.append(
                        plane.start(first: Descriptor(rawValue: previous), second: Descriptor(rawValue: second)))
                    previous = next
                }
                let tail = previous
                defer {
                    close(head)
                    close(tail)
                }
                let idle = await Self.settled(plane, sessions: sessions, seconds: 60)
                let started = Timing.milliseconds(since: start)
                let grown = Memory.residentBytes() - before
                print(
                    "figure: \(sessions) idle sessions (\(trigger)) started in \(started) ms; resident memory grew "
                        + "by \(grown >> 10) KiB, \(grown / max(1, sessions)) bytes a session; \(idle)")
                // This machine's limit (20,000) leaves room for about 9,800; elsewhere as many
                // as fit, but enough to mean something.
                #expect(sessions >= 1_000, "only \(sessions) sessions fit under the descriptor limit")
                #expect(idle.sessions.reduce(0, +) == sessions)
                #expect(idle.pipesInUse == 0, "\(idle)")
                #expect(idle.openPipes <= bound, "\(idle)")
                #expect(grown / max(1, sessions) <= 16 << 10, "more than 16 KiB a session")

                // Bytes each way through every session of the chain, read and checked.
                let count = 64 << 10
                let moved = ContinuousClock.now
                let received = await Exchange.run(
                    [
                        .init(
                            fd: head, sends: Self.up, sendCount: count, expects: Self.down, halfCloses: false,
                            readCount: count),
                        .init(
                            fd: tail, sends: Self.down, sendCount: count, expects: Self.up, halfCloses: false,
                            readCount: count),
                    ], threads: 2)
                let exchanged = Timing.milliseconds(since: moved)
                let broken = received.filter {
                    $0.count != count || $0.firstMismatch != nil || $0.end != .stoppedAtCount
                }
                #expect(broken.isEmpty, "\(received)")
                let again = await Self.settled(plane, sessions: sessions, seconds: 60)
                print(
                    "figure: \(count >> 10) KiB each way through the chain of \(sessions) sessions (\(trigger)) in "
                        + "\(exchanged) ms; idle again: \(again)")
                #expect(again.pipesInUse == 0, "\(again)")
                #expect(again.openPipes <= bound, "\(again)")
                #expect(handles.allSatisfy { $0.endedWith == nil })
            }
        }

        /// A session reset while its forward pipe holds bytes (the target reads nothing):
        /// that pipe is closed, not pooled; the idle direction held none.
        @Test(arguments: [SplicePlane.Trigger.edge, .level])
        func aPipeStillHoldingBytesIsClosedNotPooled(trigger: SplicePlane.Trigger) async throws {
            try await withPlane(loops: 1, trigger: trigger) { plane in
                let counters = SpliceCounters()
                let rig = try SpliceRig.start(on: plane, meter: counters)
                defer { rig.close() }
                let pushed = Counter()
                let limit = Counter()
                limit.set(256 << 20)
                async let writing: Void? = try? rig.client.send(Self.up, upTo: limit, progress: pushed)
                #expect(await Timing.settle { pushed.current } != nil, "the writer never stalled")
                let stalled = plane.statistics
                #expect(stalled.pipesInUse == 1, "only the forward direction has bytes in flight: \(stalled)")
                rig.client.reset()
                let outcome = await rig.session.outcome(timeout: .seconds(5))
                #expect(outcome?.side == .first, "\(String(describing: outcome))")
                let after = plane.statistics
                print("figure: a pipe holding bytes at a reset (\(trigger)): before \(stalled), after \(after)")
                #expect(after.pipesInUse == 0)
                #expect(after.openPipes == stalled.openPipes - 1, "the full pipe was closed")
                #expect(after.idlePipes == stalled.idlePipes, "and not pooled")
                limit.set(0)
                _ = await writing
            }
        }

        /// No descriptor is left for a pipe when bytes come: the direction waits for one (the
        /// session stays up, its bytes in the socket), and once descriptors are free again it
        /// gets one within the pool's retry pause and the bytes go through.
        @Test(arguments: [SplicePlane.Trigger.edge, .level])
        func aDirectionThatGetsNoPipeWaitsForOne(trigger: SplicePlane.Trigger) async throws {
            // No pool: every pipe given back is closed, so each borrowing makes a new one.
            try await withPlane(loops: 1, trigger: trigger, pooledPipesPerLoop: 0) { plane in
                let counters = SpliceCounters()
                let rig = try SpliceRig.start(on: plane, meter: counters)
                defer { rig.close() }
                try await rig.client.write("ping")
                #expect(try await rig.target.read(count: 4) == "ping")
                #expect(await Timing.wait(seconds: 5) { plane.statistics.openPipes == 0 })
                // The loop publishes its statistics after its round, and may close the pipe
                // of "ping" just after this look: take every number again after a pause.
                let limits = FileLimit.current
                let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
                var fillers: [Int32] = []
                let squeezed = FileLimit.exhaust(&fillers, copying: null)
                try? await Task.sleep(for: .milliseconds(50))
                _ = FileLimit.exhaust(&fillers, copying: null)
                try await rig.client.write("hello")
                let waited = await Timing.wait(seconds: 5) { plane.statistics.waitingForPipe == 1 }
                // Long enough for a few retries, all failing.
                try? await Task.sleep(for: .milliseconds(350))
                let waiting = plane.statistics
                FileLimit.set(limits)
                for fd in fillers + [null] { close(fd) }
                print(
                    "figure: no descriptor for a pipe (\(trigger), limit \(squeezed), \(fillers.count) taken by the "
                        + "test): \(waiting); outcome so far: "
                        + "\(rig.session.endedWith.map { "\($0)" } ?? "none")")
                #expect(waited, "the session did not wait for a pipe")
                #expect(waiting.waitingForPipe == 1)
                #expect(rig.session.endedWith == nil)
                #expect(counters.forward == 4)
                let start = ContinuousClock.now
                #expect(try await rig.target.read(count: 5) == "hello")
                print("figure: the bytes went through \(Timing.milliseconds(since: start)) ms after the limit rose")
                #expect(await Timing.wait(seconds: 5) { plane.statistics.waitingForPipe == 0 })
                try await rig.target.write("bye")
                #expect(try await rig.client.read(count: 3) == "bye")
                try rig.client.finishWriting()
                try rig.target.finishWriting()
                #expect(await rig.session.outcome(timeout: .seconds(5)) == .finished)
                #expect(counters.forward == 9 && counters.backward == 3)
            }
        }

        /// The plane's statistics once `sessions` sessions run and no pipe has been in use for
        /// a while (waits at most `seconds`, then returns what it sees).
        static func settled(_ plane: SplicePlane, sessions: Int, seconds: Double = 10) async -> SplicePlane.Statistics {
            var quiet = 0
            let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
            while ContinuousClock.now < deadline {
                let now = plane.statistics
                quiet = now.sessions.reduce(0, +) == sessions && now.pipesInUse == 0 ? quiet + 1 : 0
                if quiet >= 5 { return now }
                try? await Task.sleep(for: .milliseconds(20))
            }
            return plane.statistics
        }
    }
}

/// A connected pair of Unix stream sockets, close-on-exec: what splice(2) moves bytes
/// between as it does between TCP sockets, without using a port.
enum SocketPair {
    static func make() throws -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw SystemError(call: "socketpair")
        }
        return (fds[0], fds[1])
    }
}

/// This process's descriptor limit (RLIMIT_NOFILE).
enum FileLimit {
    static var current: rlimit {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        return limit
    }

    static func set(_ limit: rlimit) {
        var limit = limit
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }

    /// Raises the limit to at least `wanted` where it may (root may raise the hard limit
    /// too); the limit now.
    static func raise(to wanted: Int) -> Int {
        var limit = self.current
        guard limit.rlim_cur < rlim_t(wanted) else { return Int(limit.rlim_cur) }
        let old = limit
        limit.rlim_cur = rlim_t(wanted)
        limit.rlim_max = max(limit.rlim_max, rlim_t(wanted))
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) != 0 {
            limit = old
            limit.rlim_cur = limit.rlim_max
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        return Int(self.current.rlim_cur)
    }

    /// Lowers the soft limit to a few numbers above the lowest free descriptor (on the first
    /// call, with `fillers` empty) and takes every number still free below it, as copies of
    /// `source` kept in `fillers`: pipe2(2) fails with EMFILE until they are closed (or the
    /// limit raised). A later call takes the numbers freed since. The limit set.
    static func exhaust(_ fillers: inout [Int32], copying source: Int32) -> Int {
        if fillers.isEmpty {
            let free = dup(source)
            close(free)
            var limit = self.current
            limit.rlim_cur = rlim_t(free + 8)
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        while true {
            let fd = dup(source)
            guard fd >= 0 else { break }
            fillers.append(fd)
        }
        return Int(self.current.rlim_cur)
    }
}

/// This process's resident memory (VmRSS).
enum Memory {
    /// Gives the heap's free pages back to the kernel (malloc_trim(3), which Swift's Glibc
    /// module does not import): memory freed by an earlier test, reused without a page fault,
    /// would hide what is measured next.
    static func trim() {
        guard let symbol = dlsym(nil, "malloc_trim") else { return }
        typealias Trim = @convention(c) (Int) -> Int32
        _ = unsafeBitCast(symbol, to: Trim.self)(0)
    }

    static func residentBytes() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let kilobytes = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
            return kilobytes << 10
        }
        return 0
    }
}
