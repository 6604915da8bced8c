import Glibc
import NIOCore
import NIOSSL

/// The agent's side of TLS on the agent port (`tls` in relay-agent.json): how it verifies
/// the relay (a CA or the system trust store and the relay's name, a pinned public key, or
/// both) and its client certificate for mutual TLS. The one place the agent's client TLS
/// context is made: built once per config, shared by the control channel and every data
/// channel; a reload builds a new one for the connections dialled after it.
public struct AgentTLS: Sendable, TLSSide {
    /// The keys an agent `tls` object may hold.
    public static let keys: Set<String> = ["ca", "serverName", "pin", "certificate", "key", "resumption"]

    /// Where the TLS library looks for the system trust store on Linux (NIOSSL: the bundle
    /// file, then the directory); without either, a `tls` with neither `ca` nor `pin` is
    /// refused with a line that says so.
    static let systemTrustStorePaths = ["/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs"]

    /// The CA file (PEM) that replaces the system trust store; nil: the system trust store
    /// (or, with only `pin`, no chain check at all).
    public let caPath: String?
    /// The name the relay's certificate must carry: `serverName`, or the host of `relay`.
    public let serverName: String
    /// The pin the relay's public key must have, if any.
    public let pin: String?
    /// The client certificate and key files, for mutual TLS.
    public let certificatePath: String?
    public let keyPath: String?
    /// The context every connection to the relay starts its handshake with.
    let context: NIOSSLContext
    /// TLS 1.3 session resumption with the relay's tickets, for this context (each data
    /// channel is a new connection: docs/architecture.md, "TLS session resumption").
    public let resumption: TLSResumption
    /// Whether `serverName` was given (else it is the host of the relay dialled).
    var serverNameGiven = false
    /// Whether `resumption` is on in the config (`tls.resumption`).
    var resumes = true

    /// The same settings for a relay at `host` (an agent with several `relays`): the name its
    /// certificate must carry is `host` unless `serverName` was given, and its tickets are
    /// kept apart from other relays' (a ticket is only offered to the relay that issued it).
    public func forRelay(host: String) -> AgentTLS {
        var copy = AgentTLS(
            caPath: self.caPath, serverName: self.serverNameGiven ? self.serverName : host, pin: self.pin,
            certificatePath: self.certificatePath, keyPath: self.keyPath, context: self.context,
            resumption: TLSResumption(context: self.context, enabled: self.resumes))
        copy.serverNameGiven = self.serverNameGiven
        copy.resumes = self.resumes
        return copy
    }

    /// Whether the relay's chain and name are checked (not with a pin alone).
    public var verifiesChain: Bool { self.caPath != nil || self.pin == nil }

    /// What the relay's chain is checked against, as logs say it.
    public var trust: String {
        if let caPath = self.caPath { return "the CA in \(caPath)" }
        return self.verifiesChain ? "the system trust store" : "its pin only"
    }

    /// What a start or reload logs about it.
    public var summary: String {
        var parts = ["TLS 1.3, relay verified by \(self.trust)"]
        if self.verifiesChain { parts.append("name '\(self.serverName)'") }
        if let pin = self.pin { parts.append("pin \(pin)") }
        if let certificatePath = self.certificatePath { parts.append("client certificate \(certificatePath)") }
        return parts.joined(separator: ", ")
    }

    /// A client handler with the shared context (on the channel's event loop): the chain,
    /// then ``check(_:)`` (name and pin); with a pin alone, only the pin (a mismatch leaves
    /// its reason in `slot`).
    public func makeHandler(slot: TLSHandshakeSlot) throws -> any ChannelHandler {
        // SNI takes a host name, never an address.
        let hostname = (try? SocketAddress(ipAddress: self.serverName, port: 0)) == nil ? self.serverName : nil
        if !self.verifiesChain, let want = self.pin {
            return try NIOSSLClientHandler(
                context: self.context, serverHostname: hostname,
                customVerificationCallback: { certificates, promise in
                    let have = certificates.first.flatMap { try? TLSPin.pin(of: $0) } ?? "(no certificate)"
                    if have == want { return promise.succeed(.certificateVerified) }
                    slot.failure = PinMismatch(have: have, want: want)
                    promise.succeed(.failed)
                })
        }
        return try NIOSSLClientHandler._makeSSLClientHandler(
            context: self.context, serverHostname: hostname,
            additionalPeerCertificateVerificationCallback: { certificate, channel in
                channel.eventLoop.makeCompletedFuture { try self.check(certificate) }
            })
    }

    /// Readies a handler from ``makeHandler(slot:)`` to resume a session with one of the
    /// relay's tickets; the handler it returns counts whether it did.
    public func companion(for handler: any ChannelHandler) -> (any ChannelHandler)? {
        guard let client = handler as? NIOSSLClientHandler else { return nil }
        return self.resumption.prepare(client)
    }

    /// The checks after the chain (which the TLS library did against `ca` or the system
    /// trust store): the relay's certificate must carry `serverName`, and its key the pin.
    func check(_ certificate: NIOSSLCertificate) throws {
        let names = RelayName.names(of: certificate)
        guard RelayName.matches(self.serverName, names) else {
            throw NameMismatch(want: self.serverName, have: names)
        }
        if let want = self.pin {
            let have = (try? TLSPin.pin(of: certificate)) ?? "(no public key)"
            guard have == want else { throw PinMismatch(have: have, want: want) }
        }
    }

