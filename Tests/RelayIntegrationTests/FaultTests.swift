import Foundation
import NIOCore
import RelayProtocol
import Synchronization
import Testing

/// Faults of a peer process: a daemon killed with SIGKILL, a target that refuses, a target
/// that never answers, an agent that never opens its data channel. Each ends what it must,
/// promptly and with nothing left open, and the rest goes on serving.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct FaultTests {
    /// Which way the bulk of a transfer flows.
    enum Direction: String, Sendable, CaseIterable, CustomTestStringConvertible {
        /// Target → client (a `source` target).
        case download
        /// Client → target (a `hashReply` target).
        case upload
        var testDescription: String { self.rawValue }
    }

    /// More than a transfer moves before the fault: it is always in flight when it hits.
    static let endless = 1 << 40
    /// How soon a client must learn that its session died.
    static let prompt = Duration.seconds(2)

    // MARK: 1. kill -9 of the agent

    /// A session in full flow when the agent dies: the client's session ends at once, the
    /// relay frees it all, and a restarted agent serves again within 5 s.
    @Test(arguments: Direction.allCases)
    func agentKilledMidTransfer(_ direction: Direction) async throws {
        let bulk = try await TargetServer.start(direction == .download ? .source(bytes: Self.endless) : .hashReply)
        let echo = try await TargetServer.start(.echo)
        defer {
            Task {
                await bulk.close()
                await echo.close()
            }
        }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "bulk", agent: "office"), .init(name: "echo", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let first = try await relay.startAgent(id: "office", services: ["bulk": bulk.port, "echo": echo.port])
            let baseline = relay.baseline()
            let transfer = try await Transfer.start(direction, port: relay.servicePort("bulk"))
            try await transfer.waitForProgress(atLeast: 4 << 20)
            #expect(try await self.sessions(relay.directory + "/proxy.sock").count == 1)

            first.signal(SIGKILL)
            let killed = ContinuousClock.now
            let end = try await transfer.end(limit: .seconds(10))
            let elapsed = end.at - killed
            print(
                "figure: \(direction) client's session ended (\(end.how)) \(elapsed) after kill -9 of the agent, "
                    + "\(transfer.bytes) bytes moved")
            #expect(elapsed < Self.prompt, "\(direction): the client learnt of the agent's death after \(elapsed)")
            #expect(transfer.bytes < Self.endless)
            try await first.waitForExit()

            try await relay.proxy.waitForLine(containing: "agent disconnected", "agent=office")
            let closed = try await relay.proxy.waitForLine(containing: "session closed")
            print("figure: \(direction): relay's session closed \(Self.summary(closed))")
            try await bulk.waitForClosed(1)
            try await relay.expectNothingLeftOpen(since: baseline)
            try await self.expectNoSessions(relay.directory + "/proxy.sock")
            // With the agent gone, clients are refused at once rather than left hanging.
            #expect(try await TestClient.timeUntilClosed(port: relay.servicePort("echo")) < Self.prompt)

            let restart = ContinuousClock.now
            try await relay.startAgent(
                id: "office", services: ["bulk": bulk.port, "echo": echo.port], waitForRegistration: false)
            try await self.untilEchoWorks(port: relay.servicePort("echo"), limit: .seconds(5))
            let back = ContinuousClock.now - restart
            print("figure: \(direction): a restarted agent served a new session \(back) after its start")
            #expect(back < .seconds(5))
            let again = relay.baseline()
            #expect(
                try await TestClient.exchange(port: relay.servicePort("echo"), request: Array("again".utf8))
                    == Array("again".utf8))
            try await relay.expectNothingLeftOpen(since: again)
        }
    }

    // MARK: 2. kill -9 of the relay

    /// The agent retries a dead relay with delays that double up to the maximum, each off
    /// its nominal value by the jitter, and is back within the delay it was sleeping + 1 s
    /// of a restart on the same port.
    @Test func relayKilledAgentBacksOffWithJitterAndComesBack() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        let (initial, maximum) = (0.2, 1.6)
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "web", agent: "office")]
        ) { relay in
            let firstRelay = try await relay.startProxy()
            let agent = try await relay.startAgent(
                id: "office", services: ["web": echo.port],
                options: ["reconnectInitialDelaySeconds": initial, "reconnectMaxDelaySeconds": maximum])
            let port = relay.servicePort("web")
            #expect(try await TestClient.exchange(port: port, request: Array("one".utf8)) == Array("one".utf8))

            firstRelay.signal(SIGKILL)
            try await firstRelay.waitForExit()
            // The loss itself, then five failed attempts.
            let attempts = 6
            try await agent.waitForLine(containing: "relay connection lost", count: attempts, timeout: .seconds(20))
            let lost = Array(agent.lines(containing: "relay connection lost").prefix(attempts))
            let delays = lost.map { Double(RelayFixture.field("retryInSeconds", in: $0) ?? "") ?? -1 }
            let nominal = (0..<attempts).map { min(initial * Double(1 << $0), maximum) }
            print("figure: retry delays \(delays) s, nominal \(nominal) s (±20% jitter)")
            for (delay, expected) in zip(delays, nominal) {
                #expect(
                    delay >= expected * 0.8 - 0.001 && delay <= expected * 1.2 + 0.001,
                    "delay \(delay) s is not within ±20% of \(expected) s")
            }
            #expect(zip(delays, delays.dropFirst()).prefix(3).allSatisfy { $0 < $1 }, "delays do not grow: \(delays)")
            #expect(delays.allSatisfy { $0 <= maximum * 1.2 + 0.001 }, "a delay exceeds the maximum: \(delays)")
            #expect(
                zip(delays, nominal).contains { abs($0 - $1) > 0.001 }, "no jitter: every delay is nominal: \(delays)")
            #expect(lost.dropFirst().allSatisfy { $0.contains("cannot connect") }, "\(lost)")

            let secondRelay = try await relay.startProxy()
            let ready = ContinuousClock.now
            try await self.untilEchoWorks(port: port, limit: .seconds(10))
            let elapsed = ContinuousClock.now - ready
            try await secondRelay.waitForLine(containing: "agent connected", "agent=office")
            // The delay the agent was sleeping when the relay came back: the last one it
            // logged before it registered again.
            let log = agent.log
            let registeredAgain = log.indices.filter { log[$0].contains("registered with relay") }.dropFirst().first
            let sleeping = log[..<(registeredAgain ?? log.endIndex)].last { $0.contains("relay connection lost") }
            let delay = sleeping.flatMap { RelayFixture.field("retryInSeconds", in: $0) }.flatMap(Double.init) ?? 0
            print(
                "figure: relay restarted on port \(relay.agentPort); the agent was sleeping \(delay) s; "
                    + "sessions worked again \(elapsed) after the relay was ready (bound \(delay) s + 1 s)")
            #expect(elapsed < .seconds(delay + 1))
            #expect(agent.lines(containing: "registered with relay").count == 2)
            let baseline = relay.baseline()
            #expect(try await TestClient.exchange(port: port, request: Array("two".utf8)) == Array("two".utf8))
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }

    // MARK: 3. a target that never answers a half-closed request

    /// Which daemons enforce `halfCloseTimeoutSeconds` in a run (0 turns it off elsewhere).
    enum HalfCloseLimit: String, Sendable, CaseIterable, CustomTestStringConvertible {
        case both, proxyOnly, agentOnly
        var proxy: Bool { self != .agentOnly }
        var agent: Bool { self != .proxyOnly }
        var testDescription: String { self.rawValue }
    }

    /// A client sends a request and half-closes; the target reads it and then neither
    /// answers nor closes. Each daemon that has a half-close timeout resets the session
    /// once nothing moved for that long after the half-close, and every hop is freed.
    @Test(arguments: HalfCloseLimit.allCases)
    func halfClosedSessionToASilentTargetIsReclaimed(_ limit: HalfCloseLimit) async throws {
        let target = try await TargetServer.start(.silent)
        defer { Task { await target.close() } }
        let timeout = 1.0
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "quiet", agent: "office")],
            proxyOptions: ["halfCloseTimeoutSeconds": limit.proxy ? timeout : 0]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(
                id: "office", services: ["quiet": target.port],
                options: ["halfCloseTimeoutSeconds": limit.agent ? timeout : 0])
            let baseline = relay.baseline()
            let connection = try await TestClient.connect(port: relay.servicePort("quiet"))
            let (elapsed, how) = try await connection.executeThenClose { inbound, outbound in
                try await outbound.write(ByteBuffer(string: "GET / HTTP/1.0\r\n\r\n"))
                try await agent.waitForLine(containing: "session attached")
                // Longer than the daemons' watch looks (a quarter of the timeout): the request
                // has been seen moving, so only a timeout counted from the half-close holds.
                try await Task.sleep(for: .milliseconds(600))
                outbound.finish()
                let halfClosed = ContinuousClock.now
                let how = try await Self.readToEnd(inbound, limit: .seconds(timeout + 5))
                return (ContinuousClock.now - halfClosed, how)
            }
            print(
                "figure: \(limit): half-closed session reclaimed \(elapsed) after the client's FIN (\(how); timeout \(timeout) s)"
            )
            #expect(elapsed >= .seconds(timeout), "reset before the half-close timeout: \(elapsed)")
            #expect(elapsed < .seconds(timeout + 1.5), "reset late: \(elapsed)")
            #expect(how != "end of stream", "the client must see a reset, not a clean end")
            try await target.waitForClosed(1)
            let proxyClosed = try await relay.proxy.waitForLine(containing: "session closed")
            let agentClosed = try await agent.waitForLine(containing: "session closed")
            let marker = "half-closed and idle for 1s"
            switch limit {
            case .both: #expect(proxyClosed.contains(marker) || agentClosed.contains(marker))
            case .proxyOnly:
                #expect(proxyClosed.contains("agent side: \(marker)"), "\(proxyClosed)")
                #expect(!agentClosed.contains(marker), "\(agentClosed)")
            case .agentOnly:
                #expect(agentClosed.contains("target: \(marker)"), "\(agentClosed)")
                #expect(!proxyClosed.contains(marker), "\(proxyClosed)")
            }
            try await relay.expectNothingLeftOpen(since: baseline)
            try await self.expectNoSessions(relay.directory + "/proxy.sock")
            try await self.expectNoSessions(relay.directory + "/agent-office.sock")
        }
    }

    /// A client half-closes, then resets its connection while the target is still silent:
    /// the reset must tear the whole session down at once (the relay's direction towards
    /// the agent has already ended, so only the client's channel closing can tell it).
    @Test func resetAfterAHalfCloseTearsTheSessionDown() async throws {
        let target = try await TargetServer.start(.silent)
        defer { Task { await target.close() } }
        // A backstop only, so that a reset that goes unnoticed shows as this long a wait.
        let halfClose: [String: Any] = ["halfCloseTimeoutSeconds": 4.0]
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "quiet", agent: "office")],
            proxyOptions: halfClose
        ) { relay in
            try await relay.startProxy()
            try await relay.startAgent(id: "office", services: ["quiet": target.port], options: halfClose)
            let baseline = relay.baseline()
            let connection = try await TestClient.connect(port: relay.servicePort("quiet"))
            let reset = try await connection.executeThenClose { _, outbound in
                try await outbound.write(ByteBuffer(string: "request"))
                outbound.finish()
                // The FIN has gone all the way: the agent has passed it on to the target.
                try await self.waitForSessionState("half-closed-in", relay.directory + "/agent-office.sock")
                try await self.waitForSessionState("half-closed-in", relay.directory + "/proxy.sock")
                TestClient.reset(connection.channel)
                return ContinuousClock.now
            }
            let closed = try await Self.untilClosed(target, limit: .seconds(10))
            print("figure: client reset after its half-close: target connection closed \(closed - reset) later")
            #expect(closed - reset < Self.prompt, "the session outlived the client's reset by \(closed - reset)")
            let proxyClosed = try await relay.proxy.waitForLine(containing: "session closed")
            #expect(proxyClosed.contains("reason=\"client:"), "\(proxyClosed)")
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }

    // MARK: 4. a target that refuses

    /// A target whose port is closed: each client is closed at once with the reason
    /// logged, and the agent and relay go on serving on the same control channel.
    @Test func refusingTargetClosesEachClientAtOnceAndTheRestGoesOn() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        let deadPort = try await TargetServer.closedPort()
        // Long, so that only the agent's refusal can close the client in time.
        let attachTimeout = 30.0
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "down", agent: "office"), .init(name: "echo", agent: "office")],
            proxyOptions: ["attachTimeoutSeconds": attachTimeout]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["down": deadPort, "echo": echo.port])
            let baseline = relay.baseline()
            let clients = 5
            var times: [Duration] = []
            for _ in 0..<clients {
                times.append(try await TestClient.timeUntilClosed(port: relay.servicePort("down"), limit: .seconds(10)))
            }
            print("figure: \(clients) clients of a refusing target closed after \(times) (slowest \(times.max()!))")
            #expect(times.allSatisfy { $0 < Self.prompt }, "\(times)")
            try await relay.proxy.waitForLine(
                containing: "session failed", "refused by agent (target_unreachable)", count: clients)
            try await agent.waitForLine(
                containing: "session refused: cannot connect to 127.0.0.1:\(deadPort): connection refused",
                count: clients)
            #expect(
                try await TestClient.exchange(port: relay.servicePort("echo"), request: Array("alive".utf8))
                    == Array("alive".utf8))
            #expect(relay.proxy.isRunning && agent.isRunning)
            #expect(agent.lines(containing: "registered with relay").count == 1, "the control channel was not replaced")
            #expect(agent.lines(containing: "relay connection lost").isEmpty)
            try await relay.expectNothingLeftOpen(since: baseline)
            try await self.expectNoSessions(relay.directory + "/proxy.sock")
        }
    }

    // MARK: 5. a data channel that never attaches

    /// An agent that registers and is asked for a session but never opens its data channel:
    /// the relay closes the waiting client after `attachTimeoutSeconds`, not before, and a
    /// data channel that comes later finds no session.
    @Test func dataChannelThatNeverAttachesClosesTheClientAfterTheAttachTimeout() async throws {
        let attachTimeout = 1.5
        try await withFixture(
            agents: [.init(id: "lazy", secret: "s3cret-s3cret-s3cret")], services: [.init(name: "web", agent: "lazy")],
            proxyOptions: ["attachTimeoutSeconds": attachTimeout]
        ) { relay in
            try await relay.startProxy()
            let fake = try await FakeAgent.connect(port: relay.agentPort)
            try await fake.session { lines in
                guard
                    case .registered? = try await lines.handshake(
                        id: "lazy", secret: "s3cret-s3cret-s3cret", services: ["web"])
                else { throw HarnessError("the fake agent was not registered") }
                try await relay.proxy.waitForLine(containing: "agent connected", "agent=lazy")
                let baseline = relay.baseline()
                let port = relay.servicePort("web")
                async let closedAfter = TestClient.timeUntilClosed(port: port, limit: .seconds(attachTimeout + 5))
                // S7: the relay asks; the agent never answers with a data channel.
                var connect: ControlMessage.Connect?
                while connect == nil, let message = try await lines.receive() {
                    if case .connect(let request) = message { connect = request }
                }
                let elapsed = try await closedAfter
                print(
                    "figure: client of an agent that never attaches closed after \(elapsed) (attachTimeoutSeconds \(attachTimeout))"
                )
                guard let connect else { throw HarnessError("the relay never asked for a data channel") }
                #expect(elapsed >= .seconds(attachTimeout), "closed before the attach timeout: \(elapsed)")
                #expect(elapsed < .seconds(attachTimeout + 1), "closed late: \(elapsed)")
                try await relay.proxy.waitForLine(
                    containing: "session failed", "no data channel from the agent within \(attachTimeout)s")

                // The session is gone, not waiting: a late data channel is turned away.
                let late = try await FakeAgent.connect(port: relay.agentPort)
                let answer = try await late.session { data -> ControlMessage? in
                    try await data.send(.attach(.proved(connect, secret: "s3cret-s3cret-s3cret")))
                    return try await data.receive()
                }
                if case .attached? = answer { Issue.record("a data channel after the attach timeout was attached") }
                try await relay.expectNothingLeftOpen(since: baseline)
                try await self.expectNoSessions(relay.directory + "/proxy.sock")
                // The agent itself was not dropped for it.
                #expect(relay.proxy.lines(containing: "agent disconnected").isEmpty)
            }
        }
    }

    // MARK: Helpers

    /// Repeats an echo exchange until it succeeds.
    private func untilEchoWorks(port: Int, limit: Duration) async throws {
        let start = ContinuousClock.now
        while ContinuousClock.now - start < limit {
            let message = TestData.random(100)
            if (try? await TestClient.exchange(port: port, request: message)) == message { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw HarnessError("the tunnel did not work again within \(limit)")
    }

    /// The sessions `relayctl sessions` lists on the daemon at `socket`.
    private func sessions(_ socket: String) async throws -> [Any] {
        guard let list = try await Relayctl.json(["--socket", socket, "sessions"]) as? [Any] else {
            throw HarnessError("relayctl sessions did not print an array")
        }
        return list
    }

    /// Waits until the one session `relayctl sessions` lists on the daemon at `socket` is in `state`.
    private func waitForSessionState(_ state: String, _ socket: String, timeout: Duration = .seconds(5)) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            let listed = try await self.sessions(socket)
            if listed.count == 1, (listed[0] as? [String: Any])?["state"] as? String == state { return }
            guard ContinuousClock.now < deadline else {
                throw HarnessError("relayctl sessions on \(socket) never showed one session \(state): \(listed)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Waits until `relayctl sessions` on the daemon at `socket` lists nothing.
    private func expectNoSessions(_ socket: String, timeout: Duration = .seconds(5)) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            let listed = try await self.sessions(socket)
            if listed.isEmpty { return }
            guard ContinuousClock.now < deadline else {
                throw HarnessError("relayctl sessions on \(socket) still lists \(listed)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// When the target's first connection closed; throws after `limit`.
    private static func untilClosed(_ target: TargetServer, limit: Duration) async throws -> ContinuousClock.Instant {
        let deadline = ContinuousClock.now + limit
        while target.stats.closed.load(ordering: .relaxed) < 1 {
            guard ContinuousClock.now < deadline else {
                throw HarnessError("the target connection was still open \(limit) after the client's reset")
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        return ContinuousClock.now
    }

    /// The byte counts and reason of a `session closed` line.
    static func summary(_ line: String) -> String {
        let reason = line.range(of: "reason=").map { String(line[$0.upperBound...]) } ?? "?"
        let bytesIn = RelayFixture.field("bytesIn", in: line) ?? "?"
        let bytesOut = RelayFixture.field("bytesOut", in: line) ?? "?"
        return "bytesIn=\(bytesIn) bytesOut=\(bytesOut) reason=\(reason)"
    }

    /// Reads until the connection ends; "end of stream" or the error, or throws after `limit`.
    static func readToEnd(_ inbound: NIOAsyncChannelInboundStream<ByteBuffer>, limit: Duration) async throws -> String {
        try await withThrowingTaskGroup(of: String?.self) { group in
            group.addTask {
                do {
                    for try await _ in inbound {}
                    return "end of stream"
                } catch {
                    return "\(error)"
                }
            }
            group.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            let first = try await group.next()!
            group.cancelAll()
            guard let first else { throw HarnessError("the connection stayed open for over \(limit)") }
            return first
        }
    }
}

/// A bulk transfer through the relay in a task of its own: a download read as fast as it
/// comes, or an upload written as fast as it goes, until the connection ends.
final class Transfer: Sendable {
    /// When and how the client's side of it ended.
    struct End: Sendable {
        var at: ContinuousClock.Instant
        var how: String
    }

    private let moved = Atomic<Int>(0)
    private let ended = Mutex<End?>(nil)

    /// Bytes received (download) or written (upload) so far.
    var bytes: Int { self.moved.load(ordering: .relaxed) }

    private init() {}

    static func start(_ direction: FaultTests.Direction, port: Int) async throws -> Transfer {
        let transfer = Transfer()
        let connection = try await TestClient.connect(port: port)
        Task {
            let end: End
            do {
                end = try await connection.executeThenClose { inbound, outbound in
                    switch direction {
                    case .download:
                        return await transfer.read(inbound)
                    case .upload:
                        return await withTaskGroup(of: End.self) { group in
                            group.addTask { await transfer.read(inbound) }
                            group.addTask { await transfer.write(outbound) }
                            let first = await group.next()!
                            // The other side of the connection fails too once it is closed.
                            connection.channel.close(promise: nil)
                            return first
                        }
                    }
                }
            } catch {
                end = End(at: .now, how: "error: \(error)")
            }
            transfer.ended.withLock { $0 = $0 ?? end }
        }
        return transfer
    }

    private func read(_ inbound: NIOAsyncChannelInboundStream<ByteBuffer>) async -> End {
        do {
            for try await chunk in inbound { self.moved.add(chunk.readableBytes, ordering: .relaxed) }
            return End(at: .now, how: "end of stream")
        } catch {
            return End(at: .now, how: "read error: \(error)")
        }
    }

    private func write(_ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async -> End {
        let chunk = 64 * 1024
        do {
            while true {
                try await outbound.write(TestData.slice(offset: self.bytes, length: chunk))
                self.moved.add(chunk, ordering: .relaxed)
            }
        } catch {
            return End(at: .now, how: "write error: \(error)")
        }
    }

    /// Waits until at least `count` bytes moved.
    func waitForProgress(atLeast count: Int, timeout: Duration = .seconds(10)) async throws {
        let deadline = ContinuousClock.now + timeout
        while self.bytes < count {
            guard ContinuousClock.now < deadline else { throw HarnessError("only \(self.bytes) bytes moved") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Waits for the transfer to end; throws if it is still going after `limit`.
    func end(limit: Duration) async throws -> End {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if let end = self.ended.withLock({ $0 }) { return end }
            try await Task.sleep(for: .milliseconds(2))
        }
        throw HarnessError("the transfer was still going \(limit) later, \(self.bytes) bytes moved")
    }
}
