import Logging
import NIOCore
import RelayCore
import RelayMetrics
import RelayProtocol

/// Serves one client of a service (S5–S20 at the relay): asks the agent for a data
/// channel, waits for it, joins the two through the pump, and logs the session's end.
struct ClientHandler {
    let state: ProxyState
    let pump: any SessionPump
    let logger: Logger

    /// Handles the connection until the session ends; the client is closed on every path.
    func handle(_ connection: TCPConnection, service: String) async {
        let client = connection.channel.remoteAddress?.displayString ?? "unknown"
        let channel = connection.channel
        var logger = self.logger
        do {
            try await connection.executeThenClose { inbound, outbound in
                // S6: the service must have a connected agent; otherwise close at once.
                guard let link = self.state.agent(serving: service) else {
                    self.state.telemetry.service(service).sessionRefused(reason: "no_agent")
                    logger.warning(
                        "client refused: no agent connected for this service",
                        metadata: ["service": "\(service)", "client": "\(client)"]
                    )
                    return
                }
                let session = self.state.openSession(
                    service: service, agent: link.id, client: client, clientChannel: channel)
                defer { self.state.removeSession(session) }
                logger[metadataKey: "session"] = "\(session.id)"
                logger.info(
                    "session open", metadata: ["service": "\(service)", "client": "\(client)", "agent": "\(link.id)"])

                // S7: ask the agent; S8–S10 happen there; wait for the data channel or a reason
                // (the session's attach timer runs since it opened).
                let connect = ControlMessage.Connect(
                    session: session.id, service: service, token: session.token, client: client)
                if !link.send(.connect(connect)) { session.handle(.connectNotSent) }
                let data: DataLink
                do {
                    data = try await session.attached.get()
                } catch {
                    logger.warning(
                        "session failed: \(error)",
                        metadata: ["service": "\(service)", "duration": "\(session.started.elapsedForLog)"]
                    )
                    return
                }
                defer { data.done.succeed() }
                logger.info(
                    "session attached",
                    metadata: ["data": "\(data.endpoint.channel.remoteAddress?.displayString ?? "?")"])

                // S11–S20: join client and data channel; the client's early bytes wait in its socket until now.
                let clientEnd = PumpEndpoint(channel: channel, reader: InboundReader(inbound), writer: outbound)
                let outcome = await self.pump.run(
                    clientEnd, data.endpoint, meter: session.meter, limits: self.state.config.pumpLimits)
                switch outcome {
                case .finished:
                    session.handle(.finPassedOn(.first))
                    session.handle(.finPassedOn(.second))
                case .failed(let endpoint, let why):
                    session.handle(.failed(endpoint == .first ? .first : .second, why))
                }
                session.handle(.connectionsClosed)
                let reason = session.end?.description ?? "closed"
                logger.sessionClosed(meter: session.meter, started: session.started, reason: reason)
            }
        } catch {
            logger.debug("client connection ended with an error: \(error)")
        }
    }
}
