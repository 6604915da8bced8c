import Logging
import RelayCore
import RelayMetrics
import RelayProtocol

/// S6–S10 at the relay with high availability: a new session goes to one of the service's
/// connected agents (``ProxyState/nextAgent(serving:excluding:)``: fewest live sessions of
/// the service, ties round robin); when that agent refuses it, fails to attach in time,
/// disconnects, cannot be sent the request or is at its `maxSessionsPerAgent`, the client's
/// session is offered to another connected agent of the service, each agent at most once.
/// Every offer is a session of its own at the relay: a fresh id and attach token (the attach
/// proof binds both to the agent's secret), its own `session open` and `session failed`
/// lines and refused count. The client's early bytes wait in its socket meanwhile, unread.
extension ClientHandler {
    /// Offers the client's session to the service's agents until one attaches a data
    /// channel; nil when none did (the client is then closed, and why logged). With
    /// `refusesProxyHeader`, a PROXY header found at the join refuses the client.
    func attach(
        _ socket: OwnedSocket, service: String, client: String, refusesProxyHeader: Bool, logger: inout Logger
    ) async -> (ProxySession, DataLink)? {
        var tried: Set<String> = []
        var limitHit: (hit: SessionLimitHit, agent: String)?
        var offersAfterRestart = 0
        while tried.count < ProxyConfig.maxAgentsPerService,
            let link = await self.agentOrWait(serving: service, excluding: tried)
        {
            tried.insert(link.id)
            let another = { !self.state.agents(serving: service).allSatisfy { tried.contains($0.id) } }
            let session: ProxySession
            switch self.state.openSessionWithinLimits(
                service: service, agent: link.id, client: client, clientSocket: socket,
                attachSecret: link.provedSecret ?? Authenticator.dummySecret, dataPlane: self.dataPlane)
            {
            case .success(let opened):
                session = opened
            case .failure(let hit):
                // Only an agent's own cap leaves room at another agent; a service's caps do not.
                if hit.name == LimitName.sessionsPerAgent, another() {
                    self.limits.hit(
                        hit.name, logger: logger, "\(hit.name) (\(hit.max)) reached: trying another agent",
                        metadata: ["service": "\(service)", "client": "\(client)", "agent": "\(link.id)"])
                    limitHit = (hit, link.id)
                    continue
                }
                self.refuse(socket, service: service, client: client, hit: hit, agent: link.id, logger: logger)
                return nil
            }
            if refusesProxyHeader { session.refusesProxyHeader = true }
            var attempt = logger
            attempt[metadataKey: "session"] = "\(session.id)"
            attempt.info(
                "session open", metadata: ["service": "\(service)", "client": "\(client)", "agent": "\(link.id)"])

            // S7: ask the agent; S8–S10 happen there; wait for the data channel or a reason
            // (the session's attach timer runs since it opened).
            // `at` is stamped as the message is queued; `expiresIn` tells the agent when the
            // session stops waiting, so that a stalled agent drops it instead of dialling.
            let connect = ControlMessage.Connect(
                session: session.id, service: service, token: session.token, client: client,
                expiresIn: UInt64(session.attachTimeout * 1000), server: socket.local)
            if !link.send(.connect(connect)) { session.handle(.connectNotSent) }
            do {
                let data = try await session.attached.get()
                logger = attempt
                return (session, data)
            } catch {
                self.state.removeSession(session)
                let failure = error as? SessionFailure
                // The agent restarted before attaching it (``ProxyState/register(_:)``):
                // its next process is asked, as if it were another agent.
                if case .agentDisconnected = failure, offersAfterRestart < Self.maxOffersAfterRestart,
                    self.state.registeredAgain(link)
                {
                    offersAfterRestart += 1
                    tried.remove(link.id)
                    attempt.info(
                        "session failed: \(error); offering it to the agent's next process",
                        metadata: [
                            "service": "\(service)", "agent": "\(link.id)",
                            "duration": "\(session.started.elapsedForLog)",
                        ])
                    continue
                }
                if let failure, Self.mayTryAnotherAgent(after: failure), another() {
                    attempt.warning(
                        "session failed: \(error); trying another agent",
                        metadata: [
                            "service": "\(service)", "agent": "\(link.id)",
                            "duration": "\(session.started.elapsedForLog)",
                        ])
                    continue
                }
                socket.close()
                attempt.warning(
                    "session failed: \(error)",
                    metadata: ["service": "\(service)", "duration": "\(session.started.elapsedForLog)"]
                )
                return nil
            }
        }
        if let (hit, agent) = limitHit {
            self.refuse(socket, service: service, client: client, hit: hit, agent: agent, logger: logger)
            return nil
        }
        // S6: no connected agent serves the service: close at once.
        self.state.telemetry.service(service).sessionRefused(reason: "no_agent")
        logger.warning(
            "client refused: no agent connected for this service",
            metadata: ["service": "\(service)", "client": "\(client)"]
        )
        socket.close()
        return nil
    }

    /// How many times one client is offered again to an agent's next process after that
    /// agent restarted before attaching it (docs/restart.md).
    static let maxOffersAfterRestart = 2

    /// Whether a session that ended so before its data channel came may be offered to
    /// another agent: the agent refused it (any code), never attached in time, went away, or
    /// could not be sent the request. Not after a kill, a removed service or shutdown.
    static func mayTryAnotherAgent(after failure: SessionFailure) -> Bool {
        switch failure {
        case .refused, .attachTimeout, .agentDisconnected, .agentCongested: true
        default: false
        }
    }

    /// Closes a client refused by a session limit.
    private func refuse(
        _ socket: OwnedSocket, service: String, client: String, hit: SessionLimitHit, agent: String, logger: Logger
    ) {
        self.state.telemetry.service(service).sessionRefused(reason: "limit")
        self.limits.hit(
            hit.name, logger: logger, "client refused: \(hit.name) (\(hit.max)) reached",
            metadata: ["service": "\(service)", "client": "\(client)", "agent": "\(agent)"])
        socket.close()
    }
}
