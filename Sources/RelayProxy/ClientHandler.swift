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
        var logger = self.logger
        // A PROXY header first from a trusted load balancer gives the client's address; anyone
        // else's is refused (docs/proxy-protocol.md).
        guard let address = await self.clientAddress(of: socket, service: service) else {
            socket.close()
            return
        }
        let (client, trusted) = address
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
        // S6–S10: a connected agent of the service, and its data channel; another agent of
        // the service when one refuses or fails (ClientHandler+Agents.swift); a client of an
        // agent expected back after a restart waits for it (AgentGrace.swift).
        // A header that arrives later from an untrusted source is looked for at the join.
        guard
            let (session, data) = await self.attach(
                socket, service: service, client: client, refusesProxyHeader: !trusted, logger: &logger)
        else {
            return
        }
        logger.info("session attached", metadata: ["data": "\(data.link.remote)"])
        self.pump(session, data: data, socket: socket, service: service, logger: logger)
    }

    /// Serves a session taken over from the process before (a handover) until it ends.
    func resume(_ session: ProxySession, socket: OwnedSocket) async {
        var logger = self.logger
        logger[metadataKey: "session"] = "\(session.id)"
        let data: DataLink
        do {
            data = try await session.attached.get()
        } catch {
            self.state.removeSession(session)
            socket.close()
            logger.warning(
                "session failed: \(error)",
                metadata: ["service": "\(session.service)", "duration": "\(session.started.elapsedForLog)"]
            )
            return
        }
        self.pump(session, data: data, socket: socket, service: session.service, logger: logger)
    }

    /// Joins the data channel with the client on the data plane (or takes the run already
    /// started); when the run ends, ``finish(_:outcome:socket:service:logger:)`` logs it and
    /// forgets the session. The client's task returns now: no task waits through the
    /// session's life (its memory would stay with every idle session).
    private func pump(_ session: ProxySession, data: DataLink, socket: OwnedSocket, service: String, logger: Logger) {
        // S11–S20: the session joined client and data channel on the data plane when the data
        // channel was attached; the client's early bytes waited in its socket until then.
        let running =
            data.running
            ?? self.dataPlane.start(.socket(socket), data.link, meter: session.meter, limits: session.pumpLimits)
        if data.running == nil { session.pumping(running) }
        running.whenEnded { outcome in
            self.finish(session, outcome: outcome, socket: socket, service: service, logger: logger)
        }
    }

    /// Tells the session how its run ended, logs the end and forgets the session.
    private func finish(
        _ session: ProxySession, outcome: PumpOutcome, socket: OwnedSocket, service: String, logger: Logger
    ) {
        defer { self.state.removeSession(session) }
        switch outcome {
        case .finished:
            session.handle(.finPassedOn(.first))
            session.handle(.finPassedOn(.second))
        case .failed(let endpoint, let why):
            session.handle(.failed(endpoint == .first ? .first : .second, why))
        }
        session.handle(.connectionsClosed)
        if session.refusedProxyHeader { self.refuseUnexpectedHeader(from: socket, service: service) }
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
