import Foundation
import NIOCore
import Synchronization
import Testing

/// High availability with real processes (docs/high-availability.md): a service served by
/// two agents (`agents` at the relay) and an agent connected to two relays (`relays`).
@Suite(.serialized) struct HighAvailabilityTests {
    static let secretA = "secret-of-agent-a-0123"
    static let secretB = "secret-of-agent-b-0123"

    /// Two targets that greet with the name of the agent in front of them, so a client
    /// knows which agent served it.
    struct Tagged {
        let a: TargetServer
        let b: TargetServer

        static func start() async throws -> Tagged {
            Tagged(
                a: try await TargetServer.start(.greetThenRead(greeting: "A")),
                b: try await TargetServer.start(.greetThenRead(greeting: "B")))
        }

        func close() async {
            await self.a.close()
            await self.b.close()
        }
    }

    /// Which agent served one client of `port` ("A", "B"), or "" when the relay closed it.
    static func served(_ port: Int) async -> String {
        let reply = try? await TestClient.exchange(port: port, request: Array("hello".utf8))
        return String(decoding: reply ?? [], as: UTF8.self)
    }

    /// A relay whose service `web` may go to agents `a` and `b` (its config names `agents`),
    /// with both agents started; `targetA` is agent a's target port.
    static func withTwoAgents(
        targetA: Int, targetB: Int, agents: [String] = ["a", "b"], proxyOptions: [String: Any] = [:],
        _ body: (RelayFixture, DaemonProcess, DaemonProcess) async throws -> Void
    ) async throws {
        try await withFixture(
            agents: [.init(id: "a", secret: Self.secretA), .init(id: "b", secret: Self.secretB)],
            services: [.init(name: "web", agent: "a")],
            proxyOptions: proxyOptions
        ) { relay in
            relay.serviceOptions["web"] = ["agents": agents]
            try await relay.startProxy()
            let a = try await relay.startAgent(id: "a", services: ["web": targetA])
            let b = try await relay.startAgent(id: "b", services: ["web": targetB])
            try await relay.proxy.waitForLine(containing: "agent connected", "agent=b")
            try await body(relay, a, b)
        }
    }

    /// Sequential sessions alternate between the two agents (least sessions, ties round
    /// robin), and relayctl shows which agent carries each session and a service's agents.
    @Test func sessionsSpreadOverTwoAgents() async throws {
        let targets = try await Tagged.start()
        defer { Task { await targets.close() } }
        try await Self.withTwoAgents(targetA: targets.a.port, targetB: targets.b.port) { relay, _, _ in
            var order: [String] = []
            for _ in 0..<10 { order.append(await Self.served(relay.servicePort("web"))) }
            print("figure: 10 sequential sessions went to \(order.joined())")
            #expect(order.filter { $0 == "A" }.count == 5)
            #expect(order.filter { $0 == "B" }.count == 5)
            #expect(zip(order, order.dropFirst()).allSatisfy { $0 != $1 }, "alternating: \(order)")

            // Two sessions held open: one on each agent, and relayctl says so.
            let first = try await TestClient.connect(port: relay.servicePort("web"))
            let second = try await TestClient.connect(port: relay.servicePort("web"))
            try await first.executeThenClose { firstInbound, _ in
                try await second.executeThenClose { secondInbound, _ in
                    var greetings: [String] = []
                    for inbound in [firstInbound, secondInbound] {
                        var iterator = inbound.makeAsyncIterator()
                        greetings.append(try await iterator.next().map { String(buffer: $0) } ?? "")
                    }
                    #expect(greetings.sorted() == ["A", "B"])
                    let sessions =
                        try await Relayctl.json(["--socket", relay.proxySocket, "sessions"]) as! [[String: Any]]
                    #expect(Set(sessions.compactMap { $0["agent"] as? String }) == ["a", "b"])
                    for key in ["id", "service", "client", "startedAt", "bytesIn", "bytesOut", "state"] {
                        #expect(sessions.allSatisfy { $0[key] != nil }, "key \(key)")
                    }
                    let human = try await Relayctl.ok(["--socket", relay.proxySocket, "sessions"])
                    #expect(human.contains("AGENT"))
                    let status = try await Relayctl.json(["--socket", relay.proxySocket, "status"]) as! [String: Any]
                    let services = status["services"] as! [[String: Any]]
                    #expect(services.first?["agents"] as? [String] == ["a", "b"])
                    #expect(services.first?["up"] as? Bool == true)
                    let statusText = try await Relayctl.ok(["--socket", relay.proxySocket, "status"])
                    #expect(statusText.contains("a,b"))
                }
            }
        }
    }

