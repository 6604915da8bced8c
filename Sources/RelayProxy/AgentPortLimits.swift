import Logging
import RelayCore
import RelayProtocol

/// The agent port's limits on peers that have not proved anything yet.
extension AgentPort {
    /// A slot among the unauthenticated connections for a connection just accepted, or nil
    /// (the caller closes it) when it would pass `maxUnauthenticatedConnections` or
    /// `maxUnauthenticatedConnectionsPerSource`.
    func admit(_ socket: OwnedSocket) -> ConnectionSlots.Slot? {
        let limits = self.state.config.limits
        // An address that cannot be read (never for TCP) shares one slot count.
        let source = IPAddress(endpoint: socket.remote) ?? IPAddress(bytes: [0, 0, 0, 0])
        let counters = self.state.limits
        // The address of a registered agent is counted but never refused: its data channels
        // come in bursts (one per new session, all from that address) and each holds its
        // slot only until its first line. A stranger must share that address to profit.
        if self.state.agents.contains(where: { IPAddress(endpoint: $0.remote) == source }) {
            return try? self.state.unauthenticated.take(source: source, maxTotal: .max, maxPerSource: .max).get()
        }
        switch self.state.unauthenticated.take(
            source: source, maxTotal: limits.maxUnauthenticated, maxPerSource: limits.maxUnauthenticatedPerSource)
        {
        case .success(let slot):
            return slot
        case .failure(.total):
            counters.hit(
                LimitName.unauthenticated, logger: self.logger,
                "agent-port connection refused: \(limits.maxUnauthenticated) connections are not authenticated yet",
                metadata: ["remote": "\(socket.remote)"])
            return nil
        case .failure(.perSource):
            counters.hit(
                LimitName.unauthenticatedPerSource, source: "\(source)", logger: self.logger,
                "agent-port connection refused: \(limits.maxUnauthenticatedPerSource) connections from this address are not authenticated yet"
            )
            return nil
        }
    }

    /// Whether a `hello` may go on: false while its source address or its agent id is
    /// refused after failed proofs, unless it comes from the address that agent last
    /// authenticated from (an honest agent behind the same address as a misconfigured one,
    /// and data channels, which prove nothing here, are never refused by it).
    func admit(_ hello: ControlMessage.Hello, from socket: OwnedSocket, logger: Logger) -> Bool {
        guard let source = IPAddress(endpoint: socket.remote) else { return true }
        if let left = self.state.proofBackoff.refusal(source: source, agent: hello.agent) {
            self.state.limits.hit(
                LimitName.failedProofsPerSource, source: "\(source)", logger: logger,
                "control channel refused: too many failed proofs from this address (refused for another \(Self.seconds(left)))"
            )
            return false
        }
        guard let left = self.state.proofBackoff.refusal(agent: hello.agent, source: source) else { return true }
        self.state.limits.hit(
            LimitName.failedProofsPerAgent, source: String(hello.agent.prefix(64)), logger: logger,
            "control channel refused: too many failed proofs for this agent id (refused for another \(Self.seconds(left)))"
        )
        return false
    }

    static func seconds(_ duration: Duration) -> String {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
        return String(Int(seconds.rounded(.up))) + "s"
    }
}
