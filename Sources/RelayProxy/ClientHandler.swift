import Logging
import RelayCore
import RelayMetrics
import RelayProtocol

/// Serves one client of a service (S5–S20 at the relay): asks the agent for a data
/// channel, waits for it, joins the two on the data plane, and logs the session's end.
struct ClientHandler {
    let state: ProxyState
    let dataPlane: any DataPlane
    let logger: Logger
    let limits: LimitCounters

    /// Handles the connection until the session ends; the client is closed on every path.
    func handle(_ socket: OwnedSocket, service: String) async {
        let client = socket.remote
        var logger = self.logger
        // The service's allow and deny lists, before anything else: a refused client costs
        // the agent nothing.
        let rules = self.state.config.service(named: service)?.access ?? AccessRules()
        if !rules.isEmpty, let why = Self.refusal(rules.decide(endpoint: client)) {
            self.state.telemetry.service(service).sessionRefused(reason: "access")
            self.limits.hit(
                LimitName.serviceAccess, source: IPAddress(endpoint: client)?.description ?? client, logger: logger,
                "client refused: \(why)", metadata: ["service": "\(service)", "client": "\(client)"])
            socket.close()
            return
        }
        // S6: the service must have a connected agent; otherwise close at once (unless the
        // agent is expected back after a restart: then the client waits for it).
        guard let link = await self.agentOrWait(serving: service) else {
            self.state.telemetry.service(service).sessionRefused(reason: "no_agent")
            logger.warning(
                "client refused: no agent connected for this service",
                metadata: ["service": "\(service)", "client": "\(client)"]
            )
            socket.close()
            return
        }
        let session: ProxySession
        switch self.state.openSessionWithinLimits(
            service: service, agent: link.id, client: client, clientSocket: socket,
            attachSecret: link.provedSecret ?? Authenticator.dummySecret, dataPlane: self.dataPlane)
        {
        case .success(let opened):
            session = opened
        case .failure(let hit):
            self.state.telemetry.service(service).sessionRefused(reason: "limit")
            self.limits.hit(
                hit.name, logger: logger, "client refused: \(hit.name) (\(hit.max)) reached",
                metadata: ["service": "\(service)", "client": "\(client)", "agent": "\(link.id)"])
            socket.close()
            return
        }
        defer { self.state.removeSession(session) }
        logger[metadataKey: "session"] = "\(session.id)"
        logger.info("session open", metadata: ["service": "\(service)", "client": "\(client)", "agent": "\(link.id)"])

        // S7: ask the agent; S8–S10 happen there; wait for the data channel or a reason
        // (the session's attach timer runs since it opened).
        // `at` is stamped as the message is queued; `expiresIn` tells the agent when the
        // session stops waiting, so that a stalled agent drops it instead of dialling.
        let connect = ControlMessage.Connect(
            session: session.id, service: service, token: session.token, client: client,
            expiresIn: UInt64(session.attachTimeout * 1000))
        if !link.send(.connect(connect)) { session.handle(.connectNotSent) }
        await self.pumpUntilEnd(session, socket: socket, service: service, logger: logger)
    }

    /// Serves a session taken over from the process before (a handover) until it ends.
    func resume(_ session: ProxySession, socket: OwnedSocket) async {
        defer { self.state.removeSession(session) }
        var logger = self.logger
        logger[metadataKey: "session"] = "\(session.id)"
        await self.pumpUntilEnd(session, socket: socket, service: session.service, logger: logger)
    }

    /// Waits for the session's data channel, joins it with the client on the data plane
    /// (or awaits the run already started) and logs the end.
    private func pumpUntilEnd(_ session: ProxySession, socket: OwnedSocket, service: String, logger: Logger) async {
        let data: DataLink
        do {
            data = try await session.attached.get()
        } catch {
            socket.close()
            logger.warning(
                "session failed: \(error)",
                metadata: ["service": "\(service)", "duration": "\(session.started.elapsedForLog)"]
            )
            return
        }
        if !session.wasResumed { logger.info("session attached", metadata: ["data": "\(data.link.remote)"]) }

        // S11–S20: the session joined client and data channel on the data plane when the data
        // channel was attached; the client's early bytes waited in its socket until then.
        let running =
            data.running
            ?? self.dataPlane.start(.socket(socket), data.link, meter: session.meter, limits: session.pumpLimits)
        if data.running == nil { session.pumping(running) }
        switch await running.outcome {
        case .finished:
            session.handle(.finPassedOn(.first))
            session.handle(.finPassedOn(.second))
        case .failed(let endpoint, let why):
            session.handle(.failed(endpoint == .first ? .first : .second, why))
        }
        session.handle(.connectionsClosed)
        let reason = session.end?.description ?? "closed"
        logger.sessionClosed(meter: session.meter, started: session.started, reason: reason)
        if reason.contains("sessionIdleTimeoutSeconds") {
            self.limits.hit(
                LimitName.sessionIdleTimeout, logger: logger, "session closed: idle for sessionIdleTimeoutSeconds",
                metadata: ["service": "\(service)"])
        }
    }

    /// Why the access rules refuse a client, or nil when they admit it.
    static func refusal(_ decision: AccessRules.Decision) -> String? {
        switch decision {
        case .admitted: nil
        case .denied(let rule): "denied by \(rule)"
        case .notAllowed: "not in the service's allow list"
        }
    }
}
