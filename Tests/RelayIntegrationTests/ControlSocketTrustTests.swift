import Foundation
import RelayControl
import Testing

/// The control socket's directory, checked by both daemons; relayctl run as root refusing a
/// socket a local user could have planted; and relayctl escaping what a daemon says.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct ControlSocketTrustTests {
    static func directory(owner: uid_t? = nil, mode: mode_t = 0o755) throws -> String {
        let directory = NSTemporaryDirectory() + "relay-sock-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        chmod(directory, mode)
        if let owner { chown(directory, owner, gid_t.max) }
        return directory
    }

    /// A config for `binary` whose control socket is `socket`.
    static func config(_ binary: String, socket: String, in directory: String) throws -> String {
        let config = directory + "-\(binary).json"
        let text =
            binary == "relay-proxy"
            ? #"{"listen": "127.0.0.1:0", "control": "\#(socket)", "agents": [{"id": "office", "secret": "correct horse battery staple"}], "services": []}"#
            : #"{"relay": "127.0.0.1:9", "id": "office", "secret": "correct horse battery staple", "control": "\#(socket)", "services": []}"#
        try Data(text.utf8).write(to: URL(fileURLWithPath: config))
        return config
    }

    @Test(.enabled(if: geteuid() == 0, "chown needs root"), arguments: ["relay-proxy", "relay-agent"])
    func aDirectoryOfAnotherUserIsRefused(_ binary: String) async throws {
        let directory = try Self.directory(owner: 4321)
        let config = try Self.config(binary, socket: directory + "/c.sock", in: directory)
        defer {
            try? FileManager.default.removeItem(atPath: directory)
            try? FileManager.default.removeItem(atPath: config)
        }
        let run = try await Relayctl.run(["--config", config], binary: binary)
        #expect(run.status == 1, "\(run)")
        #expect(
            run.stderr.contains(
                "control socket directory \(directory) is owned by uid 4321, neither root nor the daemon's user (uid 0)"
            ),
            "\(run)")
        #expect(!FileManager.default.fileExists(atPath: directory + "/c.sock"))
    }

    @Test(arguments: ["relay-proxy", "relay-agent"])
    func aWritableDirectoryOfOurOwnIsRepaired(_ binary: String) async throws {
        let directory = try Self.directory(mode: 0o777)
        let socket = directory + "/c.sock"
        let config = try Self.config(binary, socket: socket, in: directory)
        defer {
            try? FileManager.default.removeItem(atPath: directory)
            try? FileManager.default.removeItem(atPath: config)
        }
        let daemon = try DaemonProcess(binary, arguments: ["--config", config], name: binary)
        defer { Task { await daemon.stop() } }
        try await daemon.waitForLine(containing: "control socket listening")
        #expect(
            !daemon.lines(
                containing:
                    "control socket directory \(directory) was writable by group or others (mode 0777); set it to 0755"
            ).isEmpty)
        var info = stat()
        #expect(stat(directory, &info) == 0 && info.st_mode & 0o7777 == 0o755)
        #expect(lstat(socket, &info) == 0 && info.st_mode & 0o7777 == 0o660 && info.st_uid == geteuid())
        await daemon.stop()
    }

    /// What a relay daemon answers to `status`: an agent whose last error is `lastError`.
    static func statusAnswer(lastError: String) throws -> String {
        var report = StatusReport(
            role: "agent", pid: 1, startedAt: Date(), config: "/etc/relay/agent.json", configLoadedAt: Date(),
            control: "/run/relay/agent.sock", metrics: nil, sessions: 0, sessionsTotal: 0, sessionsPending: 0,
            services: [])
        report.agent = "office"
        var relay = RelayReport(address: "relay.example.net:7835", state: "waiting", reconnectAttempts: 3)
        relay.lastError = lastError
        report.relay = relay
        let result = String(decoding: try ControlJSON.encoder().encode(report), as: UTF8.self)
        return #"{"id":1,"ok":true,"result":"# + result + "}"
    }

    @Test(.enabled(if: geteuid() == 0, "the check is made when relayctl runs as root"))
    func rootRefusesASocketALocalUserCouldHavePlanted() async throws {
        let answer = try Self.statusAnswer(lastError: "connection refused")
        // The socket in a directory of a local user; a socket of a local user in root's
        // directory; root's socket in a directory anyone may write.
        let cases: [(uid_t, mode_t, uid_t, String)] = [
            (4321, 0o755, 0, "its directory DIR is owned by uid 4321"),
            (0, 0o755, 4321, "it is owned by uid 4321, not root or a system account"),
            (0, 0o777, 0, "its directory DIR is writable by group or others (mode 0777)"),
        ]
        for (owner, mode, socketOwner, reason) in cases {
            let directory = try Self.directory(mode: mode)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let fake = try FakeControlSocket(path: directory + "/agent.sock", answer: answer)
            defer { fake.close() }
            chown(fake.path, socketOwner, gid_t.max)
            chown(directory, owner, gid_t.max)
            let run = try await Relayctl.run(["--socket", fake.path, "status"])
            let expected = reason.replacingOccurrences(of: "DIR", with: directory)
            #expect(run.status == 4 && run.isOneErrorLine, "\(run)")
            #expect(run.stderr.contains("refusing the control socket \(fake.path): \(expected)"), "\(run)")
            #expect(fake.stats.accepted.load(ordering: .relaxed) == 0)
            print("impostor refused: \(run.stderr.trimmingCharacters(in: .newlines))")
        }
        // The same fake, owned by root in root's directory, is believed: the refusals above are the check's.
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let fake = try FakeControlSocket(path: directory + "/agent.sock", answer: answer)
        defer { fake.close() }
        let run = try await Relayctl.run(["--socket", fake.path, "status"])
        #expect(run.status == 0 && run.stdout.contains("connection refused"), "\(run)")
    }

    static let hostile = "\u{1B}[2J\u{1B}]0;pwned\u{07}\rforged\nline\u{9B}31m\u{7F}"

    static func hasControls(_ text: String) -> Bool {
        text.unicodeScalars.contains { $0 != "\n" && TerminalText.isControl($0) }
    }

    @Test func relayctlEscapesWhatADaemonSays() async throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let fake = try FakeControlSocket(
            path: directory + "/agent.sock", answer: try Self.statusAnswer(lastError: Self.hostile))
        defer { fake.close() }

        let human = try await Relayctl.run(["--socket", fake.path, "status"])
        #expect(human.status == 0, "\(human)")
        #expect(!Self.hasControls(human.stdout), "\(human.stdout.debugDescription)")
        #expect(human.stdout.contains(#"last error  \x1b[2J\x1b]0;pwned\x07\rforged\nline\u{9b}31m\x7f"#), "\(human)")
        print("relayctl status shows: \(human.stdout.split(separator: "\n").first { $0.contains("last error") } ?? "")")

        let json = try await Relayctl.run(["--socket", fake.path, "--json", "status"])
        #expect(json.status == 0, "\(json)")
        #expect(!Self.hasControls(json.stdout), "\(json.stdout.debugDescription)")
        let decoded = try json.json() as? [String: Any]
        #expect((decoded?["relay"] as? [String: Any])?["lastError"] as? String == Self.hostile)

        // A failure's message, on stderr.
        let failing = try FakeControlSocket(
            path: directory + "/proxy.sock",
            answer: #"{"id":1,"ok":false,"error":{"code":"internal","message":"\u001b[2J\rgone\u009b"}}"#)
        defer { failing.close() }
        let failed = try await Relayctl.run(["--socket", failing.path, "status"])
        #expect(failed.status != 0 && failed.isOneErrorLine, "\(failed)")
        #expect(!Self.hasControls(failed.stderr) && failed.stderr.contains(#"\x1b[2J\rgone\u{9b}"#), "\(failed)")
    }
}
