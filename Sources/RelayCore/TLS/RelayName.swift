import NIOCore
import NIOSSL
import X509

/// The names a relay's certificate carries, and whether one of them is the name the agent
/// dials it by: an IP address among its IP addresses, a host name among its DNS names
/// (a wildcard covers one label), or, for a certificate without any, its common name.
enum RelayName {
    /// The DNS names and IP addresses of `certificate` (its common name when it has none).
    static func names(of certificate: NIOSSLCertificate) -> [String] {
        guard let der = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: der) else { return [] }
        var names: [String] = []
        if let alternatives = try? parsed.extensions.subjectAlternativeNames {
            for name in alternatives {
                switch name {
                case .dnsName(let dns): names.append(dns)
                case .ipAddress(let octets): names.append(Self.address(Array(octets.bytes)))
                default: continue
                }
            }
        }
        if names.isEmpty {
            for relativeName in parsed.subject {
                for attribute in relativeName where attribute.type == .RDNAttributeType.commonName {
                    names.append(String(describing: attribute.value))
                }
            }
        }
        return names
    }

    /// Whether `want` is among `names`.
    static func matches(_ want: String, _ names: [String]) -> Bool {
        if let address = try? SocketAddress(ipAddress: want, port: 0) {
            return names.contains { (try? SocketAddress(ipAddress: $0, port: 0)) == address }
        }
        let host = Self.normalized(want)
        return names.contains { name in
            let candidate = Self.normalized(name)
            if candidate == host { return true }
            guard candidate.hasPrefix("*."), let dot = host.firstIndex(of: ".") else { return false }
            return host[host.index(after: dot)...] == candidate.dropFirst(2) && !host[..<dot].isEmpty
        }
    }

    private static func normalized(_ name: String) -> String {
        let lower = name.lowercased()
        return lower.hasSuffix(".") ? String(lower.dropLast()) : lower
    }

    /// An IP address from its 4 or 16 bytes, as text.
    private static func address(_ bytes: [UInt8]) -> String {
        if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
        guard bytes.count == 16 else { return "?" }
        return stride(from: 0, to: 16, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }
            .joined(separator: ":")
    }
}
