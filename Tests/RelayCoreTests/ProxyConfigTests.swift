import Foundation
import RelayCore
import RelayProtocol
import Testing

@testable import RelayProxy

@Suite struct ProxyConfigTests {
    static let nameRule = "1 to 64 characters of A-Z a-z 0-9 . _ -"

    /// The minimal proxy config of SYSTEM.md.
    static let minimal = """
        {
          "listen": "0.0.0.0:7835",
          "control": "/run/relay/proxy.sock",
          "agents": [ { "id": "office", "secret": "correct horse battery staple" } ],
          "services": [ { "name": "web", "agent": "office", "listen": "0.0.0.0:8080" } ]
        }
        """

    /// Problems found loading `json` as proxy.json in a fresh directory holding `files`.
    static func check(_ json: String, files: [String: String] = [:]) throws -> (dir: TempDir, problems: [String]) {
        let dir = try TempDir()
        for (name, contents) in files { try dir.write(name, contents) }
        let path = try dir.write("proxy.json", json)
        return (dir, problems { () throws(ConfigError) in try ProxyConfig.load(path: path) })
    }

    @Test func minimalConfigLoadsWithDefaults() throws {
        let dir = try TempDir()
        let config = try ProxyConfig.load(path: try dir.write("proxy.json", Self.minimal))
        #expect(config.listen == HostPort(host: "0.0.0.0", port: 7835))
        #expect(config.control == "/run/relay/proxy.sock")
        #expect(config.agents.map(\.id) == ["office"])
        #expect(config.agents.first?.secret == Secret("correct horse battery staple"))
        #expect(config.services.map(\.name) == ["web"])
        #expect(config.services.first?.agent == "office")
        #expect(config.services.first?.listen == HostPort(host: "0.0.0.0", port: 8080))
        #expect(config.heartbeatInterval == 10)
        #expect(config.heartbeatTimeout == 30)
        #expect(config.handshakeTimeout == 10)
        #expect(config.attachTimeout == 10)
        #expect(config.drainTimeout == 30)
        #expect(config.credentials(for: "office")?.services == ["web"])
        #expect(config.credentials(for: "office")?.secret == Secret("correct horse battery staple"))
        #expect(config.credentials(for: "ghost") == nil)
        #expect(config.service(named: "web")?.agent == "office")
        #expect(config.service(named: "ssh") == nil)
    }

