import Crypto
import FoundationEssentials
import NIOSSL

/// A public-key pin, the format of curl's `--pinnedpubkey`: `sha256//` and the base64 of
/// the SHA-256 of a certificate's SubjectPublicKeyInfo (DER). It names a key, not a
/// certificate, so a relay that renews its certificate with the same key keeps its pin.
public enum TLSPin {
    /// What every pin starts with.
    public static let prefix = "sha256//"

    /// The pin of a DER SubjectPublicKeyInfo.
    public static func pin(subjectPublicKeyInfo der: [UInt8]) -> String {
        Self.prefix + Data(SHA256.hash(data: der)).base64EncodedString()
    }

    /// The pin of `certificate`'s public key.
    public static func pin(of certificate: NIOSSLCertificate) throws -> String {
        Self.pin(subjectPublicKeyInfo: try certificate.extractPublicKey().toSPKIBytes())
    }

    /// Why `text` is not a pin, or nil when it is one (`sha256//` and the base64 of 32 bytes).
    public static func problem(_ text: String) -> String? {
        guard text.hasPrefix(Self.prefix) else {
            return "must start with '\(Self.prefix)' (curl's --pinnedpubkey form)"
        }
        let encoded = String(text.dropFirst(Self.prefix.count))
        guard let digest = Data(base64Encoded: encoded), digest.count == SHA256.byteCount else {
            return "must be '\(Self.prefix)' and the base64 of a SHA-256 digest (32 bytes, 44 characters)"
        }
        return nil
    }
}
