import Foundation
import RelayCore
import Testing

@testable import RelayAgent
@testable import RelayProxy

/// `agents` of a proxy service and `relays` of an agent (docs/high-availability.md).
@Suite struct HighAvailabilityConfigTests {
    static func proxy(services: String) -> String {
        """
        {"listen": "0.0.0.0:7835",
         "agents": [{"id": "a", "secret": "s-0123456789abcdef"}, {"id": "b", "secret": "s-0123456789abcdef"}],
         "services": [\(services)]}
        """
    }

    static func agent(_ relayKeys: String) -> String {
        """
        {\(relayKeys), "id": "office", "secret": "s-0123456789abcdef", "services": []}
        """
    }

    @Test func aServiceMayNameSeveralAgents() throws {
        let dir = try TempDir()
        let json = Self.proxy(
            services:
                #"{"name": "web", "agents": ["b", "a"], "listen": "0.0.0.0:80"}, {"name": "ssh", "agent": "a", "listen": "0.0.0.0:22"}"#
        )
        let config = try ProxyConfig.load(path: try dir.write("proxy.json", json))
        #expect(config.service(named: "web")?.agents == ["b", "a"])
        #expect(config.service(named: "web")?.agent == "b")
        #expect(config.service(named: "ssh")?.agents == ["a"])
        #expect(config.credentials(for: "a")?.services == ["web", "ssh"])
        #expect(config.credentials(for: "b")?.services == ["web"])
    }

    @Test func badAgentLists() throws {
        let services = """
            {"name": "both", "agent": "a", "agents": ["a", "b"], "listen": "0.0.0.0:1"},
            {"name": "neither", "listen": "0.0.0.0:2"},
            {"name": "ghost", "agents": ["a", "ghost"], "listen": "0.0.0.0:3"},
            {"name": "twice", "agents": ["a", "b", "a"], "listen": "0.0.0.0:4"},
            {"name": "empty", "agents": [], "listen": "0.0.0.0:5"},
            {"name": "notalist", "agents": "a", "listen": "0.0.0.0:6"},
            {"name": "badname", "agents": ["a", 7, "b c"], "listen": "0.0.0.0:7"}
            """
        #expect(
            try ProxyConfigTests.check(Self.proxy(services: services)).problems == [
                "$.services[0].agents: give only one of 'agent' and 'agents', not both",
                "$.services[1].agent: required key is missing (give 'agent' or 'agents')",
                "$.services[2].agents[1]: unknown agent 'ghost' (not in $.agents)",
                "$.services[3].agents[2]: duplicate entry 'a' (first at $.services[3].agents[0])",
                "$.services[4].agents: must name at least one",
                "$.services[5].agents: must be an array of strings, not a string",
                "$.services[6].agents[1]: must be a string, not a number",
                "$.services[6].agents[2]: 'b c' is not a valid name: use \(ProxyConfigTests.nameRule)",
            ])
        let many = (0...ProxyConfig.maxAgentsPerService).map { _ in #""a""# }.joined(separator: ",")
        #expect(
            try ProxyConfigTests.check(
                Self.proxy(services: #"{"name": "w", "agents": [\#(many)], "listen": "0.0.0.0:1"}"#)
            )
            .problems == ["$.services[0].agents: at most 16 entries, not 17"])
    }

    @Test func anAgentMayNameSeveralRelays() throws {
        let dir = try TempDir()
        let json = Self.agent(#""relays": ["r1.example.net:7835", "[2001:db8::1]:7835"], "tls": {}"#)
        let config = try AgentConfig.load(path: try dir.write("agent.json", json))
        #expect(config.relays.map(\.description) == ["r1.example.net:7835", "[2001:db8::1]:7835"])
        #expect(config.relay.description == "r1.example.net:7835")
        // Each relay's certificate must carry its own host, unless serverName says otherwise.
        #expect(config.tls(for: config.relays[0])?.serverName == "r1.example.net")
        #expect(config.tls(for: config.relays[1])?.serverName == "2001:db8::1")
        let named = Self.agent(#""relays": ["r1:7835", "r2:7835"], "tls": {"serverName": "relay.example.net"}"#)
        let both = try AgentConfig.load(path: try dir.write("named.json", named))
        #expect(both.relays.map { both.tls(for: $0)?.serverName } == ["relay.example.net", "relay.example.net"])
    }

    @Test func badRelayLists() throws {
        let cases: [(String, String)] = [
            (#""relay": "r:1", "relays": ["r:2"]"#, "$.relays: give only one of 'relay' and 'relays', not both"),
            (#""relays": []"#, "$.relays: must name at least one"),
            (#""relays": ["r:1", "s:2", "r:1"]"#, "$.relays[2]: duplicate entry 'r:1' (first at $.relays[0])"),
            (#""relays": ["r:0"]"#, "$.relays[0]: bad address 'r:0': the port must be a number from 1 to 65535"),
            (#""relays": "r:1""#, "$.relays: must be an array of strings, not a string"),
        ]
        for (keys, problem) in cases {
            #expect(try AgentConfigTests.check(Self.agent(keys)).problems == [problem])
        }
        #expect(
            try AgentConfigTests.check(#"{"id": "office", "secret": "s-0123456789abcdef", "services": []}"#).problems
                == ["$.relay: required key is missing (give 'relay' or 'relays')"])
        let many = (0...AgentConfig.maxRelays).map { #""r\#($0):1""# }.joined(separator: ",")
        #expect(
            try AgentConfigTests.check(Self.agent(#""relays": [\#(many)]"#)).problems == [
                "$.relays: at most 16 entries, not 17"
            ])
    }
}
