import RelayProtocol

/// The PROXY protocol header parser (ProxyHeader.parse, as the relay reads a load balancer's
/// header): any bytes are a header, "more please" or a ParseError, never a trap; a header is
/// never longer than the input or ProxyHeader.maxBytes; and what it parsed re-encodes (v2, and
/// v1 for one without TLVs) to bytes that parse to the same addresses.
enum ProxyHeaderTarget {
    static func run(_ bytes: [UInt8]) {
        guard case .success(let parsed?) = Result(catching: { () throws(ProxyHeader.ParseError) in
            try ProxyHeader.parse(bytes)
        })
        else { return }
        let (header, length) = parsed
        check(length <= bytes.count && length <= ProxyHeader.maxBytes, "a header of \(length) bytes")
        check((header.source == nil) == (header.destination == nil), "one address without the other")
        let rebuilt = ProxyHeader(source: header.source, destination: header.destination, tlvs: header.tlvs)
        for version in ProxyHeader.Version.allCases {
            let encoded = rebuilt.encode(version)
            guard version == .v1 || encoded.count <= ProxyHeader.maxBytes else { continue }
            do {
                guard case let (again, used)? = try ProxyHeader.parse(encoded) else {
                    return check(false, "our own \(version) encoding is incomplete")
                }
                check(used == encoded.count, "our own \(version) encoding parsed to \(used) of \(encoded.count) bytes")
                check(again.source == rebuilt.source, "\(version) changed the source")
                if version == .v2 { check(again.tlvs == rebuilt.tlvs, "v2 changed the TLVs") }
            } catch {
                check(false, "our own \(version) encoding does not parse: \(error)")
            }
        }
    }
}
