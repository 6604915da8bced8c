import RelayCore

extension ProxyConfig {
    /// The reload's change lines for services kept whose `acceptProxyProtocol` changed
    /// (clients accepted after the reload are read with the new list).
    func acceptProxyProtocolChanges(from old: ProxyConfig) -> [String] {
        self.services.compactMap { service in
            guard let before = old.service(named: service.name),
                before.acceptProxyProtocol != service.acceptProxyProtocol
            else { return nil }
            let list = service.acceptProxyProtocol.map(\.description).joined(separator: ", ")
            return "service '\(service.name)' acceptProxyProtocol now [\(list)] (new clients)"
        }
    }
}
