import Glibc

/// HAProxy's PROXY protocol header (versions 1 and 2,
/// https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt): what the agent writes to a
/// target before any byte of the client (`proxyProtocol`), and what the relay reads first
/// from a trusted load balancer (`acceptProxyProtocol`). Pure: encodes to bytes and parses
/// from bytes; the daemons do the I/O. See docs/proxy-protocol.md.
public struct ProxyHeader: Sendable, Equatable {
    /// The two versions: v1 is one text line, v2 a binary block with optional TLVs.
    public enum Version: String, Sendable, CaseIterable {
        case v1, v2
    }

    /// One end of the proxied connection: an IPv4 or IPv6 address and a TCP port.
    public struct Endpoint: Sendable, Equatable, CustomStringConvertible {
        /// 4 bytes (IPv4) or 16 (IPv6), network order.
        public let address: [UInt8]
        public let port: UInt16

        /// An endpoint from its address bytes (4 or 16) and port; nil for another length.
        public init?(address: [UInt8], port: UInt16) {
            guard address.count == 4 || address.count == 16 else { return nil }
            self.address = address
            self.port = port
        }

        /// An endpoint as the daemons log it (`203.0.113.9:51234`, `[2001:db8::1]:443`); nil
        /// for anything else (`?`, a host name, a zone, a missing or bad port).
        public init?(_ text: String) {
            let host: Substring
            let portText: Substring
            if text.hasPrefix("[") {
                guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                    return nil
                }
                host = text[text.index(after: text.startIndex)..<close]
                portText = text[text.index(close, offsetBy: 2)...]
                guard host.contains(":") else { return nil }
            } else {
                guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { return nil }
                host = text[..<colon]
                portText = text[text.index(after: colon)...]
            }
            guard let port = ProxyHeader.port(Array(portText.utf8)),
                let address = ProxyHeader.address(String(host), family: host.contains(":") ? AF_INET6 : AF_INET)
            else { return nil }
            self.init(address: address, port: port)
        }

        /// Whether the address is IPv4.
        public var isIPv4: Bool { self.address.count == 4 }

        /// The address alone, in its text form (`203.0.113.9`, `2001:db8::1`).
        public var addressText: String {
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
            let family = self.isIPv4 ? AF_INET : AF_INET6
            let ok = self.address.withUnsafeBytes {
                inet_ntop(family, $0.baseAddress, &text, socklen_t(text.count)) != nil
            }
            guard ok else { return "?" }
            return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }

        /// As the daemons log an endpoint: `203.0.113.9:51234`, `[2001:db8::1]:443`.
        public var description: String {
            self.isIPv4 ? "\(self.addressText):\(self.port)" : "[\(self.addressText)]:\(self.port)"
        }

        /// The IPv4 endpoint inside an IPv4-mapped IPv6 one (`::ffff:192.0.2.1`), else itself.
        var unmapped: Endpoint {
            guard self.address.count == 16, self.address[0..<10].allSatisfy({ $0 == 0 }), self.address[10] == 0xff,
                self.address[11] == 0xff
            else { return self }
            return Endpoint(address: Array(self.address[12..<16]), port: self.port)!
        }

