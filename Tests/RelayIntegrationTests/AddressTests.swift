import Foundation
import Testing

/// IPv6 and host names everywhere: listeners, the relay address and targets.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct AddressTests {
    @Test func everythingOverIPv6() async throws {
        let echo = try await TargetServer.start(.echo, host: "::1")
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "v6", secret: "s3cret-s3cret-s3cret")], services: [.init(name: "web", agent: "v6")],
            host: "::1"
        ) {
            relay in
            try await relay.startProxy()
            #expect(relay.proxy.lines(containing: "listening", "address=[::1]:").count == 2)
            try await relay.startAgent(id: "v6", services: ["web": echo.port], targetHost: "::1")
            let baseline = relay.baseline()
            let message = TestData.random(50_000)
            #expect(
                try await TestClient.exchange(port: relay.servicePort("web"), request: message, host: "::1") == message)
            try await relay.proxy.waitForLine(containing: "session open", "client=[::1]:")
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }

    @Test func hostNamesAreResolvedWhenDialled() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "named", secret: "s3cret-s3cret-s3cret")], services: [.init(name: "web", agent: "named")]
        ) {
            relay in
            relay.relayHost = "localhost"
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "named", services: ["web": echo.port], targetHost: "localhost")
            #expect(agent.lines(containing: "relay-agent starting", "relay=localhost:").count == 1)
            let baseline = relay.baseline()
            let message = TestData.random(1000)
            #expect(try await TestClient.exchange(port: relay.servicePort("web"), request: message) == message)
            try await agent.waitForLine(containing: "session open", "target=localhost:\(echo.port)")
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }
}

/// Names without the host's resolver files: `localhost` is loopback even where
/// `/etc/hosts` is empty (a minimal container), and a name that does not resolve is
/// retried with the usual backoff and named in the log and in `relayctl status`. The agent
/// runs in a mount namespace of its own with an empty `/etc/hosts` and a resolver that
/// answers nothing (needs root for the namespace).
@Suite(.serialized, .timeLimit(.minutes(1)))
struct NameResolutionTests {
    /// A wrapper that starts the agent with an empty /etc/hosts and no working DNS, or nil
    /// (with the reason printed) where mount namespaces are not available.
    private static func isolatedResolver(in directory: String) throws -> [String]? {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare") else {
            print("skipped: needs root and unshare(1) for a mount namespace")
            return nil
        }
        let hosts = directory + "/empty-hosts"
        let resolv = directory + "/resolv.conf"
        try Data().write(to: URL(fileURLWithPath: hosts))
        // Port 53 on loopback: nothing listens, so every query fails at once.
        try Data("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n".utf8).write(to: URL(fileURLWithPath: resolv))
        return [
            "/usr/bin/unshare", "-m", "/bin/sh", "-c",
            "mount --bind \(hosts) /etc/hosts && mount --bind \(resolv) /etc/resolv.conf && exec \"$0\" \"$@\"",
        ]
    }

    @Test func localhostWorksWithAnEmptyEtcHosts() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "named", secret: "s3cret-s3cret-s3cret")], services: [.init(name: "web", agent: "named")]
        ) { relay in
            guard let wrapper = try Self.isolatedResolver(in: relay.directory) else { return }
            relay.agentWrapper = wrapper
            relay.relayHost = "localhost"
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "named", services: ["web": echo.port], targetHost: "localhost")
            #expect(agent.lines(containing: "relay-agent starting", "relay=localhost:").count == 1)
            let message = TestData.random(1000)
            #expect(try await TestClient.exchange(port: relay.servicePort("web"), request: message) == message)
            try await agent.waitForLine(containing: "session open", "target=localhost:\(echo.port)")
        }
    }

    @Test func anUnresolvableRelayIsRetriedAndNamed() async throws {
        try await withFixture(
            agents: [.init(id: "named", secret: "s3cret-s3cret-s3cret")], services: [.init(name: "web", agent: "named")]
        ) { relay in
            guard let wrapper = try Self.isolatedResolver(in: relay.directory) else { return }
            relay.agentWrapper = wrapper
            try await relay.startProxy()
            relay.relayHost = "relay.example.invalid"
            let agent = try await relay.startAgent(
                id: "named", services: ["web": 9], options: ["reconnectInitialDelaySeconds": 0.1],
                waitForRegistration: false)
            let third = try await agent.waitForLine(
                containing: "relay connection lost", "relay.example.invalid", count: 3)
            print("figure: \(third)")
            #expect(third.contains("cannot resolve"))
            let status = try await Relayctl.json(["--socket", relay.agentSocket("named"), "status"])
            let report = (status as? [String: Any])?["relay"] as? [String: Any]
            let lastError = report?["lastError"] as? String ?? ""
            print("figure: relayctl status relay.lastError = \(lastError)")
            #expect(lastError.contains("relay.example.invalid") && lastError.contains("cannot resolve"))
            let delays = agent.lines(containing: "relay connection lost").compactMap {
                RelayFixture.field("retryInSeconds", in: $0).flatMap(Double.init)
            }
            print("figure: retry delays \(delays)")
            #expect(delays.count >= 3 && delays[2] > delays[0])
        }
    }
}
