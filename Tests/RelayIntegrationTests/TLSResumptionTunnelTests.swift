import Foundation
import NIOCore
import Testing

/// TLS 1.3 session resumption on the agent's data channels, through both daemons: the time
/// to first byte of a new session with every data channel's handshake in full
/// (`tls.resumption` false) and with resumption, both printed, and the agent's counters
/// showing that its data channels did resume. Timing is printed, not asserted on (the goals
/// live in scripts/bench).
@Suite(.serialized, .timeLimit(.minutes(3)))
struct TLSResumptionTunnelTests {
    static let sessions = 30

    /// The time from connecting to a service until the target's greeting arrives, per session.
    private func firstBytes(port: Int, count: Int) async throws -> [Duration] {
        var times: [Duration] = []
        for _ in 0..<count {
            let started = ContinuousClock.now
            let connection = try await TestClient.connect(port: port)
            try await connection.executeThenClose { inbound, _ in
                for try await buffer in inbound where buffer.readableBytes > 0 { break }
            }
            times.append(ContinuousClock.now - started)
        }
        return times
    }

    private func median(_ values: [Duration]) -> String {
        let middle = values.sorted()[values.count / 2]
        let ms = Double(middle.components.seconds) * 1000 + Double(middle.components.attoseconds) / 1e15
        return String(format: "%.3f ms", ms)
    }

    /// Runs `sessions` sessions through a TLS tunnel whose agent has `resumption`; returns the
    /// times and the agent's `relay` status.
    private func tunnel(resumption: Bool) async throws -> ([Duration], [String: Any]) {
        let target = try await TargetServer.start(.greetThenRead(greeting: "hello\n"))
        defer { Task { await target.close() } }
        var result: ([Duration], [String: Any]) = ([], [:])
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-16")], services: [.init(name: "web", agent: "office")]
        ) { relay in
            let pki = TestPKI(directory: relay.directory)
            let ca = try pki.authority("relay test CA", file: "ca")
            let server = try pki.leaf(
                commonName: "relay.test", dns: ["relay.test"], ips: ["127.0.0.1"], issuer: ca, file: "relay")
            relay.proxyOptions["tls"] = ["certificate": server.certificatePath, "key": server.keyPath]
            try await relay.startProxy()
            let agent = try await relay.startAgent(
                id: "office", services: ["web": target.port],
                options: [
                    "tls": ["ca": ca.certificatePath, "serverName": "relay.test", "resumption": resumption]
                ])
            try await agent.waitForLine(containing: "agent port uses TLS 1.3")
            let port = relay.servicePort("web")
            _ = try await self.firstBytes(port: port, count: 2)  // warm up (and a first ticket)
            let times = try await self.firstBytes(port: port, count: Self.sessions)
            let status = try await Relayctl.json(["--socket", relay.agentSocket("office"), "status"]) as! [String: Any]
            result = (times, status["relay"] as? [String: Any] ?? [:])
        }
        return result
    }

    @Test func timeToFirstByteWithAFullHandshakeAndWithResumption() async throws {
        let (full, fullStatus) = try await self.tunnel(resumption: false)
        let (resumed, resumedStatus) = try await self.tunnel(resumption: true)
        print(
            "TTFB of a new session through the TLS tunnel: full handshake \(self.median(full)), "
                + "resumed \(self.median(resumed)) (medians over \(Self.sessions) sessions; debug build)")
        print("agent counters: resumption off \(fullStatus), on \(resumedStatus)")
        // Off: every handshake in full. On: the data channels after the first resumed.
        #expect(fullStatus["tlsResumed"] as? Int == 0)
        #expect((fullStatus["tlsFullHandshakes"] as? Int ?? 0) >= Self.sessions + 3)
        #expect((resumedStatus["tlsResumed"] as? Int ?? 0) >= Self.sessions)
    }
}
