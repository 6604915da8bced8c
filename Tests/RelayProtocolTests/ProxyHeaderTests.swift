import RelayProtocol
import Testing

/// The PROXY protocol codec (HAProxy's proxy-protocol.txt, versions 1 and 2).
@Suite struct ProxyHeaderTests {
    static let client = ProxyHeader.Endpoint("203.0.113.9:51234")!
    static let server = ProxyHeader.Endpoint("198.51.100.1:8080")!

    static func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    @Test func endpointsParseAsTheDaemonsLogThem() {
        #expect(Self.client.description == "203.0.113.9:51234")
        #expect(Self.client.address == [203, 0, 113, 9])
        #expect(ProxyHeader.Endpoint("[2001:db8::1]:443")?.description == "[2001:db8::1]:443")
        #expect(ProxyHeader.Endpoint("[2001:db8::1]:443")?.address.count == 16)
        for bad in [
            "?", "", "203.0.113.9", "203.0.113.9:", "203.0.113.9:65536", "203.0.113.9:-1", "2001:db8::1:443",
            "[2001:db8::1]", "[203.0.113.9]:1", "host.example:80", "1.2.3:4", "01.2.3.4:5", "[fe80::1%eth0]:1",
            "1.2.3.4:+5",
        ] {
            #expect(ProxyHeader.Endpoint(bad) == nil, "\(bad)")
        }
    }

    @Test func v1EncodesTCP4TCP6AndUnknown() {
        let tlvs = [ProxyHeader.TLV(type: ProxyHeader.agentIDType, value: Self.bytes("office"))]
        let v4 = ProxyHeader(source: Self.client, destination: Self.server, tlvs: tlvs)
        #expect(v4.encode(.v1) == Self.bytes("PROXY TCP4 203.0.113.9 198.51.100.1 51234 8080\r\n"))
        let v6 = ProxyHeader(
            source: ProxyHeader.Endpoint("[2001:db8::9]:1")!, destination: ProxyHeader.Endpoint("[::1]:65535")!)
        #expect(v6.encode(.v1) == Self.bytes("PROXY TCP6 2001:db8::9 ::1 1 65535\r\n"))
        #expect(ProxyHeader(source: nil, destination: Self.server).encode(.v1) == Self.bytes("PROXY UNKNOWN\r\n"))
        #expect(ProxyHeader(source: Self.client, destination: nil).encode(.v1) == Self.bytes("PROXY UNKNOWN\r\n"))
    }

    @Test func mixedFamiliesAreMappedAndMappedAddressesUnmapped() {
        let mixed = ProxyHeader(source: Self.client, destination: ProxyHeader.Endpoint("[2001:db8::1]:443")!)
        #expect(mixed.encode(.v1) == Self.bytes("PROXY TCP6 ::ffff:203.0.113.9 2001:db8::1 51234 443\r\n"))
        // A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d: it is IPv4.
        let mapped = ProxyHeader(
            source: ProxyHeader.Endpoint("[::ffff:203.0.113.9]:51234")!,
            destination: ProxyHeader.Endpoint("[::ffff:198.51.100.1]:8080")!)
        #expect(mapped.encode(.v1) == Self.bytes("PROXY TCP4 203.0.113.9 198.51.100.1 51234 8080\r\n"))
    }

    @Test func v2EncodesTheSpecificationsBytes() {
        let header = ProxyHeader(
            source: Self.client, destination: Self.server,
            tlvs: [
                .init(type: ProxyHeader.agentIDType, value: Self.bytes("office")),
                .init(type: ProxyHeader.serviceType, value: Self.bytes("web")),
            ])
        var expected: [UInt8] = ProxyHeader.v2Signature
        expected += [0x21, 0x11, 0x00, 12 + 9 + 6]
        expected += [203, 0, 113, 9, 198, 51, 100, 1, 0xC8, 0x22, 0x1F, 0x90]
        expected += [0xE0, 0x00, 0x06] + Self.bytes("office")
        expected += [0xE1, 0x00, 0x03] + Self.bytes("web")
        #expect(header.encode(.v2) == expected)
        let unknown = ProxyHeader(source: nil, destination: nil, tlvs: [.init(type: 0xE1, value: [0x41])])
        #expect(unknown.encode(.v2) == ProxyHeader.v2Signature + [0x20, 0x00, 0x00, 4, 0xE1, 0x00, 0x01, 0x41])
        let v6 = ProxyHeader(
            source: ProxyHeader.Endpoint("[2001:db8::9]:1")!, destination: ProxyHeader.Endpoint("[::1]:2")!)
        let encoded = v6.encode(.v2)
        #expect(encoded.count == 16 + 36)
        #expect(Array(encoded[12..<16]) == [0x21, 0x21, 0x00, 36])
    }

