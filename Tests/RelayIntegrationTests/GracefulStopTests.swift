import Foundation
import NIOCore
import RelayCore
import Testing

/// SIGTERM with live sessions, at either daemon: it stops taking new sessions at once, lets
/// the live ones finish intact within `drainTimeoutSeconds` and exits 0 as soon as they are
/// done; a session still live when the drain ends is reset, and the exit is still 0, right
/// after the drain.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct GracefulStopTests {
    /// Each live transfer's size, and how much of it has moved before the signal.
    static let size = 32 << 20
    static let heldAfter = 1 << 20
    /// The drain of the tests whose sessions all finish: long enough never to be reached.
    static let longDrain = 30
    /// The drain of the tests with a session that never finishes.
    static let shortDrain = 2
    /// How soon after its last session (or after the drain) a daemon must have exited.
    static let exitBound = Duration.seconds(3)

    @Test func proxyDrainsLiveSessionsThenExitsZero() async throws {
        let target = try await MixedTarget.start()
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "mixed", agent: "office")],
            proxyOptions: ["drainTimeoutSeconds": Self.longDrain]
        ) { relay in
            let proxy = try await relay.startProxy()
            try await relay.startAgent(id: "office", services: ["mixed": target.port])
            let port = relay.servicePort("mixed")
            let transfers = try await Self.startTransfers(port: port)

            let signalled = ContinuousClock.now
            proxy.signal(SIGTERM)
            try await proxy.waitForLine(containing: "shutting down: no longer accepting", "sessions=\(transfers.count)")
            let stopped = ContinuousClock.now - signalled
            // Nothing accepts any more: neither a service nor the agent port.
            let taken = try await Self.expectStopsAccepting(port: port, "the service listener", closedByRelay: true)
            try await Self.expectStopsAccepting(port: relay.agentPort, "the agent port", closedByRelay: false)
            #expect(proxy.isRunning, "the relay waits for its live sessions")

            let outcomes = await Self.finish(transfers)
            let lastEnd = outcomes.map(\.endedAt).max()!
            let exited = try await Self.exitInstant(of: proxy, timeout: .seconds(10))
            let status = try await proxy.waitForExit()
            print(
                "figure: relay-proxy SIGTERM: stopped accepting \(Self.ms(stopped)) after the signal (\(taken) client(s) still taken in that moment, closed at once); \(transfers.count) live transfers of \(Self.size >> 20) MiB completed intact; exit \(status) \(Self.ms(exited - lastEnd)) after the last one ended (\(Self.ms(exited - signalled)) after the signal)"
            )
            #expect(proxy.process.terminationReason == .exit && status == 0)
            #expect(exited - lastEnd < Self.exitBound, "the relay lingered after its last session")
            #expect(proxy.lines(containing: "all sessions drained").count == 1)
            #expect(proxy.lines(containing: "closing a session still live at shutdown").isEmpty)
            #expect(
                proxy.lines(containing: "session closed", "reason=\"closed by both ends\"").count == transfers.count,
                "log:\n\(proxy.lines(containing: "session closed").joined(separator: "\n"))")
        }
    }

    @Test func proxyResetsASessionStillLiveWhenTheDrainEnds() async throws {
        let target = try await MixedTarget.start()
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "mixed", agent: "office")],
            proxyOptions: ["drainTimeoutSeconds": Self.shortDrain]
        ) { relay in
            let proxy = try await relay.startProxy()
            try await relay.startAgent(id: "office", services: ["mixed": target.port])
            let port = relay.servicePort("mixed")
            // Small enough to end well within the short drain on a loaded machine.
            let finishing = try await HeldTransfer.start(
                .download, size: 4 << 20, heldAfter: Self.heldAfter, servicePort: port)
            let stuck = try await HeldTransfer.start(.echo, size: 1 << 20, heldAfter: 64 << 10, servicePort: port)

            let signalled = ContinuousClock.now
            proxy.signal(SIGTERM)
            try await proxy.waitForLine(containing: "shutting down: no longer accepting", "sessions=2")
            try await Self.expectStopsAccepting(port: port, "the service listener", closedByRelay: true)
            let finished = await finishing.finish()
            #expect(finished.failure == nil, "the transfer that ends within the drain: \(finished.failure ?? "")")
            #expect(proxy.isRunning, "one session is still live")

            let exited = try await Self.exitInstant(of: proxy, timeout: .seconds(Self.shortDrain) + .seconds(10))
            let status = try await proxy.waitForExit()
            let cut = await stuck.finish()
            print(
                "figure: relay-proxy SIGTERM, drainTimeoutSeconds=\(Self.shortDrain): the live session was reset and the relay exited \(status) \(Self.ms(exited - signalled)) after the signal; the client saw: \(cut.error ?? "no error") after \(cut.received) of \(1 << 20) bytes"
            )
            #expect(proxy.process.terminationReason == .exit && status == 0)
            #expect(exited - signalled >= .seconds(Self.shortDrain), "the relay did not wait for the drain")
            #expect(exited - signalled < .seconds(Self.shortDrain) + Self.exitBound, "the relay overran its drain")
            #expect(cut.error != nil, "the session cut at the end of the drain must end in a reset, not a clean end")
            #expect(cut.received < 1 << 20)
            #expect(proxy.lines(containing: "closing a session still live at shutdown").count == 1)
            #expect(proxy.lines(containing: "all sessions drained").isEmpty)
        }
    }

    @Test func agentDrainsLiveSessionsThenExitsZero() async throws {
        let target = try await MixedTarget.start()
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "mixed", agent: "office")]
        ) { relay in
            let proxy = try await relay.startProxy()
            let agent = try await relay.startAgent(
                id: "office", services: ["mixed": target.port], options: ["drainTimeoutSeconds": Self.longDrain])
            let port = relay.servicePort("mixed")
            let transfers = try await Self.startTransfers(port: port)

            let signalled = ContinuousClock.now
            agent.signal(SIGTERM)
            try await agent.waitForLine(containing: "shutting down", "sessions=\(transfers.count)")
            try await proxy.waitForLine(containing: "agent disconnected", "agent=office")
            let stopped = ContinuousClock.now - signalled
            // New sessions are refused: the relay has no agent for the service any more and
            // closes a new client at once; the target never hears of it.
            let accepted = target.acceptedCount
            let closedIn = try await TestClient.timeUntilClosed(port: port, limit: .seconds(2))
            try await proxy.waitForLine(containing: "client refused: no agent connected")
            #expect(target.acceptedCount == accepted)
            #expect(agent.isRunning, "the agent waits for its live sessions")

            let outcomes = await Self.finish(transfers)
            let lastEnd = outcomes.map(\.endedAt).max()!
            let exited = try await Self.exitInstant(of: agent, timeout: .seconds(10))
            let status = try await agent.waitForExit()
            print(
                "figure: relay-agent SIGTERM: off the relay \(Self.ms(stopped)) after the signal, a new client closed in \(Self.ms(closedIn)); \(transfers.count) live transfers of \(Self.size >> 20) MiB completed intact; exit \(status) \(Self.ms(exited - lastEnd)) after the last one ended (\(Self.ms(exited - signalled)) after the signal)"
            )
            #expect(agent.process.terminationReason == .exit && status == 0)
            #expect(exited - lastEnd < Self.exitBound, "the agent lingered after its last session")
            #expect(agent.lines(containing: "all sessions drained").count == 1)
            #expect(agent.lines(containing: "registered with relay").count == 1, "a stopping agent must not reconnect")
            #expect(
                agent.lines(containing: "session closed", "reason=\"closed by both ends\"").count == transfers.count,
                "log:\n\(agent.lines(containing: "session closed").joined(separator: "\n"))")
            #expect(
                proxy.lines(containing: "session closed", "reason=\"closed by both ends\"").count == transfers.count)
        }
    }

    @Test func agentResetsASessionStillLiveWhenTheDrainEnds() async throws {
        let target = try await MixedTarget.start()
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "mixed", agent: "office")]
        ) { relay in
            let proxy = try await relay.startProxy()
            let agent = try await relay.startAgent(
                id: "office", services: ["mixed": target.port], options: ["drainTimeoutSeconds": Self.shortDrain])
            let port = relay.servicePort("mixed")
            let baseline = proxy.openDescriptors
            let finishing = try await HeldTransfer.start(
                .upload, size: Self.size, heldAfter: Self.heldAfter, servicePort: port)
            let stuck = try await HeldTransfer.start(.echo, size: 1 << 20, heldAfter: 64 << 10, servicePort: port)

            let signalled = ContinuousClock.now
            agent.signal(SIGTERM)
            try await agent.waitForLine(containing: "shutting down", "sessions=2")
            let finished = await finishing.finish()
            #expect(finished.failure == nil, "the transfer that ends within the drain: \(finished.failure ?? "")")
            #expect(agent.isRunning, "one session is still live")

            let exited = try await Self.exitInstant(of: agent, timeout: .seconds(Self.shortDrain) + .seconds(10))
            let status = try await agent.waitForExit()
            let cut = await stuck.finish()
            print(
                "figure: relay-agent SIGTERM, drainTimeoutSeconds=\(Self.shortDrain): the live session was reset and the agent exited \(status) \(Self.ms(exited - signalled)) after the signal; the client saw: \(cut.error ?? "no error") after \(cut.received) of \(1 << 20) bytes"
            )
            #expect(agent.process.terminationReason == .exit && status == 0)
            #expect(exited - signalled >= .seconds(Self.shortDrain), "the agent did not wait for the drain")
            #expect(exited - signalled < .seconds(Self.shortDrain) + Self.exitBound, "the agent overran its drain")
            #expect(cut.error != nil, "the session cut at the end of the drain must end in a reset, not a clean end")
            #expect(agent.lines(containing: "closing a session still live at shutdown").count == 1)
            // The reset went on through the relay, which ended the session and kept nothing of it.
            try await proxy.waitForLine(containing: "session closed", "reason=\"agent side:")
            try await proxy.waitForDescriptors(atMost: baseline)
        }
    }

    /// A download, an upload and an echo, each with its first MiB moved, then held.
    static func startTransfers(port: Int) async throws -> [HeldTransfer] {
        var transfers: [HeldTransfer] = []
        for kind in [HeldTransfer.Kind.download, .upload, .echo] {
            transfers.append(
                try await HeldTransfer.start(kind, size: Self.size, heldAfter: Self.heldAfter, servicePort: port))
        }
        return transfers
    }

    /// Releases every transfer at once and expects each to complete intact.
    static func finish(_ transfers: [HeldTransfer]) async -> [HeldTransfer.Outcome] {
        for transfer in transfers { transfer.release() }
        var outcomes: [HeldTransfer.Outcome] = []
        for transfer in transfers {
            let outcome = await transfer.finish()
            #expect(outcome.failure == nil, "\(transfer.kind) of \(transfer.size) bytes: \(outcome.failure ?? "")")
            outcomes.append(outcome)
        }
        return outcomes
    }

    /// Connects to `port` until a connection is refused (its listener is closed), which must
    /// happen within a second. The listener closes just after the daemon logs that it stops
    /// accepting, so a connection may still be taken in that moment; the relay must then close
    /// a service's client at once (`closedByRelay`), without a byte. Returns how many were taken.
    @discardableResult
    static func expectStopsAccepting(port: Int, _ what: String, closedByRelay: Bool) async throws -> Int {
        let deadline = ContinuousClock.now + .seconds(1)
        var accepted = 0
        while ContinuousClock.now < deadline {
            guard let connection = try? await TestClient.connect(port: port) else { return accepted }
            accepted += 1
            guard closedByRelay else {
                try? await connection.executeThenClose { _, _ in }
                continue
            }
            let received = try await connection.executeThenClose { inbound, _ in
                try await withThrowingTaskGroup(of: Int?.self) { group in
                    group.addTask {
                        var count = 0
                        do {
                            for try await chunk in inbound { count += chunk.readableBytes }
                        } catch {}
                        return count
                    }
                    group.addTask {
                        try await Task.sleep(for: .seconds(1))
                        connection.channel.close(promise: nil)
                        return nil
                    }
                    let first = try await group.next()!
                    group.cancelAll()
                    return first
                }
            }
            if received != 0 {
                Issue.record(
                    "\(what): a client taken after the signal was \(received == nil ? "left open" : "sent \(received!) bytes")"
                )
            }
        }
        Issue.record("\(what) (port \(port)) still accepts connections a second after the daemon stopped accepting")
        return accepted
    }

    /// Waits for the process to end and returns when it did (its exit wakes the wait).
    static func exitInstant(of daemon: DaemonProcess, timeout: Duration) async throws -> ContinuousClock.Instant {
        guard
            let exited = await daemon.changes.wait(
                timeout: timeout, until: { daemon.isRunning ? nil : ContinuousClock.now })
        else { throw HarnessError("\(daemon.name) did not exit within \(timeout)") }
        return exited
    }

    static func ms(_ duration: Duration) -> String { String(format: "%.0f ms", duration.inSeconds * 1000) }
}
