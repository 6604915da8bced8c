import Foundation
import NIOCore
import RelayCore
import Testing

/// Both daemons reload, one after the other, while 200 sessions stream through them: a new
/// config adds a service, removes another and rotates the agent's secret. Every stream on a
/// kept service completes intact, the new service works, the removed one refuses, the agent
/// ends up on the new secret, and nothing is left open.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ReloadUnderLoadTests {
    static let streams = 200
    /// Each stream's size, what moves before the reloads begin, and its pace afterwards.
    static let size = 2 << 20
    static let heldAfter = 64 << 10
    static let rate = 192 << 10
    static let oldSecret = "old secret, about to be rotated"
    static let newSecret = "the new secret, in force after the reloads"
    /// How long the relay accepts the old secret after its reload (covering the agent's reload).
    static let grace = 60

    init() { DaemonSupport.raiseDescriptorLimit() }

    @Test func bothDaemonsReloadWhileTwoHundredSessionsStream() async throws {
        let target = try await MixedTarget.start()
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: Self.oldSecret)],
            services: [.init(name: "kept", agent: "office"), .init(name: "gone", agent: "office")],
            proxyOptions: ["secretRotationGraceSeconds": Self.grace]
        ) { relay in
            let proxy = try await relay.startProxy()
            let agent = try await relay.startAgent(
                id: "office", services: ["kept": target.port, "gone": target.port])
            let keptPort = relay.servicePort("kept")
            let gonePort = relay.servicePort("gone")
            let baseline = relay.baseline()

            // 200 streams on the kept service, each live (its first bytes moved), then held;
            // one more on the service about to be removed: by default its live sessions drain.
            let started = ContinuousClock.now
            let streams = try await withThrowingTaskGroup(of: HeldTransfer.self) { group in
                for index in 0..<Self.streams {
                    group.addTask {
                        try await HeldTransfer.start(
                            index.isMultiple(of: 2) ? .download : .echo, size: Self.size, heldAfter: Self.heldAfter,
                            servicePort: keptPort, rate: Self.rate)
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let onGone = try await HeldTransfer.start(
                .download, size: Self.size, heldAfter: Self.heldAfter, servicePort: gonePort, rate: Self.rate)
            let proxySessions = try await Self.liveSessions(socket: relay.directory + "/proxy.sock")
            let agentSessions = try await Self.liveSessions(socket: relay.directory + "/agent-office.sock")
            print(
                "figure: reload under load: \(Self.streams + 1) sessions live after \(Self.ms(ContinuousClock.now - started)) (relayctl status: relay \(proxySessions), agent \(agentSessions))"
            )
            #expect(proxySessions == Self.streams + 1 && agentSessions == Self.streams + 1)

            // Let them stream (trickling), and reload both daemons meanwhile.
            for stream in streams { stream.release() }
            onGone.release()
            let released = ContinuousClock.now
            let connectionsLost = agent.lines(containing: "relay connection lost").count

            var proxyConfig = try Self.read(relay.directory + "/proxy.json")
            proxyConfig["agents"] = [["id": "office", "secret": Self.newSecret]]
            // The kept service's entry stays as it was (a changed `listen` would be a move).
            proxyConfig["services"] =
                (proxyConfig["services"] as! [[String: Any]]).filter { $0["name"] as? String == "kept" } + [
                    ["name": "added", "agent": "office", "listen": RelayFixture.address(relay.host, 0)]
                ]
            _ = try relay.write(proxyConfig, to: "proxy.json")
            let proxyReload = try await Self.reload(socket: relay.directory + "/proxy.sock")
            let proxyReloaded = ContinuousClock.now
            let changes = proxyReload.changes.joined(separator: "; ")
            #expect(proxyReload.applied, "relay-proxy refused the reload: \(proxyReload.problems)")
            #expect(changes.contains("service 'gone' removed (1 live session drains)"), "\(changes)")
            #expect(changes.contains("service 'added' added"), "\(changes)")
            #expect(changes.contains("agent 'office' secret rotated (the old one is accepted for"), "\(changes)")
            let addedLine = try await proxy.waitForLine(containing: "listening", "service=added")
            let addedPort = RelayFixture.port(in: addedLine)

            // Between the two reloads the agent, still on its old secret, keeps its control
            // channel and serves new sessions: the rotation window.
            let between = await MixedLoad.session(kind: .echo, size: 100_000, port: keptPort)
            #expect(between.failure == nil, "a session between the reloads: \(between.failure ?? "")")
            #expect(
                agent.lines(containing: "relay connection lost").count == connectionsLost,
                "the relay dropped the agent at its reload: \(agent.lines(containing: "relay connection lost"))")

            var agentConfig = try Self.read(relay.directory + "/agent-office.json")
            agentConfig["secret"] = Self.newSecret
            agentConfig["services"] = [
                ["name": "kept", "target": RelayFixture.address("127.0.0.1", target.port)],
                ["name": "added", "target": RelayFixture.address("127.0.0.1", target.port)],
            ]
            _ = try relay.write(agentConfig, to: "agent-office.json")
            let agentReload = try await Self.reload(socket: relay.directory + "/agent-office.sock")
            #expect(agentReload.applied, "relay-agent refused the reload: \(agentReload.problems)")
            let agentChanges = agentReload.changes.joined(separator: "; ")
            #expect(
                agentChanges.contains("secret rotated") && agentChanges.contains("service 'gone' removed"),
                "\(agentChanges)")
            // Registered anew with the reloaded config: its new services, under its new secret.
            try await agent.waitForLine(containing: "registered with relay", "services=kept,added")
            let agentReloaded = ContinuousClock.now
            print(
                "figure: reload under load: relay-proxy reloaded \(Self.ms(proxyReloaded - released)) after the streams resumed (\(proxyReload.took.map(Self.ms) ?? "?")): \(changes)"
            )
            print(
                "figure: reload under load: relay-agent reloaded and registered again \(Self.ms(agentReloaded - released)) after the streams resumed: \(agentChanges)"
            )

            // The new service carries a session; the removed one's listener refuses.
            let onAdded = await MixedLoad.session(kind: .upload, size: 1 << 20, port: addedPort)
            #expect(onAdded.failure == nil, "a session on the added service: \(onAdded.failure ?? "")")
            await Self.expectRefused(port: gonePort)

            // Every stream completes intact, and was still streaming when both reloads were done.
            var intact = 0
            var endedEarly = 0
            var lastEnd = released
            for stream in streams + [onGone] {
                let outcome = await stream.finish()
                if outcome.failure == nil {
                    intact += 1
                } else {
                    Issue.record("\(stream.kind) on port \(stream.port): \(outcome.failure!)")
                }
                if outcome.endedAt < agentReloaded { endedEarly += 1 }
                lastEnd = max(lastEnd, outcome.endedAt)
            }
            print(
                "figure: reload under load: \(intact) of \(Self.streams + 1) streams (\(Self.size >> 20) MiB each, one on the removed service) completed intact, the last \(Self.ms(lastEnd - released)) after they resumed; \(endedEarly) ended before the reloads were done"
            )
            #expect(intact == Self.streams + 1)
            #expect(endedEarly == 0, "streams that ended before the reloads show nothing about them")

            // Nothing left open: descriptors back to the baseline (one listener gone, one added), no session live.
            try await relay.expectNothingLeftOpen(since: baseline, timeout: .seconds(15))
            #expect(try await Self.liveSessions(socket: relay.directory + "/proxy.sock") == 0)
            #expect(try await Self.liveSessions(socket: relay.directory + "/agent-office.sock") == 0)
            #expect(
                proxy.lines(containing: "session closed", "reason=\"closed by both ends\"").count == Self.streams + 3)

            // The new secret is the one in use: a relay that knows only it still takes the agent.
            let beforeRestart = agent.lines(containing: "registered with relay").count
            await proxy.stop()
            relay.agents = [.init(id: "office", secret: Self.newSecret)]
            relay.services = [.init(name: "kept", agent: "office"), .init(name: "added", agent: "office")]
            relay.proxyOptions = [:]
            let restarted = try await relay.startProxy()
            try await agent.waitForLine(containing: "registered with relay", count: beforeRestart + 1)
            #expect(restarted.lines(containing: "agent authentication failed").isEmpty)
            let check = await MixedLoad.session(kind: .echo, size: 100_000, port: relay.servicePort("kept"))
            #expect(check.failure == nil, "a session after the restart: \(check.failure ?? "")")
            print("figure: reload under load: a relay restarted with only the new secret registered the agent again")
        }
    }

    /// What `relayctl --json reload` answered, and how long it took.
    struct ReloadAnswer {
        var applied: Bool
        var changes: [String]
        var problems: [String]
        var took: Duration?
    }

    static func reload(socket: String) async throws -> ReloadAnswer {
        let start = ContinuousClock.now
        let result = try await Relayctl.run(["--socket", socket, "--json", "reload"])
        let took = ContinuousClock.now - start
        guard let answer = try? result.json() as? [String: Any] else {
            throw HarnessError("relayctl reload on \(socket) answered: \(result)")
        }
        return ReloadAnswer(
            applied: answer["applied"] as? Bool ?? false, changes: answer["changes"] as? [String] ?? [],
            problems: answer["problems"] as? [String] ?? [], took: took)
    }

    /// The `sessions` count of `relayctl --json status`.
    static func liveSessions(socket: String) async throws -> Int {
        let status = try await Relayctl.json(["--socket", socket, "status"]) as? [String: Any]
        guard let sessions = status?["sessions"] as? Int else {
            throw HarnessError("no sessions in \(String(describing: status))")
        }
        return sessions
    }

    static func read(_ path: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
    }

    static func expectRefused(port: Int) async {
        guard let connection = try? await TestClient.connect(port: port) else { return }
        try? await connection.executeThenClose { _, _ in }
        Issue.record("the removed service's port \(port) still accepts connections")
    }

    static func ms(_ duration: Duration) -> String { String(format: "%.0f ms", duration.inSeconds * 1000) }
}
