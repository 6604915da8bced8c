import Foundation
import Testing

/// The Debian package's conffiles (packaging/etc) hold CHANGE-ME placeholders until the
/// admin edits them: each daemon names them through `--check-placeholders` (the units'
/// ExecCondition=), refuses to start with them, and refuses a reload to them, on both daemons.
@Suite(.timeLimit(.minutes(2)))
struct ShippedConfigTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    /// The daemon, its conffile and the paths of that file's placeholders.
    static let daemons: [(binary: String, file: String, placeholders: [String])] = [
        ("relay-proxy", "proxy.json", ["$.agents[0].secret"]),
        ("relay-agent", "agent.json", ["$.relay", "$.secret"]),
    ]

    @Test(arguments: Self.daemons.indices)
    func checkPlaceholdersNamesEachOneAndNothingElse(_ index: Int) async throws {
        let (binary, file, placeholders) = Self.daemons[index]
        let shipped = Self.repository + "/packaging/etc/" + file
        let left = try await Relayctl.run(["--config", shipped, "--check-placeholders"], binary: binary)
        #expect(left.status == 1, "\(left)")
        #expect(left.stdout.isEmpty)
        let lines = left.stderr.split(separator: "\n").map(String.init)
        #expect(
            lines
                == placeholders.map {
                    "\(binary): \(shipped): \($0): still holds the shipped placeholder CHANGE-ME: edit the file (see /usr/share/doc/\(binary)/README.Debian)"
                })

        // --check-config lists them too, as problems.
        let checked = try await Relayctl.run(["--config", shipped, "--check-config"], binary: binary)
        #expect(checked.status == 1)
        #expect(checked.stderr.contains("\(placeholders[0]): still holds the shipped placeholder"))

        // An edited file passes, and so do files it cannot judge: the start reports those.
        let directory = NSTemporaryDirectory() + "relay-shipped-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let edited = try String(contentsOfFile: shipped, encoding: .utf8).replacingOccurrences(
            of: #""CHANGE-ME:[^"]*""#, with: "\"127.0.0.1:7835\"", options: .regularExpression)
        try Data(edited.utf8).write(to: URL(fileURLWithPath: directory + "/" + file))
        try Data("{ not json".utf8).write(to: URL(fileURLWithPath: directory + "/broken.json"))
        for path in [directory + "/" + file, directory + "/broken.json", directory + "/missing.json"] {
            let passed = try await Relayctl.run(["--config", path, "--check-placeholders"], binary: binary)
            #expect(passed.status == 0 && passed.stdout.isEmpty && passed.stderr.isEmpty, "\(path): \(passed)")
        }
    }

    @Test(arguments: Self.daemons.indices)
    func aDaemonStartedWithThePlaceholdersExitsAndSaysWhere(_ index: Int) async throws {
        let (binary, file, placeholders) = Self.daemons[index]
        let shipped = Self.repository + "/packaging/etc/" + file
        let run = try await Relayctl.run(["--config", shipped], binary: binary)
        #expect(run.status == 1, "\(run)")
        #expect(run.stderr.contains("\(shipped): \(placeholders[0]): still holds the shipped placeholder CHANGE-ME"))
        #expect(!run.stderr.contains("ready"))
    }

    @Test func aReloadToAPlaceholderIsRefusedByTheProxyAndByTheAgent() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "web", agent: "office")]
        ) {
            relay in
            try await relay.startProxy()
            try await relay.startAgent(id: "office", services: ["web": echo.port])
            let message = TestData.random(1000)

            relay.agents = [.init(id: "office", secret: "CHANGE-ME: the secret")]
            try relay.writeProxyConfig()
            let proxy = try await Relayctl.run(["--socket", relay.proxySocket, "reload"])
            #expect(proxy.status == 7, "\(proxy)")
            #expect(proxy.stderr.contains("$.agents[0].secret: still holds the shipped placeholder"), "\(proxy)")

            try relay.writeAgentConfig(id: "office", secret: "CHANGE-ME: the secret", services: ["web": echo.port])
            let agent = try await Relayctl.run(["--socket", relay.agentSocket("office"), "reload"])
            #expect(agent.status == 7, "\(agent)")
            #expect(agent.stderr.contains("$.secret: still holds the shipped placeholder"), "\(agent)")

            // Both kept the config in force: the tunnel carries a session.
            #expect(try await TestClient.exchange(port: relay.servicePort("web"), request: message) == message)
        }
    }
}
