import Foundation
import NIOCore
import RelayCore
import Synchronization
import Testing

/// Faults of the network, not of a process: a path that silently drops every packet (no
/// FIN, no reset), injected with nftables inside a network namespace of the test's own, in
/// which the daemons, the targets and the clients all run (see ``NetNamespace``).
@Suite(
    .serialized, .timeLimit(.minutes(3)),
    .enabled("needs root, ip and nft (apt-get install -y iproute2 nftables)") { NetNamespace.isAvailable() }
)
struct NetworkFaultTests {
    static let agents = [RelayFixture.Agent(id: "office", secret: "s3cret-s3cret-s3cret")]

    // MARK: A. the control channel's path goes dark

    /// Every packet of the control channel is dropped, and so is every new connection to
    /// the agent port: both ends declare the other dead within their heartbeat timeout,
    /// the agent keeps trying, and once the path is back it reconnects and serves. A
    /// download joined before the outage runs through it untouched.
    @Test func controlChannelBlackholedIsDeclaredDeadAndComesBackWhileADownloadGoesOn() async throws {
        try await NetNamespace.with { namespace in
            let total = 64 << 20
            let source = try await namespace.startTarget(.source(bytes: total))
            let echo = try await namespace.startTarget(.echo)
            defer {
                Task {
                    await source.close()
                    await echo.close()
                }
            }
            let heartbeat: [String: Any] = ["heartbeatIntervalSeconds": 0.5, "heartbeatTimeoutSeconds": 2.0]
            try await withFixture(
                agents: Self.agents,
                services: [.init(name: "bulk", agent: "office"), .init(name: "echo", agent: "office")],
                proxyOptions: heartbeat
            ) { relay in
                try await relay.startProxy()
                let agentOptions = heartbeat.merging([
                    "connectTimeoutSeconds": 1.0, "reconnectInitialDelaySeconds": 0.2, "reconnectMaxDelaySeconds": 1.0,
                ]) { _, new in new }
                let agent = try await relay.startAgent(
                    id: "office", services: ["bulk": source.port, "echo": echo.port], options: agentOptions)
                let baseline = relay.baseline()
                let registered = try await agent.waitForLine(containing: "registered with relay")
                guard let local = RelayFixture.field("local", in: registered),
                    let controlPort = local.split(separator: ":").last.flatMap({ Int($0) })
                else { throw HarnessError("no local= in \(registered)") }

                // A download, read slowly so that it is still flowing all through the outage.
                let download = try await SlowDownload.start(namespace: namespace, port: relay.servicePort("bulk"))
                try await download.waitForProgress(atLeast: 1 << 20)
                try await agent.waitForLine(containing: "session attached")

                // The control channel goes dark both ways, and the agent cannot come back yet:
                // new connections to the agent port are dropped too (the data channel is not new).
                try await namespace.dropConnection(
                    port: controlPort, also: ["tcp dport \(relay.agentPort) tcp flags & (syn | ack) == syn"])
                let dropped = ContinuousClock.now
                let before = download.bytes
                try await relay.proxy.waitForLine(containing: "agent disconnected", "agent=office")
                let relayNoticed = ContinuousClock.now - dropped
                let agentLost = try await agent.waitForLine(containing: "relay connection lost", "heartbeat timeout")
                let agentNoticed = ContinuousClock.now - dropped
                print(
                    "figure: control channel dark: relay declared the agent dead after \(relayNoticed), "
                        + "the agent declared the relay dead after \(agentNoticed) (heartbeat 0.5 s, timeout 2 s)")
                #expect(relayNoticed >= .seconds(1.5) && relayNoticed < .seconds(4), "relay: \(relayNoticed)")
                #expect(agentNoticed >= .seconds(1.5) && agentNoticed < .seconds(4), "agent: \(agentNoticed)")
                #expect(agentLost.contains("retryInSeconds="))
                // It retries while the path is dark, and gets nowhere.
                try await agent.waitForLine(
                    containing: "relay connection lost", "cannot connect", timeout: .seconds(10))
                #expect(agent.lines(containing: "registered with relay").count == 1)
                #expect(try await namespace.droppedPackets() > 0)

                try await namespace.heal()
                let healed = ContinuousClock.now
                let during = download.bytes - before
                let working = try await Self.untilEchoWorks(namespace: namespace, port: relay.servicePort("echo"))
                let back = ContinuousClock.now - healed
                try await agent.waitForLine(containing: "registered with relay", count: 2)
                print(
                    "figure: path back: the agent reconnected and served a new session \(back) after the rules were "
                        + "deleted (\(working) tries); the download moved \(during) bytes during the outage")
                #expect(back < .seconds(5))
                #expect(during > 0, "the download stalled while the control channel was dark")
                #expect(download.bytes < total, "the download ended before the outage did: it proves nothing")

                download.hurry()
                let result = try await download.finish(limit: .seconds(60))
                let expected = source.stats.sourceDigests.withLock { $0.first }
                print(
                    "figure: download through the outage: \(result.bytes) of \(total) bytes, digest \(result.digest == expected ? "matches" : "differs")"
                )
                #expect(result.bytes == total)
                #expect(result.digest == expected)
                let closed = try await relay.proxy.waitForLine(containing: "session closed")
                #expect(closed.contains("closed by both ends"), "\(closed)")
                try await relay.expectNothingLeftOpen(since: baseline)
            }
        }
    }

