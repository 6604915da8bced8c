import RelayProtocol

/// Reading the PROXY protocol keys of a service (docs/proxy-protocol.md).
extension ConfigReader {
    /// The agent's `proxyProtocol` of a service: "v1" or "v2"; nil when absent (no header).
    public func proxyProtocol(_ object: [String: JSONValue], at path: String) -> ProxyHeader.Version? {
        guard let text = self.string(object, "proxyProtocol", at: path, required: false) else { return nil }
        guard let version = ProxyHeader.Version(rawValue: text) else {
            self.problem("\(path).proxyProtocol", "must be \"v1\" or \"v2\", not \"\(text)\"")
            return nil
        }
        return version
    }

    /// The relay's `acceptProxyProtocol` of a service: the sources (CIDR blocks) whose
    /// connections start with a PROXY header; empty when absent.
    public func acceptProxyProtocol(_ object: [String: JSONValue], at path: String) -> [AddressRange] {
        self.addressRanges(object, "acceptProxyProtocol", at: path)
    }
}
