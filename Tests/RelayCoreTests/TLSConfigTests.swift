import Crypto
import Foundation
import NIOSSL
import SwiftASN1
import Testing
import X509

@testable import RelayAgent
@testable import RelayCore
@testable import RelayProxy

/// The `tls` objects of both configs: every key, every problem in one clear line at its
/// JSON path (unreadable file, not PEM, key not matching, bad pin, half a client
/// certificate), and the pin of a certificate's public key.
@Suite struct TLSConfigTests {
    /// A self-signed EC P-256 certificate and its key, as PEM, with the pin computed here
    /// (independently of the code under test) from the key's DER SubjectPublicKeyInfo.
    struct Made {
        let certificate: String
        let key: String
        let pin: String
    }

    static func make(_ name: String = "relay") throws -> Made {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName { CommonName(name) }
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey), notValidBefore: Date() - 60,
            notValidAfter: Date() + 3600, issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions { SubjectAlternativeNames([.dnsName(name)]) },
            issuerPrivateKey: .init(key))
        let pin = "sha256//" + Data(SHA256.hash(data: key.publicKey.derRepresentation)).base64EncodedString()
        return Made(certificate: try certificate.serializeAsPEM().pemString, key: key.pemRepresentation, pin: pin)
    }

    static let proxyBase = """
        "listen": "127.0.0.1:7835", "agents": [{"id": "office", "secret": "correct horse battery staple"}],
        "services": [{"name": "web", "agent": "office", "listen": "127.0.0.1:8080"}]
        """

    static let agentBase = """
        "relay": "relay.example.net:7835", "id": "office", "secret": "correct horse battery staple",
        "services": [{"name": "web", "target": "127.0.0.1:80"}]
        """

    static func proxy(_ tls: String, files: [String: String]) throws -> (TempDir, Result<ProxyConfig, ConfigError>) {
        let dir = try TempDir()
        for (name, contents) in files { try dir.write(name, contents) }
        let path = try dir.write("proxy.json", "{\(Self.proxyBase), \"tls\": \(tls)}")
        return (dir, Result { () throws(ConfigError) in try ProxyConfig.load(path: path) })
    }

    static func agent(_ tls: String, files: [String: String]) throws -> (TempDir, Result<AgentConfig, ConfigError>) {
        let dir = try TempDir()
        for (name, contents) in files { try dir.write(name, contents) }
        let path = try dir.write("agent.json", "{\(Self.agentBase), \"tls\": \(tls)}")
        return (dir, Result { () throws(ConfigError) in try AgentConfig.load(path: path) })
    }

    static func problems<T>(_ result: Result<T, ConfigError>) -> [String] {
        guard case .failure(let error) = result else { return [] }
        return error.problems.map(\.description)
    }

    @Test func pinIsTheSHA256OfTheSubjectPublicKeyInfo() throws {
        let made = try Self.make()
        let certificate = try NIOSSLCertificate(bytes: Array(made.certificate.utf8), format: .pem)
        #expect(try TLSPin.pin(of: certificate) == made.pin)
        #expect(made.pin.hasPrefix("sha256//") && made.pin.count == 8 + 44)
        // A known vector: the SHA-256 of nothing.
        #expect(TLSPin.pin(subjectPublicKeyInfo: []) == "sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")
    }

    @Test func pinSyntax() {
        #expect(TLSPin.problem("sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=") == nil)
        #expect(
            TLSPin.problem("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")?.contains("must start with 'sha256//'")
                == true)
        #expect(TLSPin.problem("sha256//abc")?.contains("32 bytes") == true)
        #expect(TLSPin.problem("sha256//not base64!")?.contains("32 bytes") == true)
    }

    @Test func proxyTLSLoadsWithRelativePathsAndMutualTLS() throws {
        let relay = try Self.make()
        let agents = try Self.make("agents CA")
        let (_, result) = try Self.proxy(
            #"{"certificate": "relay.crt", "key": "relay.key", "clientCA": "agents.pem"}"#,
            files: ["relay.crt": relay.certificate, "relay.key": relay.key, "agents.pem": agents.certificate])
        let config = try result.get()
        let tls = try #require(config.tls)
        #expect(tls.pin == relay.pin)
        #expect(tls.mutual)
        #expect(tls.certificatePath.hasSuffix("/relay.crt") && tls.certificatePath.hasPrefix("/"))
        #expect(tls.summary.contains("mutual TLS"))
        // Without tls: plaintext.
        let dir = try TempDir()
        let plain = try ProxyConfig.load(path: try dir.write("proxy.json", "{\(Self.proxyBase)}"))
        #expect(plain.tls == nil)
    }

    @Test func proxyTLSProblems() throws {
        let relay = try Self.make()
        let other = try Self.make("other")
        let files = ["relay.crt": relay.certificate, "relay.key": relay.key, "other.key": other.key, "junk": "hello"]
        let cases: [(String, String)] = [
            (#"{"key": "relay.key"}"#, "$.tls.certificate: required key is missing"),
            (#"{"certificate": "relay.crt"}"#, "$.tls.key: required key is missing"),
            (#"{"certificate": "absent.crt", "key": "relay.key"}"#, "$.tls.certificate: cannot read '"),
            (#"{"certificate": "junk", "key": "relay.key"}"#, "$.tls.certificate: '"),
            (#"{"certificate": "relay.crt", "key": "junk"}"#, "holds no PEM private key"),
            (#"{"certificate": "relay.crt", "key": "other.key"}"#, "$.tls.key: '"),
            (#"{"certificate": "relay.crt", "key": "relay.key", "clientCA": "junk"}"#, "$.tls.clientCA: '"),
            (#"{"certificate": "relay.crt", "key": "relay.key", "pin": "x"}"#, "$.tls.pin: unknown key"),
            (#""yes""#, "$.tls: must be an object"),
        ]
        for (tls, expected) in cases {
            let (_, result) = try Self.proxy(tls, files: files)
            let problems = Self.problems(result)
            #expect(problems.count == 1 && problems[0].contains(expected), "\(tls): \(problems)")
        }
        let (_, mismatch) = try Self.proxy(#"{"certificate": "relay.crt", "key": "other.key"}"#, files: files)
        #expect(Self.problems(mismatch).first?.contains("does not match the certificate") == true)
        let (_, junk) = try Self.proxy(#"{"certificate": "junk", "key": "relay.key"}"#, files: files)
        #expect(Self.problems(junk).first?.contains("holds no PEM certificate") == true)
    }

    @Test func agentTLSKeys() throws {
        let relay = try Self.make()
        let client = try Self.make("office")
        let files = ["ca.pem": relay.certificate, "office.crt": client.certificate, "office.key": client.key]
        let (_, empty) = try Self.agent("{}", files: files)
        let system = try #require(try empty.get().tls)
        #expect(system.serverName == "relay.example.net")
        #expect(system.trust == "the system trust store")
        #expect(system.verifiesChain && system.pin == nil)

        let (_, full) = try Self.agent(
            #"{"ca": "ca.pem", "serverName": "relay.test", "pin": "\#(relay.pin)", "certificate": "office.crt", "key": "office.key"}"#,
            files: files)
        let tls = try #require(try full.get().tls)
        #expect(tls.serverName == "relay.test")
        #expect(tls.pin == relay.pin)
        #expect(tls.verifiesChain)
        #expect(tls.trust.hasPrefix("the CA in /"))

        let (_, pinned) = try Self.agent(#"{"pin": "\#(relay.pin)"}"#, files: files)
        let pinOnly = try #require(try pinned.get().tls)
        #expect(!pinOnly.verifiesChain)
        #expect(pinOnly.trust == "its pin only")
    }

    @Test func agentTLSProblems() throws {
        let relay = try Self.make()
        let client = try Self.make("office")
        let other = try Self.make("other")
        let files = [
            "ca.pem": relay.certificate, "office.crt": client.certificate, "office.key": client.key,
            "other.key": other.key, "junk": "hello",
        ]
        let cases: [(String, String)] = [
            (#"{"pin": "sha1//abc"}"#, "$.tls.pin: must start with 'sha256//'"),
            (#"{"pin": "sha256//abc"}"#, "$.tls.pin: must be 'sha256//' and the base64 of a SHA-256 digest"),
            (#"{"ca": "missing.pem"}"#, "$.tls.ca: cannot read '"),
            (#"{"ca": "junk"}"#, "holds no PEM certificate"),
            (#"{"certificate": "office.crt"}"#, "$.tls.key: required with 'certificate'"),
            (#"{"key": "office.key"}"#, "$.tls.certificate: required with 'key'"),
            (#"{"certificate": "office.crt", "key": "other.key"}"#, "does not match the certificate"),
            (#"{"serverName": ""}"#, "$.tls.serverName: must not be empty"),
            (#"{"clientCA": "ca.pem"}"#, "$.tls.clientCA: unknown key"),
        ]
        for (tls, expected) in cases {
            let (_, result) = try Self.agent(tls, files: files)
            let problems = Self.problems(result)
            #expect(problems.count == 1 && problems[0].contains(expected), "\(tls): \(problems)")
        }
    }

    @Test func theClientCertificateNamesTheAgentByCommonNameOrDNSName() throws {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName { CommonName("office-host") }
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey), notValidBefore: Date() - 60,
            notValidAfter: Date() + 3600, issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions { SubjectAlternativeNames([.dnsName("office"), .dnsName("lab")]) },
            issuerPrivateKey: .init(key))
        let pem = try certificate.serializeAsPEM().pemString
        let loaded = try NIOSSLCertificate(bytes: Array(pem.utf8), format: .pem)
        #expect(ProxyTLS.names(of: loaded) == ["office-host", "office", "lab"])
        #expect(ProxyTLS.certificate(loaded, names: "office"))
        #expect(ProxyTLS.certificate(loaded, names: "office-host"))
        #expect(!ProxyTLS.certificate(loaded, names: "branch"))
        #expect(!ProxyTLS.certificate(loaded, names: "offic"))
    }

    @Test func theRelayMustCarryTheNameItIsDialledBy() {
        let names = ["relay.example.net", "*.relays.example.net", "192.0.2.7", "2001:db8:0:0:0:0:0:1"]
        #expect(RelayName.matches("relay.example.net", names))
        #expect(RelayName.matches("RELAY.example.net.", names))
        #expect(RelayName.matches("eu.relays.example.net", names))
        #expect(!RelayName.matches("a.eu.relays.example.net", names))
        #expect(!RelayName.matches("relays.example.net", names))
        #expect(!RelayName.matches("example.net", names))
        #expect(RelayName.matches("192.0.2.7", names))
        #expect(RelayName.matches("2001:db8::1", names))
        #expect(!RelayName.matches("192.0.2.8", names))
        // An address does not stand for a name, nor a name for an address.
        #expect(!RelayName.matches("relay.example.net", ["192.0.2.7"]))
        #expect(!RelayName.matches("192.0.2.7", ["relay.example.net"]))
    }
}
