import Foundation
import RelayCore
import RelayProtocol
import Testing

@testable import RelayAgent

@Suite struct AgentConfigTests {
    static let nameRule = "1 to 64 characters of A-Z a-z 0-9 . _ -"

    /// The minimal agent config of SYSTEM.md.
    static let minimal = """
        {
          "relay": "relay.example.net:7835",
          "id": "office",
          "secret": "correct horse battery staple",
          "control": "/run/relay/agent.sock",
          "services": [ { "name": "web", "target": "127.0.0.1:80" } ]
        }
        """

    static func check(_ json: String, files: [String: String] = [:]) throws -> (dir: TempDir, problems: [String]) {
        let dir = try TempDir()
        for (name, contents) in files { try dir.write(name, contents) }
        let path = try dir.write("agent.json", json)
        return (dir, problems { () throws(ConfigError) in try AgentConfig.load(path: path) })
    }

    @Test func minimalConfigLoadsWithDefaults() throws {
        let dir = try TempDir()
        let config = try AgentConfig.load(path: try dir.write("agent.json", Self.minimal))
        #expect(config.relay == HostPort(host: "relay.example.net", port: 7835))
        #expect(config.id == "office")
        #expect(config.secret == Secret("correct horse battery staple"))
        #expect(config.control == "/run/relay/agent.sock")
        #expect(config.services.map(\.name) == ["web"])
        #expect(config.services.first?.target == HostPort(host: "127.0.0.1", port: 80))
        #expect(config.heartbeatInterval == 10)
        #expect(config.heartbeatTimeout == 30)
        #expect(config.connectTimeout == 10)
        #expect(config.reconnectInitialDelay == 0.5)
        #expect(config.reconnectMaxDelay == 30)
        #expect(config.drainTimeout == 30)
        #expect(config.service(named: "web")?.target.port == 80)
        #expect(config.service(named: "ssh") == nil)
    }