    @Test func roundTripsBothVersions() throws {
        let tlvs = [
            ProxyHeader.TLV(type: ProxyHeader.agentIDType, value: Self.bytes("office")),
            ProxyHeader.TLV(type: ProxyHeader.serviceType, value: Self.bytes("web")),
        ]
        for (source, destination) in [
            (Self.client, Self.server),
            (ProxyHeader.Endpoint("[2001:db8::9]:1")!, ProxyHeader.Endpoint("[2001:db8::a]:0")!),
        ] {
            let header = ProxyHeader(source: source, destination: destination, tlvs: tlvs)
            let data = Self.bytes("hello")
            let v2 = try #require(try ProxyHeader.parse(header.encode(.v2) + data))
            #expect(v2.header == header)
            #expect(v2.length == header.encode(.v2).count)
            #expect(v2.header.tlv(ProxyHeader.serviceType) == Self.bytes("web"))
            let v1 = try #require(try ProxyHeader.parse(header.encode(.v1) + data))
            #expect(v1.header == ProxyHeader(source: source, destination: destination))
            #expect(v1.length == header.encode(.v1).count)
        }
        let unknown = try #require(try ProxyHeader.parse(Self.bytes("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nGET")))
        #expect(unknown.header.source == nil && !unknown.header.isLocal && unknown.length == 35)
    }

    @Test func v2LocalAndOtherFamiliesCarryNoAddress() throws {
        let local = ProxyHeader.v2Signature + [0x20, 0x11, 0x00, 12] + Array(repeating: 1, count: 12)
        let parsed = try #require(try ProxyHeader.parse(local))
        #expect(parsed.header.isLocal && parsed.header.source == nil && parsed.length == 28)
        let unspec = ProxyHeader.v2Signature + [0x21, 0x00, 0x00, 0]
        #expect(try ProxyHeader.parse(unspec)?.header.source == nil)
        let unix = ProxyHeader.v2Signature + [0x21, 0x31, 0x00, 216] + Array(repeating: 0, count: 216)
        #expect(try ProxyHeader.parse(unix)?.header.source == nil)
    }

    @Test func incompleteHeadersAskForMore() throws {
        let header = ProxyHeader(source: Self.client, destination: Self.server, tlvs: [.init(type: 0xE0, value: [1])])
        for version in ProxyHeader.Version.allCases {
            let bytes = header.encode(version)
            for count in 0..<bytes.count {
                #expect(try ProxyHeader.parse(Array(bytes.prefix(count))) == nil, "\(version) \(count)")
            }
        }
    }

    /// The error for `bytes`, or nil when they parse (or are incomplete).
    static func error(_ bytes: [UInt8]) -> String? {
        do {
            _ = try ProxyHeader.parse(bytes)
            return nil
        } catch {
            return error.description
        }
    }

