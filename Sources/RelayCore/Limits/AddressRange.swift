import Glibc

/// An IPv4 or IPv6 address as bytes (4 or 16), parsed from its text form.
public struct IPAddress: Sendable, Hashable, CustomStringConvertible {
    /// 4 bytes (IPv4) or 16 (IPv6), network order.
    public let bytes: [UInt8]

    /// The address in `text` (`192.0.2.1`, `2001:db8::1`; no brackets, no zone), or nil.
    public init?(_ text: String) {
        if !text.contains(":") {
            var address = in_addr()
            guard inet_pton(AF_INET, text, &address) == 1 else { return nil }
            self.bytes = withUnsafeBytes(of: address) { Array($0) }
        } else {
            var address = in6_addr()
            guard inet_pton(AF_INET6, text, &address) == 1 else { return nil }
            self.bytes = withUnsafeBytes(of: address) { Array($0) }
        }
    }

    /// An address from its 4 or 16 bytes.
    public init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// The address of an endpoint as logged (`192.0.2.1:5000`, `[2001:db8::1]:5000`), or nil.
    public init?(endpoint: String) {
        if endpoint.hasPrefix("["), let close = endpoint.firstIndex(of: "]") {
            self.init(String(endpoint[endpoint.index(after: endpoint.startIndex)..<close]))
        } else if let colon = endpoint.lastIndex(of: ":"), !endpoint[..<colon].contains(":") {
            self.init(String(endpoint[..<colon]))
        } else {
            self.init(endpoint)
        }
    }

    /// Whether this is IPv4.
    public var isIPv4: Bool { self.bytes.count == 4 }

    /// The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`), if it is one.
    public var unmappedIPv4: IPAddress? {
        guard self.bytes.count == 16, self.bytes[0..<10].allSatisfy({ $0 == 0 }), self.bytes[10] == 0xff,
            self.bytes[11] == 0xff
        else { return nil }
        return IPAddress(bytes: Array(self.bytes[12..<16]))
    }

    public var description: String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let family = self.isIPv4 ? AF_INET : AF_INET6
        let ok = self.bytes.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &text, socklen_t(text.count)) != nil }
        guard ok else { return "?" }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A CIDR block (`192.0.2.0/24`, `2001:db8::/32`; a bare address is a /32 or /128).
///
/// Host bits must be zero: `10.0.0.1/8` is refused with the block it probably meant, since a
/// rule that silently covers more (or other) addresses than it reads is a security mistake.
public struct AddressRange: Sendable, Hashable, CustomStringConvertible {
    /// The network address (host bits zero).
    public let network: IPAddress
    /// The prefix length: 0–32 (IPv4) or 0–128 (IPv6).
    public let prefix: Int

    /// Why a CIDR text is not one.
    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public let description: String
    }

    /// Parses `text`; throws a one-line reason.
    public init(_ text: String) throws(ParseError) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let addressText = String(parts[0])
        guard let address = IPAddress(addressText) else {
            throw ParseError(description: "'\(text)' is not an IPv4 or IPv6 address or CIDR block")
        }
        let bits = address.bytes.count * 8
        var prefix = bits
        if parts.count == 2 {
            guard let value = Int(parts[1]), parts[1].allSatisfy(\.isASCII), parts[1].first != "+",
                (0...bits).contains(value)
            else {
                throw ParseError(description: "'\(text)': the prefix length must be a number from 0 to \(bits)")
            }
            prefix = value
        }
        let masked = Self.mask(address.bytes, prefix: prefix)
        guard masked == address.bytes else {
            let network = IPAddress(bytes: masked)
            throw ParseError(
                description: "'\(text)' has host bits set beyond /\(prefix) (did you mean \(network)/\(prefix)?)")
        }
        self.network = address
        self.prefix = prefix
    }

    /// Whether `address` is inside the block (same family only).
    public func contains(_ address: IPAddress) -> Bool {
        address.bytes.count == self.network.bytes.count
            && Self.mask(address.bytes, prefix: self.prefix) == self.network.bytes
    }

    public var description: String { "\(self.network)/\(self.prefix)" }

    static func mask(_ bytes: [UInt8], prefix: Int) -> [UInt8] {
        var result = bytes
        for index in result.indices {
            let keep = max(0, min(8, prefix - index * 8))
            result[index] &= keep == 8 ? 0xff : ~(0xff >> keep)
        }
        return result
    }
}

/// A service's client access rules (`allow`, `deny`): deny wins; a non-empty allow list
/// admits only the addresses it covers; an IPv4-mapped IPv6 client (`::ffff:192.0.2.1`)
/// matches IPv4 rules as its IPv4 address (and IPv6 rules as itself).
public struct AccessRules: Sendable, Equatable {
    /// Addresses admitted; empty: everyone not denied.
    public var allow: [AddressRange]
    /// Addresses refused, whatever `allow` says.
    public var deny: [AddressRange]

    /// Rules from parsed lists.
    public init(allow: [AddressRange] = [], deny: [AddressRange] = []) {
        self.allow = allow
        self.deny = deny
    }

    /// Whether there is any rule.
    public var isEmpty: Bool { self.allow.isEmpty && self.deny.isEmpty }

    /// What the rules say about a client.
    public enum Decision: Sendable, Equatable {
        case admitted
        /// Refused by this `deny` block.
        case denied(AddressRange)
        /// Refused: no `allow` block covers it.
        case notAllowed
    }

    /// The decision for `address`.
    public func decide(_ address: IPAddress) -> Decision {
        let forms = [address] + (address.unmappedIPv4.map { [$0] } ?? [])
        if let rule = self.deny.first(where: { rule in forms.contains { rule.contains($0) } }) {
            return .denied(rule)
        }
        if self.allow.isEmpty || self.allow.contains(where: { rule in forms.contains { rule.contains($0) } }) {
            return .admitted
        }
        return .notAllowed
    }

    /// The decision for a client endpoint as logged (`ip:port`); an address that cannot be
    /// read is refused when there are rules.
    public func decide(endpoint: String) -> Decision {
        guard let address = IPAddress(endpoint: endpoint) else { return self.isEmpty ? .admitted : .notAllowed }
        return self.decide(address)
    }
}
