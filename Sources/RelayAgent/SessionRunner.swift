import Logging
import NIOCore
import RelayCore
import RelayProtocol

/// Serves one `connect` request at the agent (S8–S20): dials the target, opens a data
/// channel to the relay, attaches it, and pumps bytes until both sides are done.
struct SessionRunner {
    let state: AgentState
    let group: any EventLoopGroup
    let pump: any SessionPump
    let logger: Logger

    /// Runs the session; `control` is the channel the request came on, for a refusal.
    func run(_ connect: ControlMessage.Connect, control: AgentControlChannel) async {
        let config = self.state.config
        var logger = self.logger
        logger[metadataKey: "session"] = "\(connect.session)"
        guard let service = config.service(named: connect.service) else {
            self.state.telemetry.service(connect.service).sessionRefused(reason: "unknown_service")
            control.refuse(
                session: connect.session, code: .unknownService, message: "agent does not serve '\(connect.service)'")
            return
        }
        let timeout = TimeAmount.fromSeconds(config.connectTimeout)
        let session = AgentSession(
            id: connect.session, service: service.name, client: connect.client, target: "\(service.target)",
            telemetry: self.state.telemetry.service(service.name))
        session.telemetry.sessionOpened()
        self.state.add(session)
        defer { self.state.remove(session) }
        logger.info(
            "session open",
            metadata: ["service": "\(service.name)", "client": "\(connect.client)", "target": "\(service.target)"])
        // S8: the relay is told why, and closes the client at once.
        func refuse(_ code: ErrorCode, _ reason: String) {
            control.refuse(session: connect.session, code: code, message: reason)
            session.telemetry.sessionRefused(reason: code.rawValue)
            logger.warning("session refused: \(reason)")
        }

        // S9: the target first, so that a target that is down is refused with its reason.
        let target: TCPConnection
        do {
            target = try await Network.dial(service.target, timeout: timeout, group: self.group, tuning: config.tcp)
        } catch {
            refuse(.targetUnreachable, "cannot connect to \(service.target): \(Network.describe(error))")
            return
        }
        session.adopt(target.channel)

        // Every connection is closed through executeThenClose: an NIOAsyncChannel dropped
        // without it traps when its writer is deinitialised.
        let outcome: PumpOutcome?
        do {
            outcome = try await target.executeThenClose { targetIn, targetOut -> PumpOutcome? in
                // S10: a fresh data channel to the relay, attached to this session.
                let data: TCPConnection
                do {
                    data = try await Network.dial(
                        config.relay, timeout: timeout, group: self.group, tuning: config.tcp)
                } catch {
                    refuse(
                        .dataChannelFailed, "cannot open a data channel to \(config.relay): \(Network.describe(error))")
                    return nil
                }
                session.adopt(data.channel)
                return try await data.executeThenClose { dataIn, dataOut in
                    let reader = InboundReader(dataIn)
                    guard
                        try await self.attach(
                            connect, reader: reader, writer: dataOut, channel: data.channel, timeout: timeout,
                            logger: logger)
                    else {
                        session.telemetry.sessionRefused(reason: "attach_refused")
                        return nil
                    }
                    session.markAttached(data.channel)
                    logger.info(
                        "session attached", metadata: ["data": "\(data.channel.localAddress?.displayString ?? "?")"])
                    let relaySide = PumpEndpoint(channel: data.channel, reader: reader, writer: dataOut)
                    let targetSide = PumpEndpoint(
                        channel: target.channel, reader: InboundReader(targetIn), writer: targetOut)
                    return await self.pump.run(
                        relaySide, targetSide, meter: session.meter, limits: config.pumpLimits)
                }
            }
        } catch {
            logger.warning("session failed: \(Network.describe(error))")
            return
        }
        guard let outcome else { return }
        let reason: String =
            switch outcome {
            case _ where session.killed != nil: session.killed ?? "killed"
            case .finished: "closed by both ends"
            case .failed(.first, let why): "relay side: \(why)"
            case .failed(.second, let why): "target: \(why)"
            }
        logger.sessionClosed(meter: session.meter, started: session.started, reason: reason)
    }

    /// Sends `attach` and reads the relay's answer within `timeout`; `false` (logged) if refused.
    private func attach(
        _ connect: ControlMessage.Connect,
        reader: InboundReader,
        writer: NIOAsyncChannelOutboundWriter<ByteBuffer>,
        channel: any Channel,
        timeout: TimeAmount,
        logger: Logger
    ) async throws -> Bool {
        let deadline = Deadline(on: channel.eventLoop, after: timeout) { channel.close(promise: nil) }
        defer { deadline.cancel() }
        try await writer.write(ControlCodec.encode(.attach(.init(session: connect.session, token: connect.token))))
        let reply: ControlMessage?
        do {
            reply = try await reader.readMessage()
        } catch let error as ProtocolError {
            logger.warning("session failed: bad answer to attach: \(error)")
            return false
        }
        guard let reply else {
            logger.warning(
                "session failed: relay closed the data channel \(deadline.expired ? "(no answer in time)" : "before answering")"
            )
            return false
        }
        if let error = AttachReply.evaluate(reply, session: connect.session) {
            logger.warning("session failed: relay refused the data channel: \(error)")
            return false
        }
        return true
    }
}
