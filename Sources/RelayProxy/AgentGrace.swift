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

    /// `agent` registered: it is no longer expected. Whether it was, until now.
    func arrived(_ agent: String) -> Bool {
        self.deadlines.withLock { deadlines in
            guard let deadline = deadlines.removeValue(forKey: agent) else { return false }
            return ContinuousClock.now < deadline
        }
    }
}

extension ClientHandler {
    /// The next agent for `service` (``ProxyState/nextAgent(serving:excluding:)``); when
    /// there is none but one of the service's agents not in `tried` is expected back
    /// (``AgentGrace``), waits for one to register, up to the latest such deadline.
    func agentOrWait(serving service: String, excluding tried: Set<String>) async -> AgentLink? {
        if let link = self.state.nextAgent(serving: service, excluding: tried) { return link }
        let agents = self.state.config.service(named: service)?.agents ?? []
        guard
            let deadline = agents.filter({ !tried.contains($0) }).compactMap({
                self.state.agentGrace.deadline(for: $0)
            }).max()
        else { return nil }
        while ContinuousClock.now < deadline {
            guard (try? await Task.sleep(for: AgentGrace.pollInterval)) != nil else { return nil }
            if let link = self.state.nextAgent(serving: service, excluding: tried) { return link }
        }
        return nil
    }
}
