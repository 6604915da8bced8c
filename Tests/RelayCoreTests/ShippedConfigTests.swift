import Foundation
import RelayCore
import Testing

@testable import RelayAgent
@testable import RelayProxy

/// The configs the Debian packages ship (packaging/etc: the conffiles; packaging/examples:
/// every key) and the two conventions they rely on: `//` comment keys and CHANGE-ME
/// placeholders, which a daemon refuses.
@Suite struct ShippedConfigTests {
    /// The top of the repository, found from this file's path.
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    /// The text of `path` (relative to the repository), each placeholder replaced with a value
    /// that makes sense at its key.
    static func edited(_ path: String, secretDirectory: String) throws -> String {
        let text = try String(contentsOfFile: Self.repository + "/" + path, encoding: .utf8)
        return
            text
            .replacingOccurrences(
                of: "\"CHANGE-ME: the relay's host:port, e.g. relay.example.net:7835\"",
                with: "\"relay.example.net:7835\""
            )
            .replacingOccurrences(of: "\"CHANGE-ME: the relay's host:port\"", with: "\"relay.example.net:7835\"")
            .replacingOccurrences(
                of: #""CHANGE-ME:[^"]*""#, with: "\"a long random secret\"", options: .regularExpression
            )
            .replacingOccurrences(of: "/etc/relay/", with: secretDirectory + "/")
    }

    @Test func theProxyConffileIsRefusedUntilItsPlaceholderIsReplaced() throws {
        let shipped = Self.repository + "/packaging/etc/proxy.json"
        #expect(
            problems { () throws(ConfigError) in try ProxyConfig.load(path: shipped) } == [
                "$.agents[0].secret: still holds the shipped placeholder CHANGE-ME: edit the file (see /usr/share/doc/relay-proxy/README.Debian)"
            ])
        let dir = try TempDir()
        let path = try dir.write("proxy.json", try Self.edited("packaging/etc/proxy.json", secretDirectory: dir.path))
        let config = try ProxyConfig.load(path: path)
        #expect(config.listen == HostPort(host: "0.0.0.0", port: 7835))
        #expect(config.control == "/run/relay/proxy.sock")
        #expect(config.services.map(\.name) == ["web"])
    }

    @Test func theAgentConffileIsRefusedUntilItsPlaceholdersAreReplaced() throws {
        let shipped = Self.repository + "/packaging/etc/agent.json"
        let hint =
            "still holds the shipped placeholder CHANGE-ME: edit the file (see /usr/share/doc/relay-agent/README.Debian)"
        #expect(
            problems { () throws(ConfigError) in try AgentConfig.load(path: shipped) } == [
                "$.relay: \(hint)", "$.secret: \(hint)",
            ])
        let dir = try TempDir()
        let path = try dir.write("agent.json", try Self.edited("packaging/etc/agent.json", secretDirectory: dir.path))
        let config = try AgentConfig.load(path: path)
        #expect(config.relay == HostPort(host: "relay.example.net", port: 7835))
        #expect(config.control == "/run/relay/agent.sock")
    }

    /// The examples name every key; they must stay valid as keys change.
    @Test func theExamplesLoadOnceEdited() throws {
        let dir = try TempDir()
        try dir.write("lab.secret", "another secret, 16 bytes or more\n")
        let proxy = try ProxyConfig.load(
            path: try dir.write(
                "proxy.json", try Self.edited("packaging/examples/proxy.json", secretDirectory: dir.path)))
        #expect(proxy.agents.map(\.id) == ["office", "lab"])
        #expect(proxy.services.map(\.name) == ["web", "ssh"])
        #expect(proxy.metrics == HostPort(host: "127.0.0.1", port: 9835))
        let agent = try AgentConfig.load(
            path: try dir.write(
                "agent.json", try Self.edited("packaging/examples/agent.json", secretDirectory: dir.path)))
        #expect(agent.services.map(\.name) == ["web", "ssh"])
        #expect(agent.metrics == HostPort(host: "127.0.0.1", port: 9836))
        // Every key the daemons accept is in its example.
        for (file, keys) in [("proxy.json", ProxyConfig.topLevelKeys), ("agent.json", AgentConfig.topLevelKeys)] {
            let text = try String(contentsOfFile: Self.repository + "/packaging/examples/" + file, encoding: .utf8)
            // The alternatives to `secret` appear as comments ("// secretFile", "// secretCredential");
            // so does `tls`, which names files that must exist ("// tls"), and the agent's
            // `relays`, the alternative to `relay` ("// relays").
            for key in keys where !["secretFile", "secretCredential", "tls", "relays"].contains(key) {
                #expect(text.contains("\"\(key)\""), "packaging/examples/\(file) lacks \(key)")
            }
            #expect(text.contains("\"// tls\""), "packaging/examples/\(file) lacks the tls hint")
            if keys.contains("relays") {
                #expect(text.contains("\"// relays\""), "packaging/examples/\(file) lacks the relays hint")
            }
        }
    }

    @Test func placeholdersAreFoundAnywhereExceptInComments() throws {
        let json = """
            {"a": "CHANGE-ME", "// note": "CHANGE-ME is fine in a comment",
             "list": ["ok", {"deep": "CHANGE-ME: x", "//": {"x": "CHANGE-ME"}}],
             "b": "not a CHANGE-ME placeholder", "n": 5, "t": true, "z": null}
            """
        let root = try JSONDecoder().decode(JSONValue.self, from: Data(json.utf8))
        #expect(ConfigPlaceholders.paths(in: root) == ["$.a", "$.list[1].deep"])
    }

    @Test func commentKeysAreIgnoredAtEveryLevelAndOtherUnknownKeysAreNot() throws {
        let dir = try TempDir()
        let json = """
            {"//": "top", "// listen": 1, "listen": "127.0.0.1:7835",
             "agents": [{"// id": ["any", "value"], "id": "office", "secret": "s-0123456789abcdef"}],
             "services": [{"//": null, "name": "web", "agent": "office", "listen": "127.0.0.1:0"}],
             "/ not a comment": 1}
            """
        #expect(
            problems { () throws(ConfigError) in try ProxyConfig.load(path: try! dir.write("p.json", json)) }
                .map { $0.components(separatedBy: " (allowed")[0] } == ["$./ not a comment: unknown key"])
        let agent = """
            {"//": "top", "relay": "127.0.0.1:7835", "id": "office", "secret": "s-0123456789abcdef",
             "services": [{"// why": "x", "name": "web", "target": "127.0.0.1:80"}]}
            """
        #expect(
            problems { () throws(ConfigError) in try AgentConfig.load(path: try! dir.write("a.json", agent)) } == [])
    }

    @Test func checkFindsNothingInAFileItCannotReadOrParse() throws {
        let dir = try TempDir()
        #expect(ConfigPlaceholders.check(path: dir.file("missing.json"), package: "relay-proxy").isEmpty)
        let broken = try dir.write("broken.json", "{\"secret\": \"CHANGE-ME\"")
        #expect(ConfigPlaceholders.check(path: broken, package: "relay-proxy").isEmpty)
        let placeholder = try dir.write("p.json", "{\"secret\": \"CHANGE-ME\"}")
        #expect(ConfigPlaceholders.check(path: placeholder, package: "relay-agent").map(\.path) == ["$.secret"])
    }
}