    @Test func malformedV1IsRefused() {
        let cases: [(String, String)] = [
            ("GET / HTTP/1.1\r\n", "no PROXY protocol header"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "a line feed without CR"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "needs 4 fields"),
            ("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "needs 4 fields"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "needs 4 fields"),
            ("PROXY TCP4 ::1 ::2 1 2\r\n", "not IPv4"),
            ("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "not IPv6"),
            ("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "not IPv4"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "a port"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", "a port"),
            ("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
            ("PROXY\r\n", "no PROXY protocol header"),
            ("PROXY \r\n", "unknown protocol"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\u{7}\r\n", "not printable"),
            ("PROXY UNKNOWN " + String(repeating: "x", count: 100) + "\r\n", "no CRLF within 107 bytes"),
        ]
        for (text, expected) in cases {
            let error = Self.error(Self.bytes(text))
            #expect(error?.contains(expected) == true, "\(text.debugDescription): \(error ?? "parsed")")
        }
        // Exactly 107 bytes, CRLF included, is the longest accepted.
        let longest = "PROXY UNKNOWN " + String(repeating: "x", count: 107 - 16) + "\r\n"
        #expect(longest.utf8.count == 107)
        #expect(Self.error(Self.bytes(longest)) == nil)
        // A long line without CRLF is refused once 107 bytes came, not waited for.
        #expect(Self.error(Self.bytes("PROXY TCP4 " + String(repeating: "1", count: 96))) != nil)
        #expect(Self.error(Self.bytes("PROXY TCP4 " + String(repeating: "1", count: 95))) == nil)
    }

    @Test func malformedV2IsRefused() {
        let signature = ProxyHeader.v2Signature
        let address: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]
        /// The signature, then `head` (version and command, family, length), then `body`.
        func v2(_ head: [UInt8], _ body: [UInt8]) -> [UInt8] { signature + head + body }
        let cases: [([UInt8], String)] = [
            (Array(signature.prefix(11)) + [0x00, 0x21, 0x11, 0, 12] + address, "no PROXY protocol header"),
            (v2([0x11, 0x11, 0, 12], address), "version 1, not 2"),
            (v2([0x22, 0x11, 0, 12], address), "unknown command 2"),
            (v2([0x21, 0x41, 0, 12], address), "unknown address family"),
            (v2([0x21, 0x13, 0, 12], address), "unknown address family"),
            (v2([0x21, 0x11, 0, 11], Array(address.prefix(11))), "address block is truncated"),
            (v2([0x21, 0x21, 0, 12], address), "address block is truncated"),
            (v2([0x21, 0x11, 0, 14], address + [0xE0, 0]), "a truncated TLV"),
            (v2([0x21, 0x11, 0, 16], address + [0xE0, 0, 2, 9]), "a truncated TLV"),
            (v2([0x21, 0x11, 0x0F, 0xF1], address), "4097 bytes, more than the 4096 accepted"),
            (v2([0x21, 0x11, 0xFF, 0xFF], address), "more than the 4096 accepted"),
        ]
        for (bytes, expected) in cases {
            let error = Self.error(bytes)
            #expect(error?.contains(expected) == true, "\(bytes): \(error ?? "parsed")")
        }
        // The largest accepted block, padded with a NOOP TLV (type 4).
        let padding = ProxyHeader.maxBytes - 16 - 12 - 3
        let announced = 12 + 3 + padding
        var largest: [UInt8] = signature
        largest += [0x21, 0x11, UInt8(announced >> 8), UInt8(announced & 0xFF)]
        largest += address
        largest += [0x04, UInt8(padding >> 8), UInt8(padding & 0xFF)]
        largest += [UInt8](repeating: 0, count: padding)
        #expect(largest.count == ProxyHeader.maxBytes)
        #expect(Self.error(largest) == nil)
    }

    @Test func looksLikeHeaderNeedsTheWholeSignature() {
        #expect(ProxyHeader.looksLikeHeader(Self.bytes("PROXY TCP4 ")))
        #expect(ProxyHeader.looksLikeHeader(Self.bytes("PROXY ")))
        #expect(!ProxyHeader.looksLikeHeader(Self.bytes("PROXY")))
        #expect(!ProxyHeader.looksLikeHeader(Self.bytes("GET / HTTP/1.1")))
        #expect(ProxyHeader.looksLikeHeader(ProxyHeader.v2Signature + [0x21]))
        #expect(!ProxyHeader.looksLikeHeader(ProxyHeader.v2Signature.prefix(11)))
        #expect(!ProxyHeader.looksLikeHeader([UInt8]()))
    }
}
