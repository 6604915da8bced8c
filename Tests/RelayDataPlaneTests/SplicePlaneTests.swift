import Glibc
import RelayDataPlane
import Testing

extension SpliceTests {
    /// The plane as a whole: many sessions over several loops, descriptors, SIGPIPE, and
    /// throughput figures.
    @Suite(.timeLimit(.minutes(2)))
    struct SplicePlaneTests {
        static let up = TestPattern(seed: 1)
        static let down = TestPattern(seed: 524_287)

        /// 200 sessions at once on 4 loops, 256 KiB each way each, all checked; the sessions
        /// are spread over the loops in turn, and every loop is empty afterwards.
        @Test(arguments: [SplicePlane.Trigger.edge, .level])
        func manySessionsAtOnceOnSeveralLoops(trigger: SplicePlane.Trigger) async throws {
            let sessions = 200
            let size = 256 << 10
            try await withPlane(loops: 4, trigger: trigger) { plane in
                let rigs = try (0..<sessions).map { _ in try SpliceRig.start(on: plane) }
                defer { for rig in rigs { rig.close() } }
                let perLoop = Dictionary(grouping: rigs, by: \.session.loop).mapValues(\.count)
                #expect(perLoop == [0: 50, 1: 50, 2: 50, 3: 50], "\(perLoop)")
                let start = ContinuousClock.now
                let ends = rigs.flatMap { rig in
                    [
                        Exchange.End(fd: rig.client.fd, sends: Self.up, sendCount: size, expects: Self.down),
                        Exchange.End(fd: rig.target.fd, sends: Self.down, sendCount: size, expects: Self.up),
                    ]
                }
                let received = await Exchange.run(ends, threads: 4)
                var outcomes: [SpliceOutcome?] = []
                for rig in rigs { outcomes.append(await rig.session.outcome(timeout: .seconds(10))) }
                let elapsed = Timing.milliseconds(since: start)
                print(
                    "figure: \(sessions) sessions (\(trigger)) on 4 loops, \(size >> 10) KiB each way each, in "
                        + "\(elapsed) ms")
                let broken = received.enumerated().filter { !$0.element.isIntact(size) }
                #expect(broken.isEmpty, "\(broken.count) streams broken, first: \(broken.first.map { "\($0)" } ?? "")")
                let unfinished = outcomes.filter { $0 != .finished }
                #expect(
                    unfinished.isEmpty,
                    "\(unfinished.count) not finished, first: \(String(describing: unfinished.first))")
                #expect(plane.statistics.sessions == [0, 0, 0, 0])
                #expect(plane.statistics.openPipes == plane.statistics.idlePipes)
            }
        }