    // MARK: B. a client vanishes without a FIN

    /// `tcpUserTimeoutSeconds` in a run of B: the default, or off. Either way a client
    /// connection has no user timeout (that is `dataUserTimeoutSeconds`, off by default), so
    /// the keepalive's bound holds.
    enum UserTimeout: String, Sendable, CaseIterable, CustomTestStringConvertible {
        case defaultUserTimeout, userTimeoutOff
        var options: [String: Any] { self == .userTimeoutOff ? ["tcpUserTimeoutSeconds": 0] : [:] }
        var seconds: Double { self == .userTimeoutOff ? 0 : TCPTuning.defaultUserTimeout }
        var testDescription: String { self.rawValue }
    }

    /// A client of an idle session disappears (every packet of its connection dropped):
    /// the relay's keepalive finds it dead within idle + 3 probes, resets the session, and
    /// the agent closes the target connection too.
    @Test(arguments: UserTimeout.allCases)
    func clientThatVanishesIsReclaimedByKeepalive(_ userTimeout: UserTimeout) async throws {
        try await NetNamespace.with { namespace in
            let target = try await namespace.startTarget(.silent)
            defer { Task { await target.close() } }
            let keepalive = 2.0
            let bound = TCPTuning(keepalive: keepalive, userTimeout: userTimeout.seconds).deadIdlePeerBound!
            try await withFixture(
                agents: Self.agents, services: [.init(name: "idle", agent: "office")],
                proxyOptions: (["tcpKeepaliveSeconds": keepalive] as [String: Any]).merging(userTimeout.options) {
                    _, new in new
                }
            ) { relay in
                try await relay.startProxy()
                let agent = try await relay.startAgent(id: "office", services: ["idle": target.port])
                let baseline = relay.baseline()
                let connection = try await namespace.connect(port: relay.servicePort("idle"))
                guard let clientPort = connection.channel.localAddress?.port else { throw HarnessError("no port") }
                let (reclaimed, targetClosed) = try await connection.executeThenClose {
                    _, outbound -> (Duration, Duration) in
                    try await outbound.write(ByteBuffer(string: "hello"))
                    try await agent.waitForLine(containing: "session attached")
                    try await relay.proxy.waitForLine(containing: "session attached")
                    try await namespace.dropConnection(port: clientPort)
                    let vanished = ContinuousClock.now
                    // Waits well past the bound, so that a late reclaim is measured, not just failed.
                    try await relay.proxy.waitForLine(
                        containing: "session closed", timeout: .seconds(max(bound, userTimeout.seconds) + 10))
                    let reclaimed = ContinuousClock.now - vanished
                    try await target.waitForClosed(1, timeout: .seconds(5))
                    return (reclaimed, ContinuousClock.now - vanished)
                }
                print(
                    "figure: \(userTimeout): vanished client reclaimed by the relay after \(reclaimed), target "
                        + "connection closed after \(targetClosed) (tcpKeepaliveSeconds \(keepalive), "
                        + "tcpUserTimeoutSeconds \(userTimeout.seconds), bound \(bound) s)")
                #expect(reclaimed < .seconds(bound + 1), "keepalive bound \(bound) s, took \(reclaimed)")
                #expect(try await namespace.droppedPackets() > 0)
                let closed = try await relay.proxy.waitForLine(containing: "session closed")
                #expect(closed.contains("reason=\"client:"), "\(closed)")
                try await agent.waitForLine(containing: "session closed", "reason=\"relay side:")
                try await namespace.heal()
                try await relay.expectNothingLeftOpen(since: baseline)
            }
        }
    }

    // MARK: C. a data channel's path goes dark while the relay sends

