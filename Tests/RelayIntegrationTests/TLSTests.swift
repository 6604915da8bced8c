import Foundation
import NIOCore
import Testing

/// TLS 1.3 on the agent port, on both daemons: a tunnel through a CA-signed and through a
/// pinned self-signed relay certificate; every verification failure refused with its reason
/// on both sides while the daemons keep serving; mutual TLS binding the client certificate
/// to the agent id; a TLS side meeting a plaintext one; the plaintext warning; reloads that
/// re-read the files; `relay-proxy --print-tls-pin`. Certificates are made at test time.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct TLSTests {
    /// The payload each tunnel check sends each way.
    static let payloadBytes = 1 << 20

    /// Sends `payloadBytes` through `port`, half-closes, and expects every byte back
    /// (the echo target returns them), timing it.
    private func echoes(_ port: Int, label: String) async throws -> Bool {
        let message = TestData.random(Self.payloadBytes)
        let started = ContinuousClock.now
        let reply = try await TestClient.exchange(port: port, request: message)
        let elapsed = ContinuousClock.now - started
        print("\(label): \(message.count) bytes each way through the TLS tunnel in \(elapsed)")
        return reply == message
    }

    /// The relay's TLS object for the proxy config.
    private func proxyTLS(_ relay: TestPKI.Issued, clientCA: TestPKI.Issued? = nil) -> [String: Any] {
        var tls: [String: Any] = ["certificate": relay.certificatePath, "key": relay.keyPath]
        if let clientCA { tls["clientCA"] = clientCA.certificatePath }
        return tls
    }

    /// An echo target, and a fixture with agent `office` (and `otherAgents`) serving `web`,
    /// with a PKI that writes into the fixture's directory.
    private func withTunnel(
        otherAgents: [RelayFixture.Agent] = [],
        _ body: (RelayFixture, TestPKI, TargetServer) async throws -> Void
    ) async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-16")] + otherAgents,
            services: [.init(name: "web", agent: "office")]
        ) { relay in
            try await body(relay, TestPKI(directory: relay.directory), echo)
        }
    }

    @Test func tunnelWithACASignedRelayCertificate() async throws {
        try await self.withTunnel { relay, pki, echo in
            let ca = try pki.authority("relay test CA", file: "ca")
            let server = try pki.leaf(
                commonName: "relay.test", dns: ["relay.test"], ips: ["127.0.0.1"], issuer: ca, file: "relay")
            relay.proxyOptions["tls"] = self.proxyTLS(server)
            try await relay.startProxy()
            try await relay.proxy.waitForLine(containing: "agent port uses TLS 1.3", server.pin)
            let agent = try await relay.startAgent(
                id: "office", services: ["web": echo.port],
                options: ["tls": ["ca": ca.certificatePath, "serverName": "relay.test"]])
            try await agent.waitForLine(containing: "agent port uses TLS 1.3, relay verified by the CA in")
            #expect(try await self.echoes(relay.servicePort("web"), label: "CA-signed"))
            // Several sessions at once, each over its own TLS data channel.
            let port = relay.servicePort("web")
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        try await TestClient.exchange(port: port, request: Array("hello".utf8)) == Array("hello".utf8)
                    }
                }
                for try await ok in group { #expect(ok) }
            }
            #expect(relay.proxy.lines(containing: "plaintext").isEmpty)
            #expect(agent.lines(containing: "plaintext").isEmpty)
            // The address alone names the relay too (its certificate holds 127.0.0.1).
            let second = try await relay.startAgent(
                id: "office", services: ["web": echo.port], options: ["tls": ["ca": ca.certificatePath]])
            _ = second
            #expect(try await self.echoes(relay.servicePort("web"), label: "CA-signed, name from the address"))
        }
    }

    @Test func tunnelWithAPinnedSelfSignedRelayCertificateAndPrintTLSPin() async throws {
        try await self.withTunnel { relay, pki, echo in
            let server = try pki.leaf(commonName: "relay", dns: ["relay.invalid"], issuer: nil, file: "self-signed")
            relay.proxyOptions["tls"] = self.proxyTLS(server)
            let config = try relay.writeProxyConfig()
            // The pin the relay prints is the one computed here from the key's SPKI.
            let printed = try await Relayctl.run(["--print-tls-pin", "--config", config], binary: "relay-proxy")
            print(
                "relay-proxy --print-tls-pin: \(printed.stdout.trimmingCharacters(in: .newlines)) (computed: \(server.pin))"
            )
            #expect(printed.status == 0)
            #expect(printed.stdout == server.pin + "\n")

            try await relay.startProxy()
            let agent = try await relay.startAgent(
                id: "office", services: ["web": echo.port], options: ["tls": ["pin": server.pin]])
            try await agent.waitForLine(containing: "relay verified by its pin only")
            #expect(try await self.echoes(relay.servicePort("web"), label: "pinned self-signed"))
        }
    }

    @Test func agentRefusesAWrongCANameOrPinAndSaysWhy() async throws {
        try await self.withTunnel { relay, pki, echo in
            let ca = try pki.authority("relay test CA", file: "ca")
            let otherCA = try pki.authority("another CA", file: "other-ca")
            let server = try pki.leaf(
                commonName: "relay.test", dns: ["relay.test"], ips: ["127.0.0.1"], issuer: ca, file: "relay")
            let stranger = try pki.leaf(commonName: "stranger", issuer: nil, file: "stranger")
            relay.proxyOptions["tls"] = self.proxyTLS(server)
            try await relay.startProxy()
            let address = "127.0.0.1:\(relay.agentPort)"

            let wrongCA = try await relay.startAgent(
                id: "office", services: ["web": echo.port], options: ["tls": ["ca": otherCA.certificatePath]],
                waitForRegistration: false)
            let line = try await wrongCA.waitForLine(
                containing:
                    "relay \(address) failed TLS verification: its certificate does not chain to the CA in \(otherCA.certificatePath)"
            )
            print("wrong CA, agent: \(line)")
            print(
                "wrong CA, relay: \(try await relay.proxy.waitForLine(containing: "agent-port connection refused: TLS handshake with 127.0.0.1:", "failed"))"
            )
            // The usual reconnect backoff follows: it tries again, and fails again the same way.
            try await wrongCA.waitForLine(containing: "failed TLS verification", count: 2)
            await wrongCA.stop()

            let wrongName = try await relay.startAgent(
                id: "office", services: ["web": echo.port],
                options: ["tls": ["ca": ca.certificatePath, "serverName": "elsewhere.test"]], waitForRegistration: false
            )
            print(
                "wrong name: \(try await wrongName.waitForLine(containing: "relay \(address) failed TLS verification: its certificate does not name 'elsewhere.test'"))"
            )
            await wrongName.stop()

            let wrongPin = try await relay.startAgent(
                id: "office", services: ["web": echo.port], options: ["tls": ["pin": stranger.pin]],
                waitForRegistration: false)
            print(
                "wrong pin: \(try await wrongPin.waitForLine(containing: "relay \(address) failed TLS verification: public key pin mismatch (have \(server.pin), want \(stranger.pin))"))"
            )
            await wrongPin.stop()
            // A CA and a pin: both must hold (the right CA, the wrong pin).
            let both = try await relay.startAgent(
                id: "office", services: ["web": echo.port],
                options: ["tls": ["ca": ca.certificatePath, "pin": stranger.pin]],
                waitForRegistration: false)
            try await both.waitForLine(containing: "failed TLS verification: public key pin mismatch")
            #expect(both.lines(containing: "registered with relay").isEmpty)
            await both.stop()

            // None of them reached the relay's protocol; the relay serves a good agent still.
            #expect(relay.proxy.lines(containing: "agent authenticated").isEmpty)
            try await relay.startAgent(
                id: "office", services: ["web": echo.port],
                options: ["tls": ["ca": ca.certificatePath, "pin": server.pin]])
            #expect(try await self.echoes(relay.servicePort("web"), label: "after the refusals"))
        }
    }

    @Test func mutualTLSBindsTheClientCertificateToTheAgentID() async throws {
        try await self.withTunnel(otherAgents: [.init(id: "branch", secret: "s3cret-s3cret-17")]) { relay, pki, echo in
            let ca = try pki.authority("relay test CA", file: "ca")
            let agentsCA = try pki.authority("agents CA", file: "agents-ca")
            let server = try pki.leaf(commonName: "relay.test", ips: ["127.0.0.1"], issuer: ca, file: "relay")
            let office = try pki.leaf(commonName: "office", issuer: agentsCA, file: "office")
            let branch = try pki.leaf(commonName: "branch-host", dns: ["branch"], issuer: agentsCA, file: "branch")
            let forged = try pki.leaf(commonName: "office", issuer: ca, file: "forged")
            relay.proxyOptions["tls"] = self.proxyTLS(server, clientCA: agentsCA)
            try await relay.startProxy()
            try await relay.proxy.waitForLine(containing: "mutual TLS with agent certificates from")
            let trust: [String: Any] = ["ca": ca.certificatePath]

            // No client certificate.
            let bare = try await relay.startAgent(
                id: "office", services: ["web": echo.port], options: ["tls": trust], waitForRegistration: false)
            print(
                "no certificate, relay: \(try await relay.proxy.waitForLine(containing: "agent-port connection refused", "no client certificate"))"
            )
            print(
                "no certificate, agent: \(try await bare.waitForLine(containing: "relay connection lost", "certificate"))"
            )
            await bare.stop()

            // A certificate of the right CA that names another agent: the HMAC proof alone is not enough.
            var named = trust
            named["certificate"] = branch.certificatePath
            named["key"] = branch.keyPath
            let impostor = try await relay.startAgent(
                id: "office", services: ["web": echo.port], options: ["tls": named], waitForRegistration: false)
            print(
                "other agent's certificate, relay: \(try await relay.proxy.waitForLine(containing: "mutual TLS: the client certificate names 'branch-host', 'branch', not agent 'office'"))"
            )
            print(
                "other agent's certificate, agent: \(try await impostor.waitForLine(containing: "relay connection lost", "not agent 'office'"))"
            )
            await impostor.stop()

            // A certificate naming the agent but signed by another CA.
            var unsigned = trust
            unsigned["certificate"] = forged.certificatePath
            unsigned["key"] = forged.keyPath
            let outsider = try await relay.startAgent(
                id: "office", services: ["web": echo.port], options: ["tls": unsigned], waitForRegistration: false)
            print(
                "wrong CA, relay: \(try await relay.proxy.waitForLine(containing: "agent-port connection refused", "not signed by the clientCA"))"
            )
            await outsider.stop()
            #expect(relay.proxy.lines(containing: "agent authenticated").isEmpty)

            // The right certificate: registered, and its data channels (checked the same way) carry bytes.
            var good = trust
            good["certificate"] = office.certificatePath
            good["key"] = office.keyPath
            try await relay.startAgent(id: "office", services: ["web": echo.port], options: ["tls": good])
            #expect(try await self.echoes(relay.servicePort("web"), label: "mutual TLS"))
            // "branch" with its own certificate (a DNS name) registers too.
            var branchTLS = trust
            branchTLS["certificate"] = branch.certificatePath
            branchTLS["key"] = branch.keyPath
            try await relay.startAgent(id: "branch", services: [:], options: ["tls": branchTLS])
        }
    }

    @Test func plaintextMeetsTLSWithAClearLineAndTheWarningAtStart() async throws {
        try await self.withTunnel { relay, pki, echo in
            let server = try pki.leaf(commonName: "relay", ips: ["127.0.0.1"], issuer: nil, file: "relay")

            // A plaintext relay: it warns at start; a TLS agent is told, and tells, why.
            try await relay.startProxy()
            try await relay.proxy.waitForLine(containing: "warning", "the agent port is plaintext")
            let tlsAgent = try await relay.startAgent(
                id: "office", services: ["web": echo.port], options: ["tls": ["pin": server.pin]],
                waitForRegistration: false)
            print(
                "TLS agent, plaintext relay: \(try await relay.proxy.waitForLine(containing: "the peer speaks TLS, and this side of the agent port is plaintext"))"
            )
            print(
                "  agent: \(try await tlsAgent.waitForLine(containing: "TLS handshake with relay 127.0.0.1:\(relay.agentPort) failed"))"
            )
            await tlsAgent.stop()
            let plain = try await relay.startAgent(id: "office", services: ["web": echo.port])
            try await plain.waitForLine(containing: "warning", "the agent port is plaintext")
            #expect(plain.lines(containing: "warning the agent port is plaintext").count == 1)
            #expect(relay.proxy.lines(containing: "warning the agent port is plaintext").count == 1)
            let message = TestData.random(4096)
            #expect(try await TestClient.exchange(port: relay.servicePort("web"), request: message) == message)
            await plain.stop()
            await relay.proxy.stop()

            // A TLS relay: a plaintext agent is refused with a clear line on both sides.
            relay.proxyOptions["tls"] = self.proxyTLS(server)
            try await relay.startProxy()
            let plainAgent = try await relay.startAgent(
                id: "office", services: ["web": echo.port], waitForRegistration: false)
            print(
                "plaintext agent, TLS relay: \(try await relay.proxy.waitForLine(containing: "agent-port connection refused", "the peer does not speak TLS"))"
            )
            print(
                "  agent: \(try await plainAgent.waitForLine(containing: "relay connection lost", "the peer speaks TLS, and this side of the agent port is plaintext"))"
            )
            await plainAgent.stop()
            try await relay.startAgent(
                id: "office", services: ["web": echo.port], options: ["tls": ["pin": server.pin]])
            #expect(try await TestClient.exchange(port: relay.servicePort("web"), request: message) == message)
        }
    }

    @Test func reloadRereadsTheFilesOnBothDaemonsAndKeepsTheOldOnesOnABadFile() async throws {
        try await self.withTunnel { relay, pki, echo in
            let first = try pki.leaf(commonName: "relay", ips: ["127.0.0.1"], issuer: nil, file: "first")
            let second = try pki.leaf(commonName: "relay", ips: ["127.0.0.1"], issuer: nil, file: "second")
            relay.proxyOptions["tls"] = self.proxyTLS(first)
            try await relay.startProxy()
            let agent = try await relay.startAgent(
                id: "office", services: ["web": echo.port], options: ["tls": ["pin": first.pin]])
            let message = TestData.random(4096)
            #expect(try await TestClient.exchange(port: relay.servicePort("web"), request: message) == message)

            // A bad key file: both reloads refused with the reason; the old TLS config serves on.
            relay.proxyOptions["tls"] = [
                "certificate": second.certificatePath, "key": relay.directory + "/missing.key",
            ]
            try relay.writeProxyConfig()
            let badProxy = try await Relayctl.run(["--socket", relay.proxySocket, "reload"])
            print("proxy reload with a missing key: \(badProxy.stderr)\(badProxy.stdout)")
            #expect(badProxy.status != 0)
            #expect(
                (badProxy.stderr + badProxy.stdout).contains("$.tls.key: cannot read '\(relay.directory)/missing.key'"))
            try relay.writeAgentConfig(
                id: "office", services: ["web": echo.port], options: ["tls": ["pin": "sha256//nope"]])
            let badAgent = try await Relayctl.run(["--socket", relay.agentSocket("office"), "reload"])
            print("agent reload with a bad pin: \(badAgent.stderr)\(badAgent.stdout)")
            #expect(badAgent.status != 0)
            #expect((badAgent.stderr + badAgent.stdout).contains("$.tls.pin: must be"))
            #expect(try await TestClient.exchange(port: relay.servicePort("web"), request: message) == message)

            // The relay's new certificate serves new connections: the agent, still pinning the
            // old key, refuses the relay on its next data channel and says why.
            relay.proxyOptions["tls"] = self.proxyTLS(second)
            try relay.writeProxyConfig()
            let proxyReload = try await Relayctl.ok(["--socket", relay.proxySocket, "reload"])
            print("proxy reload: \(proxyReload)")
            #expect(proxyReload.contains("agent port TLS for new connections"))
            _ = try? await TestClient.exchange(port: relay.servicePort("web"), request: message)
            try await agent.waitForLine(
                containing: "failed TLS verification: public key pin mismatch (have \(second.pin), want \(first.pin))")

            // The agent's reload takes the new pin for its new connections: sessions flow again.
            try relay.writeAgentConfig(
                id: "office", services: ["web": echo.port], options: ["tls": ["pin": second.pin]])
            let agentReload = try await Relayctl.ok(["--socket", relay.agentSocket("office"), "reload"])
            print("agent reload: \(agentReload)")
            #expect(agentReload.contains("agent port TLS for new connections"))
            #expect(try await TestClient.exchange(port: relay.servicePort("web"), request: message) == message)
        }
    }
}
