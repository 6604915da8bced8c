import RelayCore
import RelayProtocol

/// The PROXY protocol at the relay's service listeners (`acceptProxyProtocol`,
/// docs/proxy-protocol.md).
extension ClientHandler {
    /// The client's address for `socket`, and whether its source is trusted to send a PROXY
    /// header: from a source in the service's `acceptProxyProtocol` the header is read first
    /// (within `handshakeTimeoutSeconds`) and names the client (a v2 LOCAL header, v1
    /// UNKNOWN or a family other than IPv4/IPv6 keep the connection's own address); from any
    /// other source, bytes that already arrived and start like a header refuse the client.
    /// A service without `acceptProxyProtocol` looks at nothing: its bytes pass through as
    /// they came (`trusted` true), whatever they are.
    /// Nil when the client is refused (logged, at most once a minute per source); the caller
    /// closes it.
    func clientAddress(of socket: OwnedSocket, service: String) async -> (client: String, trusted: Bool)? {
        let config = self.state.config
        let trusted = config.service(named: service)?.acceptProxyProtocol ?? []
        let source = socket.remote
        guard !trusted.isEmpty else { return (source, true) }
        guard AccessRules(allow: trusted).decide(endpoint: source) == .admitted else {
            if ProxyHeaderReader.headerArrived(on: socket) {
                self.state.telemetry.service(service).sessionRefused(reason: "proxy_protocol")
                self.refuseUnexpectedHeader(from: socket, service: service)
                return nil
            }
            return (source, false)
        }
        let deadline = ContinuousClock.now + .milliseconds(Int64(config.handshakeTimeout * 1000))
        switch await ProxyHeaderReader.read(from: socket, until: deadline) {
        case .success(let header):
            guard let client = header.source, !header.isLocal else { return (source, true) }
            return ("\(client)", true)
        case .failure(let failure):
            self.state.telemetry.service(service).sessionRefused(reason: "proxy_protocol")
            self.limits.hit(
                LimitName.proxyProtocol, source: IPAddress(endpoint: source)?.description ?? source,
                logger: self.logger, "client refused: \(failure)",
                metadata: ["service": "\(service)", "client": "\(source)"])
            return nil
        }
    }

    /// Counts (as a limit hit) and logs a PROXY header from a source outside `acceptProxyProtocol`.
    func refuseUnexpectedHeader(from socket: OwnedSocket, service: String) {
        self.limits.hit(
            LimitName.proxyProtocol, source: IPAddress(endpoint: socket.remote)?.description ?? socket.remote,
            logger: self.logger,
            "client refused: it sent a PROXY protocol header and its address is not in acceptProxyProtocol",
            metadata: ["service": "\(service)", "client": "\(socket.remote)"])
    }
}
