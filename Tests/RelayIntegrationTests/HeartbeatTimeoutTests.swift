import NIOCore
import NIOPosix
import RelayProtocol
import Synchronization
import Testing

/// A silent peer is declared dead after the configured heartbeat timeout, at either end.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct HeartbeatTimeoutTests {
    @Test func relayDropsAnAgentThatStopsAnswering() async throws {
        try await withFixture(
            agents: [.init(id: "mute", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "web", agent: "mute")],
            proxyOptions: ["heartbeatIntervalSeconds": 0.2, "heartbeatTimeoutSeconds": 0.8]
        ) { relay in
            try await relay.startProxy()
            let fake = try await FakeAgent.connect(port: relay.agentPort)
            let (pings, report, elapsed) = try await fake.session {
                lines -> (Int, ControlMessage.ErrorReport?, Duration) in
                // The relay counts from the last line it heard (register), so start before it.
                let start = ContinuousClock.now
                _ = try await lines.handshake(id: "mute", secret: "s3cret-s3cret-s3cret", services: ["web"])
                var pings = 0
                // Read what the relay sends, never answering, until it gives up.
                while let message = try await lines.receive() {
                    switch message {
                    case .ping: pings += 1
                    case .error(let report):
                        return (pings, report, ContinuousClock.now - start)
                    default: break
                    }
                }
                return (pings, nil, ContinuousClock.now - start)
            }
            print("figure: relay dropped a silent agent after \(elapsed) and \(pings) unanswered pings")
            #expect(report?.code == .timeout)
            #expect(pings >= 2)
            // Never before the timeout; the upper bound only proves it happens (loaded CI machines are slow).
            #expect(elapsed >= .milliseconds(800) && elapsed < .seconds(10), "dropped after \(elapsed)")
            try await relay.proxy.waitForLine(containing: "agent disconnected", "agent=mute", "heartbeat timeout")
        }
    }

    @Test func agentReconnectsWhenTheRelayGoesSilent() async throws {
        let relay = try await SilentRelay.start()
        defer { Task { await relay.close() } }
        try await withFixture(agents: [], services: []) { fixture in
            let config: [String: Any] = [
                "relay": "127.0.0.1:\(relay.port)", "id": "office", "secret": SilentRelay.secret,
                "control": fixture.directory + "/agent.sock", "services": [["name": "web", "target": "127.0.0.1:9"]],
                "heartbeatIntervalSeconds": 0.2, "heartbeatTimeoutSeconds": 0.8,
                "reconnectInitialDelaySeconds": 0.1, "reconnectMaxDelaySeconds": 0.5,
            ]
            let path = try fixture.write(config, to: "agent.json")
            let agent = try DaemonProcess("relay-agent", arguments: ["--config", path], name: "agent")
            do {
                try await agent.waitForLine(containing: "registered with relay")
                try await agent.waitForLine(containing: "relay connection lost", "heartbeat timeout: relay silent")
                try await agent.waitForLine(containing: "registered with relay", count: 2)
                #expect(relay.accepted.value.load(ordering: .relaxed) >= 2)
                await agent.stop()
            } catch {
                await agent.stop()
                throw error
            }
        }
    }
}

/// A fake relay that completes the handshake for any agent, then never says another word.
final class SilentRelay: Sendable {
    /// Connections accepted so far.
    final class Counter: Sendable {
        let value = Atomic<Int>(0)
    }

    /// The secret of the one agent it knows.
    static let secret = "silent-relay-secret-0123456789"

    let listener: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
    let accepted: Counter
    private let task: Task<Void, Never>
    var port: Int { self.listener.channel.localAddress!.port! }

    private init(
        listener: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>, accepted: Counter,
        task: Task<Void, Never>
    ) {
        self.listener = listener
        self.accepted = accepted
        self.task = task
    }

    static func start() async throws -> SilentRelay {
        let (listener, _) = try await FakeRelay.listen()
        let accepted = Counter()
        let task = Task<Void, Never> {
            _ = try? await listener.executeThenClose { inbound in
                await withDiscardingTaskGroup { group in
                    do {
                        for try await connection in inbound {
                            accepted.value.add(1, ordering: .relaxed)
                            group.addTask { await Self.serve(connection) }
                        }
                    } catch {}
                }
            }
        }
        return SilentRelay(listener: listener, accepted: accepted, task: task)
    }

    private static func serve(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>) async {
        try? await connection.executeThenClose { inbound, outbound in
            let lines = FakeAgent.Lines(iterator: inbound.makeAsyncIterator(), outbound: outbound)
            guard try await lines.serveAgent(secret: SilentRelay.secret, heartbeatSeconds: 1) != nil else { return }
            while try await lines.receive() != nil {}
        }
    }

    func close() async {
        try? await self.listener.channel.close()
        await self.task.value
    }
}
