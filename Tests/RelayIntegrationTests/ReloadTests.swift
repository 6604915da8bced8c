import Foundation
import NIOCore
import Testing

/// A reload applies everything the config holds, on both daemons: services added and
/// removed, a rotated secret (proved in use), a new relay address, heartbeat settings; and
/// the live sessions of a removed service follow `removedServiceSessions`.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ReloadTests {
    /// `relayctl reload` on `socket`; returns what it printed, which lists every change.
    private func reload(_ socket: String) async throws -> String {
        let output = try await Relayctl.ok(["--socket", socket, "reload"])
        print("relayctl reload (\(socket.split(separator: "/").last ?? "")):\n\(output)")
        return output
    }

    /// Sends a message through `port` and expects it back.
    private func echoes(_ port: Int) async -> Bool {
        let message = TestData.random(2000)
        return (try? await TestClient.exchange(port: port, request: message)) == message
    }

    /// The defect this guards against: an agent reload logged a reconnect but kept
    /// registering the services it started with.
    @Test func agentReloadAddsAServiceThatThenCarriesSessions() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "old", agent: "office"), .init(name: "new", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["old": echo.port])
            #expect(await self.echoes(relay.servicePort("old")))
            #expect(!(await self.echoes(relay.servicePort("new"))), "the agent does not offer 'new' yet")

            try relay.writeAgentConfig(id: "office", services: ["old": echo.port, "new": echo.port])
            let output = try await self.reload(relay.agentSocket("office"))
            #expect(output.contains("service 'new' added"))
            try await agent.waitForLine(containing: "registered with relay", "services=new,old")
            #expect(await self.echoes(relay.servicePort("new")))
            #expect(await self.echoes(relay.servicePort("old")))
        }
    }

    /// A rotated secret on both daemons: the relay accepts the old one during its window,
    /// the agent's reload makes it authenticate with the new one, and a relay restarted
    /// with only the new secret takes the agent back.
    @Test func rotatedSecretIsInUseAfterBothReloads() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "old-secret-0123456789")],
            services: [.init(name: "web", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["web": echo.port])
            let port = relay.servicePort("web")

            relay.agents = [.init(id: "office", secret: "new-secret-0123456789")]
            try relay.writeProxyConfig()
            let proxyOutput = try await self.reload(relay.proxySocket)
            #expect(proxyOutput.contains("agent 'office' secret rotated (the old one is accepted for 300s)"))
            // Within the window, the agent's channel (old secret) goes on serving.
            #expect(await self.echoes(port))

            try relay.writeAgentConfig(id: "office", secret: "new-secret-0123456789", services: ["web": echo.port])
            let agentOutput = try await self.reload(relay.agentSocket("office"))
            #expect(agentOutput.contains("secret rotated"))
            try await agent.waitForLine(containing: "registered with relay", count: 2)
            #expect(await self.echoes(port))

            // Proof: a relay that knows only the new secret, with no window at all.
            relay.proxyOptions["secretRotationGraceSeconds"] = 0
            relay.proxy.signal(SIGKILL)
            try await relay.proxy.waitForExit()
            try await relay.startProxy()
            try await agent.waitForLine(containing: "registered with relay", count: 3, timeout: .seconds(10))
            #expect(agent.lines(containing: "relay refused authentication").isEmpty)
            #expect(await self.echoes(port))
        }
    }

    /// Without the agent's reload, its channel on the old secret is closed when the
    /// window ends, and it cannot authenticate again.
    @Test func oldSecretIsRefusedOnceTheWindowEnds() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "old-secret-0123456789")],
            services: [.init(name: "web", agent: "office")],
            proxyOptions: ["secretRotationGraceSeconds": 1]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["web": echo.port])
            relay.agents = [.init(id: "office", secret: "new-secret-0123456789")]
            try relay.writeProxyConfig()
            let reloaded = ContinuousClock.now
            _ = try await self.reload(relay.proxySocket)
            try await relay.proxy.waitForLine(
                containing: "closing a control channel authenticated with a rotated secret", timeout: .seconds(5))
            let closed = ContinuousClock.now - reloaded
            print("figure: control channel on the old secret closed \(closed) after a reload with a 1 s window")
            #expect(closed >= .milliseconds(900) && closed < .seconds(3))
            try await agent.waitForLine(containing: "relay refused authentication")
            try await relay.proxy.waitForLine(containing: "agent authentication failed", "agent=office")
            #expect(!(await self.echoes(relay.servicePort("web"))))
        }
    }

    /// A reload that moves the agent to another relay (while it is waiting to retry, too).
    @Test func agentReloadFollowsANewRelayAddress() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "web", agent: "office")]
        ) { first in
            try await withFixture(
                agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
                services: [.init(name: "web", agent: "office")]
            ) { second in
                try await first.startProxy()
                try await second.startProxy()
                let agent = try await first.startAgent(
                    id: "office", services: ["web": echo.port], options: ["reconnectMaxDelaySeconds": 30])
                #expect(await self.echoes(first.servicePort("web")))

                var options: [String: Any] = ["relay": RelayFixture.address("localhost", second.agentPort)]
                options["reconnectInitialDelaySeconds"] = 30
                options["reconnectMaxDelaySeconds"] = 30
                try first.writeAgentConfig(id: "office", services: ["web": echo.port], options: options)
                let output = try await self.reload(first.agentSocket("office"))
                #expect(output.contains("relay is now localhost:\(second.agentPort)"))
                try await second.proxy.waitForLine(containing: "agent connected", "agent=office")
                #expect(await self.echoes(second.servicePort("web")))

                // The second relay goes away; the agent waits 30 s before retrying. A reload
                // that points it back at the first relay ends that wait at once.
                second.proxy.signal(SIGKILL)
                try await agent.waitForLine(containing: "relay connection lost", "retryInSeconds=")
                try first.writeAgentConfig(id: "office", services: ["web": echo.port])
                let reloaded = ContinuousClock.now
                _ = try await self.reload(first.agentSocket("office"))
                try await first.proxy.waitForLine(containing: "agent connected", "agent=office", count: 2)
                let elapsed = ContinuousClock.now - reloaded
                print("figure: agent back on the first relay \(elapsed) after the reload (backoff wait was 30 s)")
                #expect(elapsed < .seconds(5))
                #expect(await self.echoes(first.servicePort("web")))
            }
        }
    }

    /// Heartbeat settings reloaded on the agent apply: a frozen relay is noticed within
    /// the new timeout, not the old one.
    @Test func agentReloadAppliesNewHeartbeats() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "web", agent: "office")]
        ) { relay in
            let proxy = try await relay.startProxy()
            let agent = try await relay.startAgent(
                id: "office", services: ["web": echo.port],
                options: ["heartbeatIntervalSeconds": 20, "heartbeatTimeoutSeconds": 60])
            try relay.writeAgentConfig(
                id: "office", services: ["web": echo.port],
                options: ["heartbeatIntervalSeconds": 0.2, "heartbeatTimeoutSeconds": 1])
            let output = try await self.reload(relay.agentSocket("office"))
            #expect(output.contains("heartbeats every 0.2s, timeout 1s"))
            try await agent.waitForLine(containing: "registered with relay", count: 2)

            proxy.signal(SIGSTOP)
            defer { proxy.signal(SIGCONT) }
            let frozen = ContinuousClock.now
            try await agent.waitForLine(containing: "relay connection lost", "heartbeat timeout", timeout: .seconds(10))
            let noticed = ContinuousClock.now - frozen
            print("figure: frozen relay noticed after \(noticed) with the reloaded 1 s heartbeat timeout (was 60 s)")
            #expect(noticed < .seconds(3))
        }
    }

    /// Heartbeat settings reloaded on the relay apply to agents already connected.
    @Test func proxyReloadRetunesHeartbeatsOfConnectedAgents() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "web", agent: "office")],
            proxyOptions: ["heartbeatIntervalSeconds": 20, "heartbeatTimeoutSeconds": 60]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(
                id: "office", services: ["web": echo.port],
                options: ["heartbeatIntervalSeconds": 20, "heartbeatTimeoutSeconds": 60])
            relay.proxyOptions = ["heartbeatIntervalSeconds": 0.2, "heartbeatTimeoutSeconds": 1]
            try relay.writeProxyConfig()
            let output = try await self.reload(relay.proxySocket)
            #expect(output.contains("heartbeats every 0.2s, timeout 1s (connected agents too)"))

            agent.signal(SIGSTOP)
            defer { agent.signal(SIGCONT) }
            let frozen = ContinuousClock.now
            try await relay.proxy.waitForLine(
                containing: "agent disconnected", "heartbeat timeout", timeout: .seconds(10))
            let noticed = ContinuousClock.now - frozen
            print("figure: frozen agent dropped after \(noticed) with the reloaded 1 s heartbeat timeout (was 60 s)")
            #expect(noticed < .seconds(3))
        }
    }

    /// A removed service's live sessions drain by default and are closed with
    /// `removedServiceSessions: "close"`, at the relay and at the agent alike.
    @Test(arguments: ["proxy", "agent"], ["drain", "close"])
    func removedServiceSessionsFollowTheRule(daemon: String, rule: String) async throws {
        let trickle = try await TargetServer.start(.trickle(bytesPerTick: 1000, interval: .milliseconds(20)))
        let echo = try await TargetServer.start(.echo)
        defer {
            Task {
                await trickle.close()
                await echo.close()
            }
        }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "gone", agent: "office"), .init(name: "kept", agent: "office")],
            proxyOptions: ["removedServiceSessions": rule]
        ) { relay in
            try await relay.startProxy()
            let agentOptions: [String: Any] = ["removedServiceSessions": rule]
            let agent = try await relay.startAgent(
                id: "office", services: ["gone": trickle.port, "kept": echo.port], options: agentOptions)
            let gonePort = relay.servicePort("gone")
            let connection = try await TestClient.connect(port: gonePort)
            try await connection.executeThenClose { inbound, _ in
                var iterator = inbound.makeAsyncIterator()
                var received = 0
                while received < 10_000 { received += try await iterator.next()?.readableBytes ?? 0 }

                if daemon == "proxy" {
                    relay.services = [.init(name: "kept", agent: "office")]
                    try relay.writeProxyConfig()
                    let output = try await self.reload(relay.proxySocket)
                    let verb = rule == "drain" ? "drains" : "closed"
                    #expect(output.contains("service 'gone' removed (1 live session \(verb))"))
                } else {
                    try relay.writeAgentConfig(id: "office", services: ["kept": echo.port], options: agentOptions)
                    let output = try await self.reload(relay.agentSocket("office"))
                    let verb = rule == "drain" ? "drains" : "closed"
                    #expect(output.contains("service 'gone' removed (1 live session \(verb))"))
                    // The agent registers its new list of services on a fresh control channel.
                    try await agent.waitForLine(containing: "registered with relay", "services=kept")
                }
                // Bytes go on flowing under "drain"; the session ends at once under "close".
                // Watched until 10,000 more bytes came (drain) or the end (close), at most 5 s:
                // the trickle sends 50,000 a second, but a loaded machine delays it.
                let before = received
                let watchUntil = ContinuousClock.now + .seconds(5)
                var ended = false
                do {
                    while ContinuousClock.now < watchUntil, rule == "close" || received - before <= 10_000 {
                        guard let chunk = try await iterator.next() else {
                            ended = true
                            break
                        }
                        received += chunk.readableBytes
                    }
                } catch {
                    ended = true
                }
                print("figure: \(daemon) \(rule): \(received - before) bytes after the reload, ended=\(ended)")
                if rule == "drain" {
                    #expect(!ended && received - before > 10_000)
                } else {
                    #expect(ended)
                    let closer = daemon == "proxy" ? relay.proxy! : agent
                    try await closer.waitForLine(containing: "session closed", "service removed by a reload")
                }
            }
            #expect(await self.echoes(relay.servicePort("kept")))
        }
    }
}
