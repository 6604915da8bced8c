import Foundation
import Testing

/// Secrets from systemd credentials (`secretCredential`): each daemon reads
/// `$CREDENTIALS_DIRECTORY/NAME`, as systemd's `LoadCredential=` provides it, and the agent
/// authenticates with it.
@Suite struct CredentialTests {
    /// A directory as systemd makes it for a unit's credentials: 0500, each file 0400.
    static func credentialsDirectory(in parent: String, _ files: [String: String]) throws -> String {
        let directory = parent + "/credentials"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for (name, content) in files {
            let path = directory + "/" + name
            try content.write(toFile: path, atomically: false, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o400], ofItemAtPath: path)
        }
        try FileManager.default.setAttributes([.posixPermissions: 0o500], ofItemAtPath: directory)
        return directory
    }

    /// The same secret, read by the relay from its credential and by the agent from its own:
    /// the agent registers and a client is served. A wrong credential is refused.
    @Test func aSecretFromTheCredentialsDirectoryAuthenticates() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        let secret = "credential secret, 32 bytes long"
        try await withFixture(
            agents: [.init(id: "office", secret: "unused-inline-secret-0123456789")],
            services: [.init(name: "web", agent: "office")]
        ) { relay in
            let relayCredentials = try Self.credentialsDirectory(
                in: relay.directory + "/proxy", ["office-secret": secret + "\n"])
            relay.proxyOptions["agents"] = [["id": "office", "secretCredential": "office-secret"]]
            relay.proxyEnvironment = ["CREDENTIALS_DIRECTORY": relayCredentials]
            try await relay.startProxy()

            let agentCredentials = try Self.credentialsDirectory(
                in: relay.directory + "/agent", ["relay-secret": secret, "wrong": "another secret, 32 bytes long.."])
            let environment = ["CREDENTIALS_DIRECTORY": agentCredentials]
            let agent = try await relay.startAgent(
                id: "office", services: ["web": echo.port], options: ["secretCredential": "relay-secret"],
                environment: environment)
            let reply = try await TestClient.exchange(port: relay.servicePort("web"), request: Array("served".utf8))
            print(
                "figure: agent with secretCredential: registered, client got \(String(decoding: reply, as: UTF8.self))")
            #expect(reply == Array("served".utf8))
            await agent.stop()

            // The other credential holds another secret: the relay refuses the agent.
            let wrong = try await relay.startAgent(
                id: "office", services: ["web": echo.port], options: ["secretCredential": "wrong"],
                waitForRegistration: false, environment: environment)
            try await wrong.waitForLine(containing: "relay refused authentication")
            try await relay.proxy.waitForLine(containing: "agent authentication failed: wrong secret", "agent=office")
        }
    }
}