    @Test func secretFileRelativeToTheConfigAndDefaultControl() throws {
        let dir = try TempDir()
        try dir.write("office.secret", "\n  s3cret-s3cret-s3cret  \n")
        let json = """
            {"relay": "[2001:db8::1]:7835", "id": "office", "secretFile": "office.secret", "services": [],
             "heartbeatIntervalSeconds": 1, "heartbeatTimeoutSeconds": 3, "connectTimeoutSeconds": 2,
             "reconnectInitialDelaySeconds": 0.1, "reconnectMaxDelaySeconds": 0.1, "drainTimeoutSeconds": 5}
            """
        let config = try AgentConfig.load(path: try dir.write("agent.json", json))
        #expect(config.secret == Secret("s3cret-s3cret-s3cret"))
        #expect(config.control == "/run/relay/agent.sock")
        #expect(config.relay.description == "[2001:db8::1]:7835")
        #expect(config.services.isEmpty)
        #expect(
            [
                config.heartbeatInterval, config.heartbeatTimeout, config.connectTimeout, config.reconnectInitialDelay,
                config.reconnectMaxDelay, config.drainTimeout,
            ] == [1, 3, 2, 0.1, 0.1, 5])
    }

    @Test func missingRequiredKeys() throws {
        #expect(
            try Self.check("{}").problems == [
                "$.relay: required key is missing (give 'relay' or 'relays')",
                "$.id: required key is missing",
                "$.secret: required key is missing (give 'secret', 'secretFile' or 'secretCredential')",
                "$.services: required key is missing",
            ])
    }

    @Test func everyProblemAtOnce() throws {
        let json = """
            {"relay": "relay.example.net", "id": "bad id", "secret": "s-0123456789abcdef", "secretFile": "x", "control": "", "colour": 1,
             "services": [
               {"name": "web", "target": "127.0.0.1:80"},
               {"name": "web", "target": "127.0.0.1:81"},
               {"name": "ssh", "target": "127.0.0.1:0", "port": 2},
               {"name": "", "target": "[::1]"},
               []
             ],
             "heartbeatIntervalSeconds": 5, "heartbeatTimeoutSeconds": 5, "connectTimeoutSeconds": 0,
             "reconnectInitialDelaySeconds": 10, "reconnectMaxDelaySeconds": 5}
            """
        #expect(
            try Self.check(json).problems == [
                "$.colour: unknown key (allowed: connectTimeoutSeconds, control, dataPlane, dataUserTimeoutSeconds, drainTimeoutSeconds, "
                    + "halfCloseTimeoutSeconds, heartbeatIntervalSeconds, heartbeatTimeoutSeconds, id, maxSessions, metrics, "
                    + "reconnectInitialDelaySeconds, reconnectMaxDelaySeconds, relay, relays, removedServiceSessions, secret, "
                    + "secretCredential, secretFile, services, sessionIdleTimeoutSeconds, tcpKeepaliveSeconds, tcpUserTimeoutSeconds, tls)",
                "$.relay: bad address 'relay.example.net': expected HOST:PORT",
                "$.id: 'bad id' is not a valid name: use \(Self.nameRule)",
                "$.secretFile: give only one of 'secret', 'secretFile' and 'secretCredential', not secret and secretFile",
                "$.control: must not be empty",
                "$.services[4]: must be an object, not an array",
                "$.services[1].name: duplicate service name 'web' (first at $.services[0])",
                "$.services[2].port: unknown key (allowed: name, proxyProtocol, target)",
                "$.services[2].target: bad address '127.0.0.1:0': the port must be a number from 1 to 65535",
                "$.services[3].name: '' is not a valid name: use \(Self.nameRule)",
                "$.services[3].target: bad address '[::1]': expected ':PORT' after ']'",
                "$.heartbeatTimeoutSeconds: must be longer than heartbeatIntervalSeconds (5.0)",
                "$.connectTimeoutSeconds: must be between 0.05 and 600 seconds",
                "$.reconnectMaxDelaySeconds: must not be shorter than reconnectInitialDelaySeconds (10.0)",
            ])
    }

    @Test func relayPortZeroIsRefused() throws {
        let json = #"{"relay": "relay.example.net:0", "id": "office", "secret": "s-0123456789abcdef", "services": []}"#
        #expect(
            try Self.check(json).problems == [
                "$.relay: bad address 'relay.example.net:0': the port must be a number from 1 to 65535"
            ])
    }

    @Test func secretFileMissingEmptyOrInline() throws {
        let missing = #"{"relay": "r:1", "id": "office", "secretFile": "gone.secret", "services": []}"#
        let (dir, found) = try Self.check(missing)
        #expect(found == ["$.secretFile: cannot read '\(dir.file("gone.secret"))': no such file or directory"])

        let empty = #"{"relay": "r:1", "id": "office", "secretFile": "e.secret", "services": []}"#
        let (dir2, found2) = try Self.check(empty, files: ["e.secret": ""])
        #expect(found2 == ["$.secretFile: '\(dir2.file("e.secret"))' is empty"])

        let inline = #"{"relay": "r:1", "id": "office", "secret": "", "services": []}"#
        #expect(try Self.check(inline).problems == ["$.secret: the secret is empty"])
    }

    @Test func wrongTypes() throws {
        let json = """
            {"relay": ["r:1"], "id": 1, "secret": true, "control": 5, "services": {},
             "heartbeatIntervalSeconds": null, "drainTimeoutSeconds": "30"}
            """
        #expect(
            try Self.check(json).problems == [
                "$.relay: must be a string, not an array",
                "$.id: must be a string, not a number",
                "$.secret: must be a string, not a boolean",
                "$.control: must be a string, not a number",
                "$.services: must be an array, not an object",
                "$.heartbeatIntervalSeconds: must be a number of seconds, not null",
                "$.drainTimeoutSeconds: must be a number of seconds, not a string",
            ])
    }

    @Test func tooManyServices() throws {
        let services = (0...1024).map { #"{"name": "s\#($0)", "target": "127.0.0.1:\#($0 + 1)"}"# }
        let json =
            #"{"relay": "r:1", "id": "office", "secret": "s-0123456789abcdef", "services": [\#(services.joined(separator: ","))]}"#
        #expect(try Self.check(json).problems == ["$.services: at most 1024 services"])
    }

    @Test func notJSONNotAnObjectUnreadable() throws {
        let (_, notJSON) = try Self.check("{\"relay\": ")
        #expect(notJSON.count == 1)
        #expect(notJSON.first?.hasPrefix("$: not valid JSON: ") == true)
        #expect(try Self.check(#""agent""#).problems == ["$: must be a JSON object"])
        let dir = try TempDir()
        #expect(
            problems { () throws(ConfigError) in try AgentConfig.load(path: dir.path) } == [
                "$: cannot read the file: is a directory"
            ])
    }
}