    @Test func everyOptionalKey() throws {
        let dir = try TempDir()
        try dir.write("office.secret", "from a file, sixteen bytes\n")
        let json = """
            {"listen": "[::]:7835", "agents": [{"id": "office", "secretFile": "office.secret"}, {"id": "lab", "secret": "x-0123456789abcdef"}],
             "services": [{"name": "web", "agent": "office", "listen": "0.0.0.0:0"},
                          {"name": "ssh", "agent": "office", "listen": "0.0.0.0:0"},
                          {"name": "db", "agent": "lab", "listen": "127.0.0.1:5432"}],
             "heartbeatIntervalSeconds": 2, "heartbeatTimeoutSeconds": 5, "handshakeTimeoutSeconds": 3,
             "attachTimeoutSeconds": 4, "drainTimeoutSeconds": 0}
            """
        let config = try ProxyConfig.load(path: try dir.write("proxy.json", json))
        #expect(config.control == "/run/relay/proxy.sock")
        #expect(config.agents.first?.secret == Secret("from a file, sixteen bytes"))
        #expect(config.credentials(for: "office")?.services == ["web", "ssh"])
        #expect(config.credentials(for: "lab")?.services == ["db"])
        #expect(
            [
                config.heartbeatInterval, config.heartbeatTimeout, config.handshakeTimeout, config.attachTimeout,
                config.drainTimeout,
            ] == [2, 5, 3, 4, 0])
    }

    @Test func missingRequiredKeys() throws {
        #expect(
            try Self.check("{}").problems == [
                "$.listen: required key is missing",
                "$.agents: required key is missing",
                "$.services: required key is missing",
            ])
    }

    @Test func unknownKeysAtEveryLevel() throws {
        let json = """
            {"listen": "0.0.0.0:7835", "lisen": "x",
             "agents": [{"id": "office", "secret": "s-0123456789abcdef", "secert": "t"}],
             "services": [{"name": "web", "agent": "office", "listen": "0.0.0.0:8080", "target": "x"}]}
            """
        #expect(
            try Self.check(json).problems == [
                "$.lisen: unknown key (allowed: agents, attachTimeoutSeconds, control, dataPlane, dataUserTimeoutSeconds, drainTimeoutSeconds, "
                    + "halfCloseTimeoutSeconds, handshakeTimeoutSeconds, heartbeatIntervalSeconds, heartbeatTimeoutSeconds, "
                    + "listen, maxFailedProofsPerAgent, maxFailedProofsPerSource, maxPendingSessionsPerService, "
                    + "maxSessionsPerAgent, maxSessionsPerService, maxUnauthenticatedConnections, "
                    + "maxUnauthenticatedConnectionsPerSource, metrics, removedServiceSessions, secretRotationGraceSeconds, "
                    + "services, sessionIdleTimeoutSeconds, tcpKeepaliveSeconds, tcpUserTimeoutSeconds, tls)",
                "$.agents[0].secert: unknown key (allowed: id, secret, secretCredential, secretFile)",
                "$.services[0].target: unknown key (allowed: acceptProxyProtocol, agent, agents, allow, deny, listen, name)",
            ])
    }

    @Test func reliabilityKeysAreReadAndChecked() throws {
        let dir = try TempDir()
        let config = try ProxyConfig.load(
            path: try dir.write(
                "good.json",
                """
                {"listen": "0.0.0.0:7835", "agents": [], "services": [],
                 "tcpKeepaliveSeconds": 5, "tcpUserTimeoutSeconds": 0, "halfCloseTimeoutSeconds": 2.5,
                 "removedServiceSessions": "close", "secretRotationGraceSeconds": 0}
                """))
        #expect(config.tcp == TCPTuning(keepalive: 5, userTimeout: 0))
        #expect(config.halfCloseTimeout == 2.5 && config.pumpLimits.halfCloseTimeout == .milliseconds(2500))
        #expect(config.removedServiceSessions == .close && config.secretRotationGrace == 0)
        let defaults = try ProxyConfig.load(
            path: try dir.write("defaults.json", #"{"listen": "0.0.0.0:7835", "agents": [], "services": []}"#))
        #expect(defaults.tcp == TCPTuning(keepalive: 30, userTimeout: 60) && defaults.removedServiceSessions == .drain)
        #expect(defaults.secretRotationGrace == 300 && defaults.halfCloseTimeout == 120)
        #expect(defaults.tcp.deadIdlePeerBound == 60)
        let bad = try Self.check(
            """
            {"listen": "0.0.0.0:7835", "agents": [], "services": [],
             "tcpKeepaliveSeconds": -1, "tcpUserTimeoutSeconds": "60", "halfCloseTimeoutSeconds": 1e9,
             "removedServiceSessions": "kill", "secretRotationGraceSeconds": 700000}
            """)
        #expect(
            bad.problems == [
                "$.tcpKeepaliveSeconds: must be between 0 and 7200 seconds",
                "$.tcpUserTimeoutSeconds: must be a number of seconds, not a string",
                "$.removedServiceSessions: must be \"drain\" or \"close\", not \"kill\"",
                "$.secretRotationGraceSeconds: must be between 0 and 604800 seconds",
                "$.halfCloseTimeoutSeconds: must be between 0 and 86400 seconds",
            ])
    }

    @Test func agentProblemsAreAllReported() throws {
        let json = """
            {"listen": "0.0.0.0:7835",
             "agents": [
               {"id": "office", "secret": "s-0123456789abcdef"},
               {"id": "office", "secret": "t-0123456789abcdef"},
               {"id": "lab", "secret": ""},
               {"id": "both", "secret": "x-0123456789abcdef", "secretFile": "both.secret"},
               {"id": "nofile", "secretFile": "missing.secret"},
               {"id": "empty", "secretFile": "empty.secret"},
               {"id": "nosecret"},
               {"id": "bad id", "secret": "s-0123456789abcdef"},
               {"id": 7, "secret": "s-0123456789abcdef"},
               "office"
             ],
             "services": []}
            """
        let (dir, found) = try Self.check(json, files: ["both.secret": "b", "empty.secret": "\n"])
        #expect(
            found == [
                "$.agents[9]: must be an object, not a string",
                "$.agents[1].id: duplicate agent id 'office' (first at $.agents[0])",
                "$.agents[2].secret: the secret is empty",
                "$.agents[3].secretFile: give only one of 'secret', 'secretFile' and 'secretCredential', not secret and secretFile",
                "$.agents[4].secretFile: cannot read '\(dir.file("missing.secret"))': no such file or directory",
                "$.agents[5].secretFile: '\(dir.file("empty.secret"))' is empty",
                "$.agents[6].secret: required key is missing (give 'secret', 'secretFile' or 'secretCredential')",
                "$.agents[7].id: 'bad id' is not a valid name: use \(Self.nameRule)",
                "$.agents[8].id: must be a string, not a number",
            ])
    }

    @Test func serviceProblemsAreAllReported() throws {
        let json = """
            {"listen": "0.0.0.0:7835",
             "agents": [{"id": "office", "secret": "s-0123456789abcdef"}],
             "services": [
               {"name": "web", "agent": "office", "listen": "0.0.0.0:8080"},
               {"name": "web", "agent": "office", "listen": "0.0.0.0:8081"},
               {"name": "ssh", "agent": "ghost", "listen": "0.0.0.0:8080"},
               {"name": "db", "agent": "office", "listen": "0.0.0.0:7835"},
               {"name": "dns", "agent": "office", "listen": "[::1]:99999"},
               {"name": "ftp", "agent": "office", "listen": "::1:21"},
               {"name": "bad name", "agent": "office", "listen": "0.0.0.0:0"},
               {"name": "zero", "agent": "office", "listen": "0.0.0.0:0"},
               {"name": "nothing"}
             ]}
            """
        #expect(
            try Self.check(json).problems == [
                "$.services[1].name: duplicate service name 'web' (first at $.services[0])",
                "$.services[2].agent: unknown agent 'ghost' (not in $.agents)",
                "$.services[2].listen: address 0.0.0.0:8080 overlaps 0.0.0.0:8080 at $.services[0].listen",
                "$.services[3].listen: address 0.0.0.0:7835 overlaps 0.0.0.0:7835 at $.listen",
                "$.services[4].listen: bad address '[::1]:99999': the port must be a number from 0 to 65535",
                "$.services[5].listen: bad address '::1:21': write an IPv6 address in brackets, as [::1]:7835",
                "$.services[6].name: 'bad name' is not a valid name: use \(Self.nameRule)",
                "$.services[8].agent: required key is missing (give 'agent' or 'agents')",
                "$.services[8].listen: required key is missing",
            ])
    }

    @Test func wrongTypesAndRanges() throws {
        let json = """
            {"listen": 7835, "control": false, "agents": {}, "services": "web",
             "heartbeatIntervalSeconds": "10", "handshakeTimeoutSeconds": 601, "attachTimeoutSeconds": 0,
             "drainTimeoutSeconds": -1}
            """
        #expect(
            try Self.check(json).problems == [
                "$.listen: must be a string, not a number",
                "$.control: must be a string, not a boolean",
                "$.agents: must be an array, not an object",
                "$.services: must be an array, not a string",
                "$.heartbeatIntervalSeconds: must be a number of seconds, not a string",
                "$.handshakeTimeoutSeconds: must be between 0.05 and 600 seconds",
                "$.attachTimeoutSeconds: must be between 0.05 and 600 seconds",
                "$.drainTimeoutSeconds: must be between 0 and 86400 seconds",
            ])
    }

    @Test func badListenAndEmptyControl() throws {
        let json = #"{"listen": "0.0.0.0", "control": "", "agents": [], "services": []}"#
        #expect(
            try Self.check(json).problems == [
                "$.listen: bad address '0.0.0.0': expected HOST:PORT",
                "$.control: must not be empty",
            ])
    }

    @Test(arguments: [(30.0, 30.0), (30, 20), (10, 10)])
    func heartbeatTimeoutMustExceedTheInterval(_ interval: Double, _ timeout: Double) throws {
        let json = """
            {"listen": "0.0.0.0:7835", "agents": [], "services": [],
             "heartbeatIntervalSeconds": \(interval), "heartbeatTimeoutSeconds": \(timeout)}
            """
        #expect(
            try Self.check(json).problems == [
                "$.heartbeatTimeoutSeconds: must be longer than heartbeatIntervalSeconds (\(interval))"
            ])
    }

    @Test func defaultTimeoutBelowAConfiguredInterval() throws {
        let json = #"{"listen": "0.0.0.0:7835", "agents": [], "services": [], "heartbeatIntervalSeconds": 60}"#
        #expect(
            try Self.check(json).problems == [
                "$.heartbeatTimeoutSeconds: must be longer than heartbeatIntervalSeconds (60.0)"
            ])
    }

    @Test func notJSONNotAnObjectUnreadable() throws {
        let (_, notJSON) = try Self.check(#"{"listen": "0.0.0.0:7835",}}"#)
        #expect(notJSON.count == 1)
        #expect(notJSON.first?.hasPrefix("$: not valid JSON: ") == true)
        #expect(try Self.check("[]").problems == ["$: must be a JSON object"])
        let dir = try TempDir()
        #expect(
            problems { () throws(ConfigError) in try ProxyConfig.load(path: dir.file("none.json")) } == [
                "$: cannot read the file: no such file or directory"
            ])
    }

    @Test func serviceOfAnAgentWithABadSecretIsNotAlsoAnUnknownAgent() throws {
        let json = """
            {"listen": "0.0.0.0:7835", "agents": [{"id": "office", "secret": ""}],
             "services": [{"name": "web", "agent": "office", "listen": "0.0.0.0:8080"}]}
            """
        let found = try Self.check(json).problems
        #expect(found == ["$.agents[0].secret: the secret is empty"])
    }

    @Test func aWildcardListenerOverlapsASpecificOneOnTheSamePort() throws {
        let json = """
            {"listen": "127.0.0.1:7835", "agents": [{"id": "office", "secret": "s-0123456789abcdef"}],
             "services": [{"name": "a", "agent": "office", "listen": "0.0.0.0:8080"},
                          {"name": "b", "agent": "office", "listen": "127.0.0.1:8080"},
                          {"name": "c", "agent": "office", "listen": "127.0.0.2:8081"},
                          {"name": "d", "agent": "office", "listen": "127.0.0.3:8081"}]}
            """
        #expect(
            try Self.check(json).problems == [
                "$.services[1].listen: address 127.0.0.1:8080 overlaps 0.0.0.0:8080 at $.services[0].listen"
            ])
    }
}