    /// Clients arrive continuously (four at a time) while one agent is killed: every
    /// client is served, through the other agent once the first is gone.
    @Test func killingOneAgentRefusesNoClient() async throws {
        let targets = try await Tagged.start()
        defer { Task { await targets.close() } }
        try await Self.withTwoAgents(targetA: targets.a.port, targetB: targets.b.port) { relay, a, _ in
            let port = relay.servicePort("web")
            let run = KillRun()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        while !run.stop.load(ordering: .relaxed) {
                            let startedAfter = run.killed.load(ordering: .relaxed)
                            let by = await Self.served(port)
                            run.record(by, afterKill: startedAfter)
                        }
                    }
                }
                // Sessions flow on both agents, then agent a dies mid-run.
                while run.counts.withLock({ $0.before.1 }) < 40 { try await Task.sleep(for: .milliseconds(20)) }
                #expect(run.counts.withLock { $0.before.1 == $0.before.0 })
                a.signal(SIGKILL)
                run.killed.store(true, ordering: .relaxed)
                try await relay.proxy.waitForLine(containing: "agent disconnected", "agent=a")
                while run.counts.withLock({ $0.after.0 }) < 200 { try await Task.sleep(for: .milliseconds(20)) }
                run.stop.store(true, ordering: .relaxed)
                try await group.waitForAll()
            }
            let (before, after, afterBy) = run.counts.withLock { ($0.before, $0.after, $0.afterBy) }
            let retried = relay.proxy.lines(containing: "trying another agent").count
            print(
                "figure: before the kill \(before.1)/\(before.0) sessions served; after it \(after.1)/\(after.0) served (by \(afterBy)); \(retried) sessions retried on another agent"
            )
            // (A session agent a carried when it died ends with it: only clients that came
            // after the kill must all be served.)
            #expect(after.1 == after.0)
            #expect(afterBy["A"] == nil || afterBy["A"]! <= 4, "at most the sessions in flight at the kill")
        }
    }

    /// The clients of ``killingOneAgentRefusesNoClient()``: (attempted, served) before and
    /// after the kill, and who served after it.
    final class KillRun: Sendable {
        let killed = Atomic<Bool>(false)
        let stop = Atomic<Bool>(false)
        let counts = Mutex<(before: (Int, Int), after: (Int, Int), afterBy: [String: Int])>(((0, 0), (0, 0), [:]))

        func record(_ by: String, afterKill: Bool) {
            let ok = by == "A" || by == "B"
            self.counts.withLock { counts in
                if afterKill {
                    counts.after.0 += 1
                    if ok { counts.after.1 += 1 }
                    counts.afterBy[by.isEmpty ? "refused" : by, default: 0] += 1
                } else {
                    counts.before.0 += 1
                    if ok { counts.before.1 += 1 }
                }
            }
        }
    }

    /// An agent whose target is down refuses (target_unreachable): the relay offers the
    /// session to the other agent and the client is served.
    @Test func aRefusingAgentIsSkipped() async throws {
        let targets = try await Tagged.start()
        defer { Task { await targets.close() } }
        let closed = try await TargetServer.start(.echo)
        let closedPort = closed.port
        await closed.close()
        try await Self.withTwoAgents(targetA: closedPort, targetB: targets.b.port) { relay, a, _ in
            var order: [String] = []
            for _ in 0..<10 { order.append(await Self.served(relay.servicePort("web"))) }
            let refusals = a.lines(containing: "session refused").count
            let retried = relay.proxy.lines(containing: "trying another agent").count
            print(
                "figure: 10 clients, agent a's target down: \(order.filter { $0 == "B" }.count) served by b, \(order.filter(\.isEmpty).count) refused; agent a refused \(refusals), relay retried \(retried)"
            )
            #expect(order == Array(repeating: "B", count: 10))
            #expect(refusals >= 4)
            #expect(retried == refusals)
        }
    }

    /// A reload that turns `agents: ["a"]` into `["a", "b"]` makes b serve new sessions.
    @Test func proxyReloadAddsAnAgentToAService() async throws {
        let targets = try await Tagged.start()
        defer { Task { await targets.close() } }
        try await Self.withTwoAgents(targetA: targets.a.port, targetB: targets.b.port, agents: ["a"]) { relay, _, _ in
            var order: [String] = []
            for _ in 0..<4 { order.append(await Self.served(relay.servicePort("web"))) }
            #expect(order == ["A", "A", "A", "A"])
            relay.serviceOptions["web"] = ["agents": ["a", "b"]]
            try relay.writeProxyConfig()
            let output = try await Relayctl.ok(["--socket", relay.proxySocket, "reload"])
            #expect(output.contains("service 'web' now served by agents 'a', 'b'"))
            order = []
            for _ in 0..<4 { order.append(await Self.served(relay.servicePort("web"))) }
            print("figure: after the reload to agents [a, b]: \(order.joined())")
            #expect(order.sorted() == ["A", "A", "B", "B"])
        }
    }

    /// The agent's config for two relays: `relays` with both agent ports.
    static func relays(_ fixtures: RelayFixture...) -> [String: Any] {
        ["relays": fixtures.map { RelayFixture.address("127.0.0.1", $0.agentPort) }]
    }

    /// The relays in the agent's `status`.
    static func relayStates(_ socket: String) async throws -> [(address: String, state: String, sessions: Int)] {
        let status = try await Relayctl.json(["--socket", socket, "status"]) as! [String: Any]
        let relays = status["relays"] as? [[String: Any]] ?? []
        return relays.map {
            ($0["address"] as? String ?? "", $0["state"] as? String ?? "", $0["sessions"] as? Int ?? -1)
        }
    }

    /// Waits until the agent's status shows `states`, one per relay.
    static func waitForRelayStates(_ socket: String, _ wanted: (([String]) -> Bool)) async throws -> [String] {
        let end = ContinuousClock.now + .seconds(10)
        var states: [String] = []
        while ContinuousClock.now < end {
            states = try await Self.relayStates(socket).map(\.state)
            if wanted(states) { return states }
            try await Task.sleep(for: .milliseconds(100))
        }
        let status = try await Relayctl.ok(["--socket", socket, "status"])
        throw HarnessError("relay states never matched: \(states); the agent's status:\n\(status)")
    }

    /// Two relays, one agent with `relays`: both serve; the first is killed and the second
    /// still serves; the agent's status tells which is down; the first comes back and the
    /// agent reconnects to it.
    @Test func anAgentWithTwoRelaysSurvivesTheLossOfOne() async throws {
        try await Self.withTwoRelays { first, second, echo in
            let agent = try await first.startAgent(
                id: "office", services: ["web": echo.port], options: Self.relays(first, second))
            try await first.proxy.waitForLine(containing: "agent connected", "agent=office")
            try await second.proxy.waitForLine(containing: "agent connected", "agent=office")
            let socket = first.agentSocket("office")
            do {
                _ = try await Self.waitForRelayStates(socket) { $0 == ["connected", "connected"] }
            } catch {
                print("diagnostic: the agent's log:\n" + agent.lines(containing: "").joined(separator: "\n"))
                print(
                    "diagnostic: the first relay's log:\n"
                        + first.proxy.lines(containing: "").joined(separator: "\n"))
                throw error
            }
            #expect(await Self.echoes(first.servicePort("web")))
            #expect(await Self.echoes(second.servicePort("web")))

            first.proxy.signal(SIGKILL)
            var served = 0
            for _ in 0..<10 where await Self.echoes(second.servicePort("web")) { served += 1 }
            let states = try await Self.waitForRelayStates(socket) { $0[0] != "connected" && $0[1] == "connected" }
            let text = try await Relayctl.ok(["--socket", socket, "status"])
            print("figure: first relay killed: \(served)/10 clients served through the second; relays \(states)")
            #expect(served == 10)
            #expect(text.contains("RELAY") && text.contains("1/2 connected"))

            try await first.startProxy()
            try await first.proxy.waitForLine(containing: "agent connected", "agent=office")
            _ = try await Self.waitForRelayStates(socket) { $0 == ["connected", "connected"] }
            #expect(await Self.echoes(first.servicePort("web")))
        }
    }

    /// An agent reload that adds a second relay connects to it; removing it again closes
    /// that channel while the first stays.
    @Test func agentReloadAddsAndRemovesARelay() async throws {
        try await Self.withTwoRelays { first, second, echo in
            try await first.startAgent(id: "office", services: ["web": echo.port])
            let socket = first.agentSocket("office")
            try first.writeAgentConfig(
                id: "office", services: ["web": echo.port], options: Self.relays(first, second))
            let added = try await Relayctl.ok(["--socket", socket, "reload"])
            #expect(added.contains("relay 127.0.0.1:\(second.agentPort) added"))
            try await second.proxy.waitForLine(containing: "agent connected", "agent=office")
            #expect(await Self.echoes(second.servicePort("web")))
            #expect(await Self.echoes(first.servicePort("web")))
            #expect(first.proxy.lines(containing: "agent disconnected").isEmpty, "the first channel stays")

            try first.writeAgentConfig(id: "office", services: ["web": echo.port], options: Self.relays(first))
            let removed = try await Relayctl.ok(["--socket", socket, "reload"])
            #expect(removed.contains("relay 127.0.0.1:\(second.agentPort) removed"))
            try await second.proxy.waitForLine(containing: "agent disconnected", "agent=office")
            #expect(await Self.echoes(first.servicePort("web")))
            print("figure: agent reload added a relay (connected, served) and removed it (disconnected)")
        }
    }

    /// Two relays for agent `office`'s service `web`, both started, and an echo target.
    static func withTwoRelays(_ body: (RelayFixture, RelayFixture, TargetServer) async throws -> Void) async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        let agents: [RelayFixture.Agent] = [.init(id: "office", secret: Self.secretA)]
        try await withFixture(agents: agents, services: [.init(name: "web", agent: "office")]) { first in
            try await withFixture(agents: agents, services: [.init(name: "web", agent: "office")]) { second in
                try await first.startProxy()
                try await second.startProxy()
                try await body(first, second, echo)
            }
        }
    }

    /// Whether a client of `port` gets its bytes echoed.
    static func echoes(_ port: Int) async -> Bool {
        let request = Array("ping-\(port)".utf8)
        return (try? await TestClient.exchange(port: port, request: request)) == request
    }
}
