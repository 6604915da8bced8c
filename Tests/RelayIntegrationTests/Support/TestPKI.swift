import Crypto
import Foundation
import SwiftASN1
import X509

/// Certificates made at test time (swift-certificates and swift-crypto, no openssl CLI):
/// CAs, certificates they sign, and self-signed ones, all EC P-256, written as PEM files.
struct TestPKI {
    /// A certificate with its key, as written to disk.
    struct Issued {
        let certificate: Certificate
        let key: P256.Signing.PrivateKey
        let certificatePath: String
        let keyPath: String

        /// The pin computed here, independently of the daemons: `sha256//` and the base64 of
        /// the SHA-256 of the DER SubjectPublicKeyInfo (what `openssl pkey -pubout -outform
        /// der | openssl dgst -sha256 -binary | base64` gives).
        var pin: String {
            "sha256//" + Data(SHA256.hash(data: self.key.publicKey.derRepresentation)).base64EncodedString()
        }
    }

    let directory: String

    /// A CA named `name`, written as `<file>.crt` and `<file>.key`.
    func authority(_ name: String, file: String) throws -> Issued {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName { CommonName(name) }
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
            Critical(KeyUsage(keyCertSign: true, cRLSign: true))
        }
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: Date() - 3600, notValidAfter: Date() + 86400, issuer: subject, subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions, issuerPrivateKey: .init(key))
        return try self.write(certificate, key, file: file)
    }

    /// A leaf certificate for `commonName` with DNS names `dns` and IP addresses `ips`
    /// (IPv4 literals), signed by `issuer`, or self-signed when it is nil.
    func leaf(
        commonName: String, dns: [String] = [], ips: [String] = [], issuer: Issued?, file: String
    ) throws -> Issued {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName { CommonName(commonName) }
        var names: [GeneralName] = dns.map { .dnsName($0) }
        for ip in ips {
            names.append(
                .ipAddress(ASN1OctetString(contentBytes: ArraySlice(ip.split(separator: ".").map { UInt8($0)! }))))
        }
        let alternativeNames = names
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true))
            try ExtendedKeyUsage([.serverAuth, .clientAuth])
            if !alternativeNames.isEmpty { SubjectAlternativeNames(alternativeNames) }
        }
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: Date() - 3600, notValidAfter: Date() + 86400,
            issuer: issuer?.certificate.subject ?? subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: extensions, issuerPrivateKey: .init(issuer?.key ?? key))
        return try self.write(certificate, key, file: file)
    }

    private func write(_ certificate: Certificate, _ key: P256.Signing.PrivateKey, file: String) throws -> Issued {
        let certificatePath = self.directory + "/" + file + ".crt"
        let keyPath = self.directory + "/" + file + ".key"
        try certificate.serializeAsPEM().pemString.write(toFile: certificatePath, atomically: true, encoding: .utf8)
        try key.pemRepresentation.write(toFile: keyPath, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: keyPath)
        return Issued(certificate: certificate, key: key, certificatePath: certificatePath, keyPath: keyPath)
    }
}
