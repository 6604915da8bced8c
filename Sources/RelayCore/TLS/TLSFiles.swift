import FoundationEssentials
import NIOCore
import NIOSSL
import RelayProtocol
import RelaySupport

/// Reading the PEM files a `tls` object names, each problem noted at its JSON path.
extension ConfigReader {
    /// A path value of a `tls` object, relative paths taken from the config's directory.
    func tlsPath(_ object: [String: JSONValue], _ key: String, at path: String, required: Bool) -> String? {
        guard let value = self.string(object, key, at: path, required: required) else { return nil }
        guard !value.isEmpty else {
            self.problem("\(path).\(key)", "must not be empty")
            return nil
        }
        return value.hasPrefix("/") ? value : PathString.appending(value, to: self.baseDirectory)
    }

    /// The certificates of the PEM file at `file` (at least one), or nil after noting why not.
    func pemCertificates(_ file: String, at path: String) -> [NIOSSLCertificate]? {
        guard let bytes = self.tlsFile(file, at: path) else { return nil }
        guard let certificates = try? NIOSSLCertificate.fromPEMBytes(bytes), !certificates.isEmpty else {
            self.problem(path, "'\(file)' holds no PEM certificate")
            return nil
        }
        return certificates
    }

    /// The private key of the PEM file at `file`, or nil after noting why not.
    func pemPrivateKey(_ file: String, at path: String) -> NIOSSLPrivateKey? {
        guard let bytes = self.tlsFile(file, at: path) else { return nil }
        guard let key = try? NIOSSLPrivateKey(bytes: bytes, format: .pem) else {
            self.problem(path, "'\(file)' holds no PEM private key (or it is encrypted)")
            return nil
        }
        return key
    }

    private func tlsFile(_ file: String, at path: String) -> [UInt8]? {
        switch Self.readFile(file) {
        case .success(let data): return Array(data)
        case .failure(let reason):
            self.problem(path, "cannot read '\(file)': \(reason)")
            return nil
        }
    }
}

/// Why a TLS handshake failed, in a few words for a log line.
public struct TLSFailure: Error, CustomStringConvertible, Sendable {
    /// The whole sentence, as logged.
    public let description: String

    /// A failure said as `description`.
    public init(_ description: String) {
        self.description = description
    }

    /// The names BoringSSL gives the errors of a failed handshake, lowercased
    /// ("certificate_verify_failed"), or nil when `error` is not a handshake error.
    static func boringSSLReasons(_ error: any Error) -> [String]? {
        let inner: BoringSSLError
        if let error = error as? NIOSSLError, case .handshakeFailed(let failure) = error {
            inner = failure
        } else if let error = error as? BoringSSLError {
            inner = error
        } else {
            return nil
        }
        let stack: [BoringSSLInternalError]
        switch inner {
        case .sslError(let errors), .unknownError(let errors): stack = errors
        default: return ["\(inner)".lowercased()]
        }
        return stack.map { error in
            // "Error: 268435581 error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED at …"
            let text = "\(error)"
            let message = text.split(separator: " at ", maxSplits: 1).first.map(String.init) ?? text
            let reason = message.split(separator: ":").last.map(String.init) ?? message
            return reason.trimmingWhitespaceAndNewlines().lowercased()
        }
    }

    /// The reasons of a failed handshake that do not depend on the side: the peer speaks no
    /// TLS, no TLS 1.3, closed the connection, or sent an alert.
    static func common(_ error: any Error) -> String {
        if let error = error as? NIOSSLError {
            switch error {
            case .uncleanShutdown: return "the connection closed during the TLS handshake"
            case .handshakeFailed(.sslError(let stack)) where stack.contains(.eofDuringHandshake):
                return "the connection closed during the TLS handshake"
            default: break
            }
        }
        if let error = error as? ChannelError, error == .eof || error == .ioOnClosedChannel || error == .alreadyClosed {
            return "the connection closed during the TLS handshake"
        }
        guard let reasons = Self.boringSSLReasons(error) else {
            return error is NIOSSLError || error is BoringSSLError ? "\(error)" : Network.describe(error)
        }
        for reason in reasons {
            switch reason {
            case "wrong_version_number", "http_request", "http_request_to_https_port", "unknown_protocol",
                "unexpected_record", "record_too_large", "packet_length_too_long", "wrong_ssl_version":
                return "the peer does not speak TLS (\(reason)): is its side configured without 'tls'?"
            case "unsupported_protocol", "tlsv1_alert_protocol_version":
                return "the peer does not speak TLS 1.3 (\(reason))"
            case "peer_did_not_return_a_certificate", "tlsv1_alert_certificate_required",
                "tlsv13_alert_certificate_required":
                return "no client certificate was presented, and this relay requires one (clientCA)"
            default:
                continue
            }
        }
        if let alert = reasons.first(where: { $0.contains("alert") }) {
            return "the peer refused the handshake (\(alert))"
        }
        return "handshake failed (\(reasons.joined(separator: ", ")))"
    }
}

extension TLSFailure {
    /// Whether `bytes`, the first a peer sent, begin like a TLS record (a handshake or an
    /// alert, version 3.x): a peer speaking TLS to a plaintext side of the agent port.
    static func looksLikeTLS(_ bytes: ByteBuffer) -> Bool {
        guard let head = bytes.getBytes(at: bytes.readerIndex, length: 2) else { return false }
        return (head[0] == 0x16 || head[0] == 0x15) && head[1] == 0x03
    }

    /// What a plaintext side answers a peer that speaks TLS.
    static let plaintextSide = ProtocolError(
        .badMessage, "the peer speaks TLS, and this side of the agent port is plaintext (no 'tls' in its config)")
}
