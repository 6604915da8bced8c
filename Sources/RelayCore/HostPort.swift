import NIOCore

/// A `host:port` address from a config: an IPv4 or IPv6 literal (`[::1]:7835`) or a host
/// name, resolved when it is used.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    /// The host part, without brackets.
    public let host: String
    /// The port; 0 only where the OS may choose (a listener).
    public let port: Int

    /// Creates an address from its parts.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port` or `[ipv6]:port`; the error says what is wrong in a few words.
    public init(parsing text: String, allowPortZero: Bool = false) throws(AddressError) {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw AddressError("missing ']' after an IPv6 address") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw AddressError("expected ':PORT' after ']'") }
            portText = rest.dropFirst()
            guard host.contains(":") else { throw AddressError("brackets are only for IPv6 addresses") }
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw AddressError("expected HOST:PORT") }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { throw AddressError("write an IPv6 address in brackets, as [::1]:7835") }
        }
        guard !host.isEmpty else { throw AddressError("the host is empty") }
        guard host.allSatisfy({ !$0.isWhitespace }) else { throw AddressError("the host contains white space") }
        guard portText.count <= 5, portText.allSatisfy(\.isASCIIDigit), let port = Int(portText),
            port >= (allowPortZero ? 0 : 1), port <= 65535
        else {
            throw AddressError("the port must be a number from \(allowPortZero ? 0 : 1) to 65535")
        }
        self.host = String(host)
        self.port = port
    }

    /// `host:port`, with brackets around an IPv6 host.
    public var description: String {
        self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
    }

    /// Whether the host is `localhost` or a name under it, which is always the loopback
    /// address (RFC 6761), also where `/etc/hosts` lacks it.
    public var isLocalhost: Bool {
        let host = self.host.lowercased()
        return host == "localhost" || host.hasSuffix(".localhost")
    }

    /// Resolves the host (for a listener: a literal or a name); `localhost` is 127.0.0.1
    /// without asking the resolver.
    public func resolve() throws -> SocketAddress {
        if self.isLocalhost { return try SocketAddress(ipAddress: "127.0.0.1", port: self.port) }
        return try SocketAddress.makeAddressResolvingHost(self.host, port: self.port)
    }
}

/// Why an address did not parse.
public struct AddressError: Error, CustomStringConvertible, Sendable {
    /// What is wrong, in a few words.
    public let description: String
    init(_ description: String) { self.description = description }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}

extension SocketAddress {
    /// `ip:port` (IPv6 in brackets) for logs and status, or the path of a Unix socket.
    public var displayString: String {
        switch self {
        case .v4, .v6:
            guard let ip = self.ipAddress, let port = self.port else { return "\(self)" }
            return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
        case .unixDomainSocket:
            return self.pathname ?? "unix"
        }
    }
}
