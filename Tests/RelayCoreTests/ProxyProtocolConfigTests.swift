import Foundation
import RelayCore
import RelayProtocol
import Testing

@testable import RelayAgent
@testable import RelayProxy

/// `proxyProtocol` (agent, per service) and `acceptProxyProtocol` (proxy, per service).
@Suite struct ProxyProtocolConfigTests {
    static func agent(_ service: String) -> String {
        #"{"relay": "r:1", "id": "office", "secret": "s-0123456789abcdef", "services": [\#(service)]}"#
    }

    static func proxy(_ extra: String) -> String {
        #"""
        {"listen": "127.0.0.1:7835", "agents": [{"id": "office", "secret": "s-0123456789abcdef"}],
         "services": [{"name": "web", "agent": "office", "listen": "127.0.0.1:8080"\#(extra)}]}
        """#
    }

    @Test func agentReadsV1V2AndAbsent() throws {
        let json = Self.agent(
            #"""
            {"name": "a", "target": "127.0.0.1:1", "proxyProtocol": "v1"},
            {"name": "b", "target": "127.0.0.1:2", "proxyProtocol": "v2"},
            {"name": "c", "target": "127.0.0.1:3"}
            """#)
        let dir = try TempDir()
        let config = try AgentConfig.load(path: try dir.write("agent.json", json))
        #expect(config.services.map(\.proxyProtocol) == [.v1, .v2, nil])
    }

    @Test func agentRefusesOtherValues() throws {
        let json = Self.agent(
            #"""
            {"name": "a", "target": "127.0.0.1:1", "proxyProtocol": "v3"},
            {"name": "b", "target": "127.0.0.1:2", "proxyProtocol": 2},
            {"name": "c", "target": "127.0.0.1:3", "proxyProtocol": "V1"},
            {"name": "d", "target": "127.0.0.1:4", "proxyProtocol": null}
            """#)
        let dir = try TempDir()
        let path = try dir.write("agent.json", json)
        #expect(
            problems { () throws(ConfigError) in try AgentConfig.load(path: path) } == [
                #"$.services[0].proxyProtocol: must be "v1" or "v2", not "v3""#,
                "$.services[1].proxyProtocol: must be a string, not a number",
                #"$.services[2].proxyProtocol: must be "v1" or "v2", not "V1""#,
                "$.services[3].proxyProtocol: must be a string, not null",
            ])
    }

    @Test func proxyReadsCIDRs() throws {
        let dir = try TempDir()
        let config = try ProxyConfig.load(
            path: try dir.write(
                "proxy.json", Self.proxy(#", "acceptProxyProtocol": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]"#)))
        #expect(
            config.services.first?.acceptProxyProtocol.map(\.description) == [
                "10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32",
            ])
        let none = try ProxyConfig.load(path: try dir.write("none.json", Self.proxy("")))
        #expect(none.services.first?.acceptProxyProtocol == [])
    }

    @Test func proxyRefusesBadLists() throws {
        let dir = try TempDir()
        let bad = try dir.write("bad.json", Self.proxy(#", "acceptProxyProtocol": ["10.0.0.1/8", 7, "nonsense"]"#))
        #expect(
            problems { () throws(ConfigError) in try ProxyConfig.load(path: bad) } == [
                "$.services[0].acceptProxyProtocol[0]: '10.0.0.1/8' has host bits set beyond /8 (did you mean 10.0.0.0/8?)",
                "$.services[0].acceptProxyProtocol[1]: must be a CIDR string, not a number",
                "$.services[0].acceptProxyProtocol[2]: 'nonsense' is not an IPv4 or IPv6 address or CIDR block",
            ])
        let notList = try dir.write("notlist.json", Self.proxy(#", "acceptProxyProtocol": "10.0.0.0/8""#))
        #expect(
            problems { () throws(ConfigError) in try ProxyConfig.load(path: notList) } == [
                "$.services[0].acceptProxyProtocol: must be an array of CIDR strings, not a string"
            ])
    }

    @Test func reloadsNameTheChange() throws {
        let dir = try TempDir()
        let before = try ProxyConfig.load(path: try dir.write("a.json", Self.proxy("")))
        let after = try ProxyConfig.load(
            path: try dir.write("b.json", Self.proxy(#", "acceptProxyProtocol": ["127.0.0.0/8"]"#)))
        #expect(
            after.acceptProxyProtocolChanges(from: before) == [
                "service 'web' acceptProxyProtocol now [127.0.0.0/8] (new clients)"
            ])
        #expect(after.acceptProxyProtocolChanges(from: after).isEmpty)
        let plain = try AgentConfig.load(
            path: try dir.write("c.json", Self.agent(#"{"name": "a", "target": "127.0.0.1:1"}"#)))
        let v2 = try AgentConfig.load(
            path: try dir.write("d.json", Self.agent(#"{"name": "a", "target": "127.0.0.1:1", "proxyProtocol": "v2"}"#))
        )
        #expect(v2.proxyProtocolChanges(from: plain) == ["service 'a' proxyProtocol now v2 (new sessions)"])
        #expect(plain.proxyProtocolChanges(from: v2) == ["service 'a' proxyProtocol now none (new sessions)"])
    }
}
