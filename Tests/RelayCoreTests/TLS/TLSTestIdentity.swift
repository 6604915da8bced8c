import Crypto
import FoundationEssentials
import NIOSSL
import X509

/// A self-signed certificate and its key, made in memory, for TLS tests on 127.0.0.1.
struct TLSTestIdentity {
    let certificate: NIOSSLCertificate
    let key: NIOSSLPrivateKey

    init(name: String) throws {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName { CommonName(name) }
        let now = Date()
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now - 3600, notValidAfter: now + 3600, issuer: subject, subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                SubjectAlternativeNames([.dnsName(name)])
            },
            issuerPrivateKey: .init(key))
        self.certificate = try NIOSSLCertificate(
            bytes: Array(try certificate.serializeAsPEM().pemString.utf8), format: .pem)
        self.key = try NIOSSLPrivateKey(bytes: Array(key.pemRepresentation.utf8), format: .pem)
    }

    /// A TLS 1.3 server context presenting this identity.
    func serverContext() throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: [.certificate(certificate)], privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv13
        return try NIOSSLContext(configuration: configuration)
    }

    /// A TLS 1.3 client context that trusts only this identity's certificate.
    func clientContext() throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv13
        configuration.trustRoots = .certificates([certificate])
        return try NIOSSLContext(configuration: configuration)
    }
}
