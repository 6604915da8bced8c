import NIOCore
import NIOSSL
import X509

/// The relay's side of TLS on the agent port (`tls` in relay-proxy.json): its certificate
/// and key, and with `clientCA` mutual TLS. Built once per config (one `NIOSSLContext` for
/// every connection); a reload builds a new one for the connections accepted after it.
public struct ProxyTLS: Sendable, TLSSide {
    /// The keys a proxy `tls` object may hold.
    public static let keys: Set<String> = ["certificate", "key", "clientCA"]

    /// The certificate file (PEM, the relay's certificate first, then its chain).
    public let certificatePath: String
    /// The private key file (PEM).
    public let keyPath: String
    /// The CA file (PEM) an agent's client certificate must chain to; nil: no mutual TLS.
    public let clientCAPath: String?
    /// The pin of the relay's public key (`relay-proxy --print-tls-pin`).
    public let pin: String
    /// The context every accepted connection's handshake runs with.
    let context: NIOSSLContext

    /// Whether agents must present a client certificate naming their agent id.
    public var mutual: Bool { self.clientCAPath != nil }

    /// What a reload or a start logs about it.
    public var summary: String {
        "TLS 1.3 with \(self.certificatePath) (pin \(self.pin))"
            + (self.clientCAPath.map { ", mutual TLS with agent certificates from \($0)" } ?? "")
    }

    /// A server handler with the shared context (on the channel's event loop).
    public func makeHandler(slot: TLSHandshakeSlot) -> any ChannelHandler {
        NIOSSLServerHandler(context: self.context)
    }

    public func explain(_ error: any Error, peer: String) -> String {
        "TLS handshake with \(peer) failed: " + Self.reason(error)
    }

    static func reason(_ error: any Error) -> String {
        if let reasons = TLSFailure.boringSSLReasons(error), reasons.contains("certificate_verify_failed") {
            return "the agent's client certificate is not signed by the clientCA (or expired)"
        }
        return TLSFailure.common(error)
    }

    /// Whether `certificate` names `agentID`: its subject CN or one of its DNS names.
    public static func certificate(_ certificate: NIOSSLCertificate, names agentID: String) -> Bool {
        Self.names(of: certificate).contains(agentID)
    }

    /// The subject CN and DNS names of `certificate`, as an error message shows them.
    public static func names(of certificate: NIOSSLCertificate) -> [String] {
        guard let der = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: der) else { return [] }
        var names: [String] = []
        for relativeName in parsed.subject {
            for attribute in relativeName where attribute.type == .RDNAttributeType.commonName {
                names.append(String(describing: attribute.value))
            }
        }
        if let alternatives = try? parsed.extensions.subjectAlternativeNames {
            for case .dnsName(let name) in alternatives { names.append(name) }
        }
        return names
    }
}

extension ConfigReader {
    /// `tls` of relay-proxy.json: nil when absent (a plaintext agent port) or bad (the
    /// problems are noted). Reads and checks every file now: readable, PEM, key matching
    /// the certificate.
    public func proxyTLS(_ root: [String: JSONValue]) -> ProxyTLS? {
        guard let value = root["tls"] else { return nil }
        guard case .object(let object) = value else {
            self.problem("$.tls", "must be an object, not \(value.kindDescription)")
            return nil
        }
        let path = "$.tls"
        self.rejectUnknownKeys(object, at: path, allowed: ProxyTLS.keys)
        let certificatePath = self.tlsPath(object, "certificate", at: path, required: true)
        let keyPath = self.tlsPath(object, "key", at: path, required: true)
        let clientCAPath = self.tlsPath(object, "clientCA", at: path, required: false)
        let chain = certificatePath.flatMap { self.pemCertificates($0, at: "\(path).certificate") }
        let key = keyPath.flatMap { self.pemPrivateKey($0, at: "\(path).key") }
        let clientCA = clientCAPath.flatMap { self.pemCertificates($0, at: "\(path).clientCA") }
        guard let certificatePath, let keyPath, let chain, let key, clientCAPath == nil || clientCA != nil else {
            return nil
        }
        guard let pin = try? TLSPin.pin(of: chain[0]) else {
            self.problem("\(path).certificate", "'\(certificatePath)': cannot read its public key")
            return nil
        }
        var configuration: TLSConfiguration
        if let clientCA {
            configuration = .makeServerConfigurationWithMTLS(
                certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key),
                trustRoots: .certificates(clientCA))
            configuration.certificateVerification = .noHostnameVerification
        } else {
            configuration = .makeServerConfiguration(
                certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        }
        configuration.minimumTLSVersion = .tlsv13
        configuration.maximumTLSVersion = .tlsv13
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            self.problem("\(path).key", "'\(keyPath)' does not match the certificate in '\(certificatePath)'")
            return nil
        }
        return ProxyTLS(
            certificatePath: certificatePath, keyPath: keyPath, clientCAPath: clientCAPath, pin: pin, context: context)
    }
}

extension ProxyTLS {
    /// With mutual TLS, why the client certificate on `channel` does not let it act for
    /// `agent` (it names another agent id, or there is none); nil when it does, or without
    /// mutual TLS.
    public func identityProblem(on channel: any Channel, agent: String) async -> String? {
        guard self.mutual else { return nil }
        guard let certificate = try? await channel.nioSSL_peerCertificate().get() else {
            return "mutual TLS: no client certificate"
        }
        let names = Self.names(of: certificate)
        if names.contains(agent) { return nil }
        let named = names.isEmpty ? "no name" : names.map { "'\($0)'" }.joined(separator: ", ")
        return "mutual TLS: the client certificate names \(named), not agent '\(agent)'"
    }
}
