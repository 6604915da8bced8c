import Synchronization

/// Agents the relay expects back soon, each until a deadline: those registered when the
/// process before handed over (a restart of relay-proxy), and those that said `restarting`
/// (a restart of relay-agent). A client of a service whose agent is expected waits for it
/// to register, up to the deadline, instead of being refused at once (docs/restart.md).
final class AgentGrace: Sendable {
    /// How often a waiting client looks for its agent.
    static let pollInterval = Duration.milliseconds(20)

    private let deadlines = Mutex<[String: ContinuousClock.Instant]>([:])

    /// Expects `agent` back within `seconds` from now.
    func expect(_ agent: String, within seconds: Double) {
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        self.deadlines.withLock { $0[agent] = deadline }
    }

    /// Until when `agent` is expected back, if it is and that is still ahead.
    func deadline(for agent: String) -> ContinuousClock.Instant? {
        self.deadlines.withLock { deadlines in
            guard let deadline = deadlines[agent] else { return nil }
            guard ContinuousClock.now < deadline else {
                deadlines[agent] = nil
                return nil
            }
            return deadline
        }
    }
}

extension ClientHandler {
    /// The agent serving `service` now; when there is none but the service's agent is
    /// expected back (``AgentGrace``), waits for it to register, up to its deadline.
    func agentOrWait(serving service: String) async -> AgentLink? {
        if let link = self.state.agent(serving: service) { return link }
        guard let agent = self.state.config.service(named: service)?.agent,
            let deadline = self.state.agentGrace.deadline(for: agent)
        else { return nil }
        while ContinuousClock.now < deadline {
            guard (try? await Task.sleep(for: AgentGrace.pollInterval)) != nil else { return nil }
            if let link = self.state.agent(serving: service) { return link }
        }
        return nil
    }
}