        /// An IPv4 endpoint as an IPv4-mapped IPv6 one; an IPv6 one unchanged.
        var mapped: Endpoint {
            guard self.isIPv4 else { return self }
            return Endpoint(address: Array(repeating: 0, count: 10) + [0xff, 0xff] + self.address, port: self.port)!
        }
    }

    /// A v2 type-length-value field.
    public struct TLV: Sendable, Equatable {
        public let type: UInt8
        public let value: [UInt8]
        public init(type: UInt8, value: [UInt8]) {
            self.type = type
            self.value = value
        }
    }

    /// Why bytes are not a PROXY header.
    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    /// v2 TLV type (custom range 0xE0–0xEF) carrying the agent's id, in UTF-8.
    public static let agentIDType: UInt8 = 0xE0
    /// v2 TLV type (custom range) carrying the service's name, in UTF-8.
    public static let serviceType: UInt8 = 0xE1
    /// The longest v1 header, its CRLF included (the specification's limit).
    public static let maxV1Bytes = 107
    /// The longest header the relay reads (v2 with its TLVs; a v2 header may announce up to
    /// 65551 bytes, but a load balancer's fits in far less): a longer one is refused.
    public static let maxBytes = 4096
    /// v2's 12-byte signature.
    public static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// What a v1 header starts with.
    static let v1Prefix = Array("PROXY ".utf8)

    /// The client's end as the proxy saw it; nil: unknown (v1 `UNKNOWN`, v2 `LOCAL` or a
    /// family other than IPv4/IPv6): the receiver uses the connection's own addresses.
    public let source: Endpoint?
    /// The end the client connected to; nil exactly when `source` is.
    public let destination: Endpoint?
    /// v2 only: the LOCAL command (a connection the proxy made on its own, e.g. a health check).
    public let isLocal: Bool
    /// v2 only: the TLVs, in order.
    public let tlvs: [TLV]

    /// A header for a proxied connection. Addresses are normalised as HAProxy does: an
    /// IPv4-mapped IPv6 address counts as IPv4, and when the two ends are still of different
    /// families the IPv4 one is written as IPv4-mapped IPv6. A missing end makes both unknown.
    public init(source: Endpoint?, destination: Endpoint?, tlvs: [TLV] = []) {
        if var source = source?.unmapped, var destination = destination?.unmapped {
            if source.isIPv4 != destination.isIPv4 {
                source = source.mapped
                destination = destination.mapped
            }
            self.source = source
            self.destination = destination
        } else {
            self.source = nil
            self.destination = nil
        }
        self.isLocal = false
        self.tlvs = tlvs
    }

    private init(source: Endpoint?, destination: Endpoint?, isLocal: Bool, tlvs: [TLV]) {
        self.source = source
        self.destination = destination
        self.isLocal = isLocal
        self.tlvs = tlvs
    }

    /// The value of the first TLV of `type`, if any.
    public func tlv(_ type: UInt8) -> [UInt8]? {
        self.tlvs.first { $0.type == type }?.value
    }

    // MARK: - Encoding

    /// The header's bytes in `version`: v1 `PROXY TCP4|TCP6 src dst sport dport\r\n` or
    /// `PROXY UNKNOWN\r\n` (v1 has no TLVs); v2 the PROXY command with AF_INET/AF_INET6 and
    /// STREAM, or the LOCAL command with AF_UNSPEC when the addresses are unknown, then the TLVs.
    public func encode(_ version: Version) -> [UInt8] {
        switch version {
        case .v1:
            guard let source = self.source, let destination = self.destination else {
                return Array("PROXY UNKNOWN\r\n".utf8)
            }
            let family = source.isIPv4 ? "TCP4" : "TCP6"
            return Array(
                "PROXY \(family) \(source.addressText) \(destination.addressText) \(source.port) \(destination.port)\r\n"
                    .utf8)
        case .v2:
            var body: [UInt8] = []
            let command: UInt8
            let family: UInt8
            if let source = self.source, let destination = self.destination, !self.isLocal {
                command = 0x21
                family = source.isIPv4 ? 0x11 : 0x21
                body += source.address + destination.address
                body += Self.bigEndian(source.port) + Self.bigEndian(destination.port)
            } else {
                command = 0x20
                family = 0x00
            }
            for tlv in self.tlvs {
                let value = tlv.value.prefix(Int(UInt16.max))
                body.append(tlv.type)
                body += Self.bigEndian(UInt16(value.count))
                body += value
            }
            var header = Self.v2Signature
            header += [command, family]
            header += Self.bigEndian(UInt16(clamping: body.count))
            return header + body
        }
    }

    private static func bigEndian(_ value: UInt16) -> [UInt8] {
        [UInt8(value >> 8), UInt8(value & 0xff)]
    }

    // MARK: - Parsing

    /// Whether `bytes` start like a PROXY header: v1's `PROXY ` or v2's 12-byte signature
    /// (fewer bytes than that never match).
    public static func looksLikeHeader(_ bytes: some Collection<UInt8>) -> Bool {
        bytes.starts(with: Self.v1Prefix) || bytes.starts(with: Self.v2Signature)
    }

    /// Parses the header at the start of `bytes` (v1 or v2, told apart by their first
    /// bytes): the header and its length in bytes, or nil when more bytes are needed.
    /// Throws when the bytes cannot start a valid header (no signature, bad field, a v1
    /// line past ``maxV1Bytes``, a v2 block past ``maxBytes``, truncated addresses or TLVs).
    public static func parse(_ bytes: [UInt8]) throws(ParseError) -> (header: ProxyHeader, length: Int)? {
        guard !bytes.isEmpty else { return nil }
        if bytes.starts(with: Self.v2Signature.prefix(bytes.count)) { return try Self.parseV2(bytes) }
        if bytes.starts(with: Self.v1Prefix.prefix(bytes.count)) {
            return bytes.count < Self.v1Prefix.count ? nil : try Self.parseV1(bytes)
        }
        throw ParseError("no PROXY protocol header (the first bytes are neither 'PROXY ' nor the v2 signature)")
    }

    private static func parseV1(_ bytes: [UInt8]) throws(ParseError) -> (header: ProxyHeader, length: Int)? {
        let window = bytes.prefix(Self.maxV1Bytes)
        guard let newline = window.firstIndex(of: 0x0A) else {
            if bytes.count >= Self.maxV1Bytes { throw ParseError("v1 header: no CRLF within 107 bytes") }
            return nil
        }
        guard newline > 0, bytes[newline - 1] == 0x0D else { throw ParseError("v1 header: a line feed without CR") }
        let line = bytes[0..<(newline - 1)]
        guard line.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
            throw ParseError("v1 header: a byte that is not printable ASCII")
        }
        let fields = line.split(separator: 0x20, omittingEmptySubsequences: false).map {
            String(decoding: $0, as: UTF8.self)
        }
        let length = newline + 1
        // fields[0] is "PROXY" (checked by the caller).
        guard fields.count >= 2 else { throw ParseError("v1 header: no protocol after PROXY") }
        switch fields[1] {
        case "UNKNOWN":
            return (ProxyHeader(source: nil, destination: nil, isLocal: false, tlvs: []), length)
        case "TCP4", "TCP6":
            let family = fields[1] == "TCP4" ? AF_INET : AF_INET6
            guard fields.count == 6 else {
                throw ParseError("v1 header: \(fields[1]) needs 4 fields separated by single spaces")
            }
            guard let source = Self.address(fields[2], family: family),
                let destination = Self.address(fields[3], family: family)
            else { throw ParseError("v1 header: an address that is not \(family == AF_INET ? "IPv4" : "IPv6")") }
            guard let sourcePort = Self.port(Array(fields[4].utf8)),
                let destinationPort = Self.port(Array(fields[5].utf8))
            else { throw ParseError("v1 header: a port that is not a number from 0 to 65535") }
            return (
                ProxyHeader(
                    source: Endpoint(address: source, port: sourcePort),
                    destination: Endpoint(address: destination, port: destinationPort), isLocal: false, tlvs: []),
                length
            )
        default:
            throw ParseError("v1 header: unknown protocol (TCP4, TCP6 or UNKNOWN expected)")
        }
    }

    private static func parseV2(_ bytes: [UInt8]) throws(ParseError) -> (header: ProxyHeader, length: Int)? {
        guard bytes.count >= 16 else { return nil }
        guard bytes.starts(with: Self.v2Signature) else { throw ParseError("v2 header: bad signature") }
        guard bytes[12] >> 4 == 2 else { throw ParseError("v2 header: version \(bytes[12] >> 4), not 2") }
        let command = bytes[12] & 0x0F
        guard command <= 1 else { throw ParseError("v2 header: unknown command \(command)") }
        let family = bytes[13] >> 4
        let transport = bytes[13] & 0x0F
        guard family <= 3, transport <= 2 else {
            throw ParseError("v2 header: unknown address family or transport 0x\(String(bytes[13], radix: 16))")
        }
        let length = 16 + (Int(bytes[14]) << 8 | Int(bytes[15]))
        guard length <= Self.maxBytes else {
            throw ParseError("v2 header: \(length) bytes, more than the \(Self.maxBytes) accepted")
        }
        guard bytes.count >= length else { return nil }
        let body = Array(bytes[16..<length])
        let addressBytes = [0, 12, 36, 216][Int(family)]
        guard body.count >= addressBytes else { throw ParseError("v2 header: the address block is truncated") }
        var source: Endpoint?
        var destination: Endpoint?
        if command == 1, family == 1 || family == 2 {
            let size = family == 1 ? 4 : 16
            let ports = 2 * size
            source = Endpoint(
                address: Array(body[0..<size]), port: UInt16(body[ports]) << 8 | UInt16(body[ports + 1]))
            destination = Endpoint(
                address: Array(body[size..<ports]), port: UInt16(body[ports + 2]) << 8 | UInt16(body[ports + 3]))
        }
        var tlvs: [TLV] = []
        var offset = addressBytes
        while offset < body.count {
            guard body.count - offset >= 3 else { throw ParseError("v2 header: a truncated TLV") }
            let size = Int(body[offset + 1]) << 8 | Int(body[offset + 2])
            guard body.count - offset - 3 >= size else { throw ParseError("v2 header: a truncated TLV") }
            tlvs.append(TLV(type: body[offset], value: Array(body[(offset + 3)..<(offset + 3 + size)])))
            offset += 3 + size
        }
        return (ProxyHeader(source: source, destination: destination, isLocal: command == 0, tlvs: tlvs), length)
    }

    /// A port in decimal: 1 to 5 digits, at most 65535.
    static func port(_ digits: [UInt8]) -> UInt16? {
        guard (1...5).contains(digits.count), digits.allSatisfy({ (0x30...0x39).contains($0) }) else { return nil }
        let value = digits.reduce(0) { $0 * 10 + Int($1 - 0x30) }
        return value <= 65535 ? UInt16(value) : nil
    }

    /// The bytes of an address in text form of `family` (AF_INET: dotted quad; AF_INET6).
    static func address(_ text: String, family: Int32) -> [UInt8]? {
        guard !text.isEmpty, text.utf8.count < Int(INET6_ADDRSTRLEN) else { return nil }
        if family == AF_INET {
            var address = in_addr()
            guard inet_pton(AF_INET, text, &address) == 1 else { return nil }
            return withUnsafeBytes(of: address) { Array($0) }
        }
        var address = in6_addr()
        guard inet_pton(AF_INET6, text, &address) == 1 else { return nil }
        return withUnsafeBytes(of: address) { Array($0) }
    }
}
