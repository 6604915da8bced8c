import RelayProtocol

extension AgentConfig {
    /// The reload's change lines for services kept whose `proxyProtocol` changed (sessions
    /// opened after the reload write the new header, or none).
    func proxyProtocolChanges(from old: AgentConfig) -> [String] {
        self.services.compactMap { service in
            guard let before = old.service(named: service.name), before.proxyProtocol != service.proxyProtocol else {
                return nil
            }
            return
                "service '\(service.name)' proxyProtocol now \(service.proxyProtocol?.rawValue ?? "none") (new sessions)"
        }
    }
}
