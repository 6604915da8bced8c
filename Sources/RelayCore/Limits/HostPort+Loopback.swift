extension HostPort {
    /// Whether the address is on loopback only: `localhost` (and names under `.localhost`),
    /// 127.0.0.0/8, or ::1 (IPv4-mapped too).
    public var isLoopback: Bool {
        let host =
            self.host.hasPrefix("[") && self.host.hasSuffix("]") ? String(self.host.dropFirst().dropLast()) : self.host
        let lowered = host.lowercased()
        if lowered == "localhost" || lowered.hasSuffix(".localhost") { return true }
        guard let address = IPAddress(host) else { return false }
        let ipv4 = address.isIPv4 ? address : address.unmappedIPv4
        if let ipv4 { return ipv4.bytes[0] == 127 }
        return address.bytes == [UInt8](repeating: 0, count: 15) + [1]
    }

    /// The warning for a metrics endpoint on this address, or nil on loopback.
    public var metricsExposureWarning: String? {
        guard !self.isLoopback else { return nil }
        return
            "metrics endpoint \(self) is not on loopback: it has no authentication, so anyone who reaches it reads the service names, agent ids and traffic counts; keep it on 127.0.0.1 or a management network"
    }
}