    /// The relay's certificate does not carry the name it is dialled by.
    struct NameMismatch: Error, CustomStringConvertible {
        let want: String
        let have: [String]
        var description: String {
            let named = self.have.isEmpty ? "no name" : self.have.joined(separator: ", ")
            return "its certificate does not name '\(self.want)' (it names \(named))"
        }
    }

    /// The relay's public key is not the pinned one.
    struct PinMismatch: Error, CustomStringConvertible {
        let have: String
        let want: String
        var description: String { "public key pin mismatch (have \(self.have), want \(self.want))" }
    }

    public func explain(_ error: any Error, peer: String) -> String {
        if let reason = self.verificationReason(error) { return "relay \(peer) failed TLS verification: \(reason)" }
        return "TLS handshake with relay \(peer) failed: " + TLSFailure.common(error)
    }

    /// Why the relay failed verification, or nil when the failure is not about the relay's
    /// certificate.
    func verificationReason(_ error: any Error) -> String? {
        if let mismatch = error as? PinMismatch { return mismatch.description }
        if let mismatch = error as? NameMismatch { return mismatch.description }
        if let reasons = TLSFailure.boringSSLReasons(error), reasons.contains("certificate_verify_failed") {
            return
                "its certificate does not chain to \(self.trust) (unknown issuer, self-signed, or outside its validity)"
        }
        return nil
    }
}

extension ConfigReader {
    /// `tls` of relay-agent.json: nil when absent (a plaintext agent port) or bad (the
    /// problems are noted). `relayHost` is the default name the relay must carry. Reads and
    /// checks every file now: readable, PEM, the client key matching its certificate.
    public func agentTLS(_ root: [String: JSONValue], relayHost: String?) -> AgentTLS? {
        guard let value = root["tls"] else { return nil }
        guard case .object(let object) = value else {
            self.problem("$.tls", "must be an object, not \(value.kindDescription)")
            return nil
        }
        let path = "$.tls"
        self.rejectUnknownKeys(object, at: path, allowed: AgentTLS.keys)
        let caPath = self.tlsPath(object, "ca", at: path, required: false)
        let serverName = self.string(object, "serverName", at: path, required: false)
        if serverName?.isEmpty == true { self.problem("\(path).serverName", "must not be empty") }
        let pin = self.string(object, "pin", at: path, required: false)
        if let pin, let problem = TLSPin.problem(pin) { self.problem("\(path).pin", problem) }
        let certificatePath = self.tlsPath(object, "certificate", at: path, required: false)
        let keyPath = self.tlsPath(object, "key", at: path, required: false)
        if (object["certificate"] == nil) != (object["key"] == nil) {
            self.problem(
                "\(path).\(object["key"] == nil ? "key" : "certificate")",
                "required with '\(object["key"] == nil ? "certificate" : "key")' (a client certificate needs both)")
        }
        let ca = caPath.flatMap { self.pemCertificates($0, at: "\(path).ca") }
        let chain = certificatePath.flatMap { self.pemCertificates($0, at: "\(path).certificate") }
        let key = keyPath.flatMap { self.pemPrivateKey($0, at: "\(path).key") }
        guard caPath == nil || ca != nil, certificatePath == nil || chain != nil, keyPath == nil || key != nil,
            pin.map(TLSPin.problem) ?? nil == nil, serverName?.isEmpty != true,
            let name = serverName ?? relayHost
        else { return nil }

        var resumes = true
        switch object["resumption"] {
        case nil: break
        case .bool(let value)?: resumes = value
        case let value?: self.problem("\(path).resumption", "must be true or false, not \(value.kindDescription)")
        }
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv13
        configuration.maximumTLSVersion = .tlsv13
        // The chain is checked by the TLS library; the name by ``AgentTLS/check(_:)``, strictly
        // (NIOSSL would also accept a certificate naming the address connected to).
        configuration.certificateVerification = .noHostnameVerification
        if let ca {
            configuration.trustRoots = .certificates(ca)
        } else if pin != nil {
            // A pin alone: a self-signed relay, known by its key; no chain, no name (the
            // handler's own check of the pin replaces the chain check), so no trust store
            // either: a host without one (no ca-certificates) must work.
            configuration.trustRoots = .certificates([])
        } else if !AgentTLS.systemTrustStorePaths.contains(where: { access($0, F_OK) == 0 }) {
            self.problem(
                path,
                "no system trust store to check the relay's certificate against (none of "
                    + "\(AgentTLS.systemTrustStorePaths.joined(separator: ", ")) exists): install ca-certificates, "
                    + "or give 'ca' (the relay's CA) or 'pin' (the relay's key)")
            return nil
        }
        if let chain, let key {
            configuration.certificateChain = chain.map { .certificate($0) }
            configuration.privateKey = .privateKey(key)
        }
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            if let keyPath, let certificatePath {
                self.problem("\(path).key", "'\(keyPath)' does not match the certificate in '\(certificatePath)'")
            } else {
                self.problem(path, "cannot set up TLS: \(error)")
            }
            return nil
        }
        var tls = AgentTLS(
            caPath: caPath, serverName: name, pin: pin, certificatePath: certificatePath, keyPath: keyPath,
            context: context, resumption: TLSResumption(context: context, enabled: resumes))
        tls.serverNameGiven = serverName != nil
        tls.resumes = resumes
        return tls
    }
}
