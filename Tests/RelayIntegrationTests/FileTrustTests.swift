import Foundation
import Testing

/// Config and secret files others could change or read are refused by both daemons, with one
/// line naming the file, its mode and the fix: at --check-config, at start and at reload.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct FileTrustTests {
    /// A directory with a config for `binary` whose secret is in office.secret (0600).
    static func configs(_ binary: String) throws -> (directory: String, config: String, secret: String) {
        let directory = NSTemporaryDirectory() + "relay-trust-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let secret = directory + "/office.secret"
        try Data("correct horse battery staple\n".utf8).write(to: URL(fileURLWithPath: secret))
        chmod(secret, 0o600)
        let config = directory + "/config.json"
        let text =
            binary == "relay-proxy"
            ? #"{"listen": "127.0.0.1:0", "control": "\#(directory)/c.sock", "agents": [{"id": "office", "secretFile": "office.secret"}], "services": []}"#
            : #"{"relay": "127.0.0.1:9", "id": "office", "secretFile": "office.secret", "control": "\#(directory)/c.sock", "services": []}"#
        try Data(text.utf8).write(to: URL(fileURLWithPath: config))
        chmod(config, 0o640)
        return (directory, config, secret)
    }

    @Test(arguments: ["relay-proxy", "relay-agent"])
    func aWritableConfigIsRefusedAtCheckAndStart(_ binary: String) async throws {
        let (directory, config, _) = try Self.configs(binary)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let fine = try await Relayctl.run(["--check-config", "--config", config], binary: binary)
        #expect(fine.status == 0, "\(fine)")

        chmod(config, 0o666)
        let expected =
            "config file \(config) is writable by group or others (mode 0666); run: chmod 640 \(config)"
        let checked = try await Relayctl.run(["--check-config", "--config", config], binary: binary)
        #expect(checked.status == 1 && checked.stderr.contains(expected), "\(checked)")
        let started = try await Relayctl.run(["--config", config], binary: binary)
        #expect(started.status == 1 && started.stderr.contains(expected), "\(started)")
        #expect(!started.stderr.contains("ready"))
        print("\(binary): \(checked.stderr.split(separator: "\n").first ?? "")")
    }

    @Test(arguments: ["relay-proxy", "relay-agent"])
    func aReadableSecretFileIsRefusedAtCheckAndStart(_ binary: String) async throws {
        let (directory, config, secret) = try Self.configs(binary)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        chmod(secret, 0o644)
        let expected = "secret file \(secret) is accessible by others (mode 0644); run: chmod 600 \(secret)"
        let checked = try await Relayctl.run(["--check-config", "--config", config], binary: binary)
        #expect(checked.status == 1 && checked.stderr.contains(expected), "\(checked)")
        let started = try await Relayctl.run(["--config", config], binary: binary)
        #expect(started.status == 1 && started.stderr.contains(expected), "\(started)")

        // Readable by a group that is not the daemon's.
        chmod(secret, 0o640)
        chown(secret, uid_t.max, getegid() + 4321)
        let group = try await Relayctl.run(["--check-config", "--config", config], binary: binary)
        #expect(group.status == 1 && group.stderr.contains("is readable by group \(getegid() + 4321)"), "\(group)")
    }

    @Test(.enabled(if: geteuid() == 0, "chown needs root"), arguments: ["relay-proxy", "relay-agent"])
    func aConfigOwnedByAnotherUserIsRefused(_ binary: String) async throws {
        let (directory, config, _) = try Self.configs(binary)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        chown(config, 4321, gid_t.max)
        let checked = try await Relayctl.run(["--check-config", "--config", config], binary: binary)
        #expect(
            checked.status == 1
                && checked.stderr.contains(
                    "config file \(config) is owned by uid 4321, neither root nor the daemon's user"),
            "\(checked)")
    }

    /// A reload of a config made writable by others is refused; the daemon keeps its config.
    @Test func aReloadOfAWritableConfigIsRefusedByBothDaemons() async throws {
        let target = try await TargetServer.start(.echo)
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "web", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            try await relay.startAgent(id: "office", services: ["web": target.port])
            for (socket, config) in [
                (relay.proxySocket, relay.directory + "/proxy.json"),
                (relay.agentSocket("office"), relay.directory + "/agent-office.json"),
            ] {
                chmod(config, 0o646)
                let reload = try await Relayctl.run(["--socket", socket, "reload"])
                #expect(reload.status == 7, "\(reload)")
                #expect(
                    reload.stderr.contains(
                        "config file \(config) is writable by group or others (mode 0646); run: chmod 640 \(config)"),
                    "\(reload)")
                chmod(config, 0o600)
                let again = try await Relayctl.run(["--socket", socket, "reload"])
                #expect(again.status == 0, "\(again)")
            }
        }
    }
}