    /// An upload in full flow when its data channel's path starts dropping everything: the
    /// relay's writes go unacknowledged and the session fails within `dataUserTimeoutSeconds`;
    /// the agent, which only receives on it, finds it dead by keepalive.
    @Test func dataChannelWithUnacknowledgedWritesFailsWithinTheUserTimeout() async throws {
        try await NetNamespace.with { namespace in
            let target = try await namespace.startTarget(.silent)
            defer { Task { await target.close() } }
            let userTimeout = 2.0
            let tcp: [String: Any] = ["dataUserTimeoutSeconds": userTimeout, "tcpKeepaliveSeconds": 2.0]
            try await withFixture(
                agents: Self.agents, services: [.init(name: "sink", agent: "office")], proxyOptions: tcp
            ) { relay in
                try await relay.startProxy()
                let agent = try await relay.startAgent(id: "office", services: ["sink": target.port], options: tcp)
                let baseline = relay.baseline()
                let connection = try await namespace.connect(port: relay.servicePort("sink"))
                let (failed, clientSaw) = try await connection.executeThenClose {
                    _, outbound -> (Duration, String) in
                    let written = ByteCount()
                    let writer = Task {
                        do {
                            while true {
                                try await outbound.write(TestData.slice(offset: 0, length: 64 * 1024))
                                written.value.add(64 * 1024, ordering: .relaxed)
                            }
                        } catch {
                            return "write error: \(error)"
                        }
                    }
                    let attached = try await agent.waitForLine(containing: "session attached")
                    guard let data = RelayFixture.field("data", in: attached),
                        let dataPort = data.split(separator: ":").last.flatMap({ Int($0) })
                    else { throw HarnessError("no data= in \(attached)") }
                    while written.value.load(ordering: .relaxed) < 4 << 20 {
                        try await Task.sleep(for: .milliseconds(5))
                    }
                    try await namespace.dropConnection(port: dataPort)
                    let dark = ContinuousClock.now
                    try await relay.proxy.waitForLine(
                        containing: "session closed", timeout: .seconds(userTimeout + 10))
                    let failed = ContinuousClock.now - dark
                    return (failed, await writer.value)
                }
                print(
                    "figure: data channel dark under writes: relay failed the session after \(failed) "
                        + "(dataUserTimeoutSeconds \(userTimeout)); client saw \(clientSaw)")
                #expect(failed >= .seconds(userTimeout - 0.2), "failed before the user timeout: \(failed)")
                #expect(failed < .seconds(userTimeout + 1.5), "failed late: \(failed)")
                let closed = try await relay.proxy.waitForLine(containing: "session closed")
                #expect(closed.contains("reason=\"agent side:"), "\(closed)")
                #expect(clientSaw.hasPrefix("write error"))
                // The agent's end: found dead by its own keepalive or user timeout.
                try await agent.waitForLine(containing: "session closed", timeout: .seconds(15))
                try await target.waitForClosed(1)
                #expect(try await namespace.droppedPackets() > 0)
                try await namespace.heal()
                try await relay.expectNothingLeftOpen(since: baseline)
            }
        }
    }

    // MARK: Helpers

    /// Repeats an echo exchange inside the namespace until it succeeds; returns the tries.
    private static func untilEchoWorks(namespace: NetNamespace, port: Int, limit: Duration = .seconds(10))
        async throws -> Int
    {
        let start = ContinuousClock.now
        var tries = 0
        while ContinuousClock.now - start < limit {
            tries += 1
            let message = TestData.random(100)
            if (try? await namespace.exchange(port: port, request: message)) == message { return tries }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw HarnessError("the tunnel did not work again within \(limit)")
    }
}

/// A byte counter shared with a task.
final class ByteCount: Sendable {
    let value = Atomic<Int>(0)
}

/// A download read at a crawl (a pause after every read) until told to hurry, in a task of
/// its own, hashing what it reads.
final class SlowDownload: Sendable {
    struct Result: Sendable {
        var bytes: Int
        var digest: String
    }

    private let received = Atomic<Int>(0)
    private let fast = Atomic<Bool>(false)
    private let outcome = Mutex<Swift.Result<Result, any Error>?>(nil)

    private init() {}

    var bytes: Int { self.received.load(ordering: .relaxed) }

    static func start(namespace: NetNamespace, port: Int) async throws -> SlowDownload {
        let download = SlowDownload()
        let connection = try await namespace.connect(port: port)
        Task {
            let outcome: Swift.Result<Result, any Error>
            do {
                outcome = .success(try await Self.read(connection, into: download))
            } catch {
                outcome = .failure(error)
            }
            download.outcome.withLock { $0 = outcome }
        }
        return download
    }

    private static func read(_ connection: TestClient.Connection, into download: SlowDownload) async throws -> Result {
        try await connection.executeThenClose { inbound, _ in
            var digest = Digest()
            var count = 0
            for try await chunk in inbound {
                digest.update(chunk)
                count += chunk.readableBytes
                download.received.store(count, ordering: .relaxed)
                if !download.fast.load(ordering: .relaxed) {
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            return Result(bytes: count, digest: digest.hex())
        }
    }

    /// Reads as fast as it can from now on.
    func hurry() {
        self.fast.store(true, ordering: .relaxed)
    }

    func waitForProgress(atLeast count: Int, timeout: Duration = .seconds(10)) async throws {
        let deadline = ContinuousClock.now + timeout
        while self.bytes < count {
            guard ContinuousClock.now < deadline else { throw HarnessError("only \(self.bytes) bytes downloaded") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Waits for the end of the download.
    func finish(limit: Duration) async throws -> Result {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if let outcome = self.outcome.withLock({ $0 }) { return try outcome.get() }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw HarnessError("the download was still going after \(limit): \(self.bytes) bytes")
    }
}