        /// Sessions ended every way (finished, reset by either side, killed, cut by the
        /// half-close limit, still running at shutdown) leave no descriptor open: neither the
        /// sockets the plane was given (found by inode) nor any pipe, epoll or eventfd.
        @Test func noDescriptorIsLeftOpen() async throws {
            let before = OpenDescriptors.snapshot()
            let rigs = try await withPlane(loops: 2) { plane in
                // The outer peers stay open until the plane has stopped: closing them first
                // would end the last sessions with their FINs instead.
                var rigs: [SpliceRig] = []
                // Five rounds of four sessions, each round ended another way.
                for round in 0..<5 {
                    let limits = SpliceLimits(halfCloseTimeout: round == 3 ? .milliseconds(100) : .seconds(120))
                    let batch = try (0..<4).map { _ in
                        try SpliceRig.start(on: plane, limits: limits, pendingForward: Array("hi".utf8))
                    }
                    rigs += batch
                    for rig in batch {
                        try await rig.client.write("ping")
                        #expect(try await rig.target.read(count: 6) == "hiping")
                    }
                    for rig in batch {
                        switch round {
                        case 0:
                            try rig.client.finishWriting()
                            try rig.target.finishWriting()
                        case 1: rig.client.reset()
                        case 2: rig.target.reset()
                        case 3: try rig.target.finishWriting()
                        default: break  // Still running when the plane stops.
                        }
                    }
                    if round == 4 {
                        for rig in batch.prefix(2) { rig.session.kill() }
                    } else {
                        for rig in batch { _ = await rig.session.outcome(timeout: .seconds(5)) }
                    }
                }
                _ = await rigs[16].session.outcome(timeout: .seconds(5))
                _ = await rigs[17].session.outcome(timeout: .seconds(5))
                let during = OpenDescriptors.snapshot()
                print(
                    "figure: descriptors: \(before.count) before, \(during.count) with 2 sessions running and the "
                        + "pools holding the rest: \(OpenDescriptors.kinds(during)); \(plane.statistics)")
                #expect(plane.statistics.sessions.reduce(0, +) == 2)
                return rigs
            }
            for rig in rigs { rig.close() }
            // The plane's descriptors were closed by its threads, which have exited.
            let after = OpenDescriptors.snapshot()
            let outcomes = rigs.map { $0.session.endedWith.map { "\($0)" } ?? "running" }
            let expected =
                [String](repeating: "finished", count: 4)
                + [String](repeating: "failed at the first socket: connection reset by peer", count: 4)
                + [String](repeating: "failed at the second socket: connection reset by peer", count: 4)
                + [String](repeating: "half-closed and idle for 0.1s (the first socket stayed open)", count: 4)
                + ["aborted: killed", "aborted: killed", "aborted: data plane stopped", "aborted: data plane stopped"]
            #expect(outcomes == expected)
            let inner = rigs.flatMap(\.innerInodes)
            let leftSockets = inner.filter { inode in after.values.contains("socket:[\(inode)]") }
            #expect(leftSockets.isEmpty, "the plane left \(leftSockets.count) of its sockets open")
            let new = after.filter { before[$0.key] != $0.value }
            #expect(
                new.isEmpty,
                "open now and not before: \(new.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" })")
        }

        @Test func sessionsStartedOnAStoppedPlaneEndAtOnce() async throws {
            let plane = try SplicePlane(SplicePlane.Configuration(loops: 1))
            plane.shutdown()
            let (client, first) = try Loopback.connection()
            let (second, target) = try Loopback.connection()
            let peers = [Peer(fd: client), Peer(fd: target)]
            defer { for peer in peers { peer.close() } }
            let session = plane.start(first: Descriptor(rawValue: first), second: Descriptor(rawValue: second))
            #expect(session.endedWith == .aborted(reason: "data plane stopped"))
            for peer in peers {
                let seen = await peer.receive(Self.up, seconds: 5)
                #expect(seen.end?.isReset == true, "\(seen)")
            }
        }

        /// Splicing into a socket whose peer has gone raises SIGPIPE; the plane ignores it
        /// for the process, or the daemon would die with the session.
        @Test func sigpipeIsIgnoredOnceAPlaneRuns() throws {
            let plane = try SplicePlane(SplicePlane.Configuration(loops: 1))
            defer { plane.shutdown() }
            var action = sigaction()
            #expect(sigaction(SIGPIPE, nil, &action) == 0)
            // SIG_IGN is the handler 1.
            #expect(unsafeBitCast(action.__sigaction_handler.sa_handler, to: Int.self) == 1)
        }

        /// Rough figures, no assertions on them: one stream one way through a direct
        /// loopback connection and through one spliced hop, in both trigger modes, with each
        /// byte checked at the reader. On this 2-core machine the writer, the reader and the
        /// hop share the CPUs.
        @Test func throughputFigures() async throws {
            let size = 1 << 30
            func megabytesPerSecond(_ milliseconds: Int) -> Int {
                Int(Double(size) / 1_048_576 / (Double(max(1, milliseconds)) / 1000))
            }
            func direct() async throws -> Int {
                let (client, target) = try Loopback.connection()
                defer {
                    close(client)
                    close(target)
                }
                let start = ContinuousClock.now
                let received = await Exchange.run(
                    [
                        .init(fd: client, sends: Self.up, sendCount: size, expects: Self.down),
                        .init(fd: target, sends: Self.down, sendCount: 0, expects: Self.up),
                    ], threads: 2)
                #expect(received[1].isIntact(size), "\(received[1])")
                return Timing.milliseconds(since: start)
            }
            func spliced(_ trigger: SplicePlane.Trigger) async throws -> Int {
                try await withPlane(loops: 1, trigger: trigger) { plane in
                    let rig = try SpliceRig.start(on: plane)
                    defer { rig.close() }
                    let start = ContinuousClock.now
                    let received = await Exchange.run(
                        [
                            .init(fd: rig.client.fd, sends: Self.up, sendCount: size, expects: Self.down),
                            .init(fd: rig.target.fd, sends: Self.down, sendCount: 0, expects: Self.up),
                        ], threads: 2)
                    #expect(received[1].isIntact(size), "\(received[1])")
                    #expect(await rig.session.outcome(timeout: .seconds(5)) == .finished)
                    return Timing.milliseconds(since: start)
                }
            }
            var rounds: [(direct: Int, edge: Int, level: Int)] = []
            for _ in 0..<3 {
                let plain = try await direct()
                let edge = try await spliced(.edge)
                let level = try await spliced(.level)
                rounds.append((plain, edge, level))
            }
            func median(_ values: [Int]) -> Int { values.sorted()[values.count / 2] }
            let plain = megabytesPerSecond(median(rounds.map(\.direct)))
            let edge = megabytesPerSecond(median(rounds.map(\.edge)))
            let level = megabytesPerSecond(median(rounds.map(\.level)))
            print(
                "figure: throughput, 1 GiB one way, median of 3: direct \(plain) MiB/s; one spliced hop "
                    + "edge-triggered \(edge) MiB/s (\(edge * 100 / max(1, plain))% of direct), level-triggered "
                    + "\(level) MiB/s (\(level * 100 / max(1, plain))%)")
        }
    }
}
