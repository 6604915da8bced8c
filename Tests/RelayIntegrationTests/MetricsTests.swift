import Foundation
import Testing

/// Metrics move with a live transfer, through `relayctl metrics` and a scrape of `/metrics`,
/// at both daemons; reloads and agent connections are counted.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct MetricsTests {
    @Test func sessionAndByteCountersMoveDuringATransfer() async throws {
        let target = try await TargetServer.start(RelayctlTests.trickle)
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "slow", agent: "office")],
            proxyOptions: ["metrics": "127.0.0.1:0"]
        ) { relay in
            try await relay.startProxy()
            let proxyPort = RelayFixture.port(in: try await relay.proxy.waitForLine(containing: "metrics listening"))
            let agent = try await relay.startAgent(
                id: "office", services: ["slow": target.port], options: ["metrics": "127.0.0.1:0"])
            let agentPort = RelayFixture.port(in: try await agent.waitForLine(containing: "metrics listening"))
            let proxySocket = relay.directory + "/proxy.sock"
            let agentSocket = relay.directory + "/agent-office.sock"

            let idle = try await Relayctl.ok(["--socket", proxySocket, "metrics"])
            #expect(metricValue(idle, "relay_agent_connects_total", ["role": "proxy", "agent": "office"]) == 1)
            #expect(metricValue(idle, "relay_agents_connected", ["role": "proxy"]) == 1)
            #expect(idle.contains("# TYPE relay_agent_connects_total counter"))

            let download = try await RelayctlTests.SlowDownload(port: relay.servicePort("slow"))
            let reader = Task { await download.run() }
            defer { reader.cancel() }
            try await relay.proxy.waitForLine(containing: "session attached")

            let labels = ["role": "proxy", "service": "slow"]
            let out = labels.merging(["direction": "out"]) { a, _ in a }
            let first = try await Relayctl.ok(["--socket", proxySocket, "metrics"])
            #expect(metricValue(first, "relay_sessions_opened_total", labels) == 1)
            #expect(metricValue(first, "relay_sessions_live", labels) == 1)
            let before = try #require(metricValue(first, "relay_session_bytes_total", out))
            let scrapeBefore = try await httpGet(port: proxyPort, path: "/metrics")
            #expect(scrapeBefore.status.contains("200"))
            let scrapedBefore = try #require(metricValue(scrapeBefore.body, "relay_session_bytes_total", out))

            // Moving while the session lives, in both exports.
            var after = before
            var scrapedAfter = scrapedBefore
            let deadline = ContinuousClock.now + .seconds(10)
            while (after <= before || scrapedAfter <= scrapedBefore) && ContinuousClock.now < deadline {
                after =
                    metricValue(
                        try await Relayctl.ok(["--socket", proxySocket, "metrics"]), "relay_session_bytes_total", out)
                    ?? 0
                scrapedAfter =
                    metricValue(
                        try await httpGet(port: proxyPort, path: "/metrics").body, "relay_session_bytes_total", out)
                    ?? 0
            }
            #expect(after > before)
            #expect(scrapedAfter > scrapedBefore)
            #expect(download.closedAt.withLock { $0 } == nil, "the session is still live")

            let agentScrape = try await httpGet(port: agentPort, path: "/metrics")
            let agentLabels = ["role": "agent", "service": "slow"]
            #expect(metricValue(agentScrape.body, "relay_sessions_opened_total", agentLabels) == 1)
            #expect(
                metricValue(
                    agentScrape.body, "relay_session_bytes_total",
                    agentLabels.merging(["direction": "out"]) { a, _ in a }) ?? 0 > 0)
            let agentText = try await Relayctl.ok(["--socket", agentSocket, "metrics"])
            #expect(metricValue(agentText, "relay_agent_connects_total", ["role": "agent", "agent": "office"]) == 1)
            #expect(try await httpGet(port: proxyPort, path: "/other").status.contains("404"))

            // Kill and reload show up too.
            let id = try #require(try await RelayctlTests.onlySession(proxySocket)["id"] as? String)
            _ = try await Relayctl.ok(["--socket", proxySocket, "kill", id])
            await reader.value
            _ = try await Relayctl.ok(["--socket", proxySocket, "reload"])
            let end = try await Relayctl.ok(["--socket", proxySocket, "metrics"])
            #expect(metricValue(end, "relay_sessions_killed_total", labels) == 1)
            #expect(metricValue(end, "relay_sessions_live", labels) == 0)
            #expect(metricValue(end, "relay_reloads_total", ["role": "proxy", "outcome": "applied"]) == 1)

            // A client with no agent for its service is refused and counted by reason.
            await agent.stop()
            try await relay.proxy.waitForLine(containing: "agent disconnected")
            _ = try await TestClient.timeUntilClosed(port: relay.servicePort("slow"))
            let refused = try await Relayctl.ok(["--socket", proxySocket, "metrics"])
            #expect(
                metricValue(
                    refused, "relay_sessions_refused_total", labels.merging(["reason": "no_agent"]) { a, _ in a })
                    == 1)
            #expect(metricValue(refused, "relay_agent_disconnects_total", ["role": "proxy", "agent": "office"]) == 1)
        }
    }
}
