import Logging
import NIOCore
import RelayCore
import RelayMetrics
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
            telemetry: self.state.telemetry.service(service.name), halfCloseTimeout: config.halfCloseTimeout)
        session.telemetry.sessionOpened()
        self.state.add(session)
        defer { self.state.remove(session) }
        logger.info(
            "session open",
            metadata: ["service": "\(service.name)", "client": "\(connect.client)", "target": "\(service.target)"])
        // Feeds an event; a `refuse` it asks for goes to the relay (S8), which closes the client at once.
        @discardableResult
        func handle(_ event: SessionStateMachine.Event) -> [SessionStateMachine.Action] {
            let actions = session.handle(event)
            for case .sendRefuse(let code, let message) in actions {
                control.refuse(session: connect.session, code: code, message: message)
            }
            return actions
        }
        defer {
            // Whatever path ended the run, its connections are closed now: the session closes.
            handle(.connectionsClosed)
            Self.logEnd(of: session, logger: logger)
        }

        // S9: the target first, so that a target that is down is refused with its reason.
        guard session.start().contains(.dialTarget) else { return }
        let target: TCPConnection
        do {
            target = try await Network.dial(service.target, timeout: timeout, group: self.group, tuning: config.tcp)
        } catch {
            handle(.targetFailed("cannot connect to \(service.target): \(Network.describe(error))"))
            return
        }
        session.adopt(target.channel)

        // Every connection is closed through executeThenClose: an NIOAsyncChannel dropped
        // without it traps when its writer is deinitialised.
        do {
            try await target.executeThenClose { targetIn, targetOut in
                // S10: a fresh data channel to the relay, attached to this session.
                guard handle(.targetDialled).contains(.dialDataChannel) else { return }
                let data: TCPConnection
                do {
                    data = try await Network.dial(
                        config.relay, timeout: timeout, group: self.group, tuning: config.tcp)
                } catch {
                    handle(
                        .dataChannelFailed("cannot open a data channel to \(config.relay): \(Network.describe(error))"))
                    return
                }
                session.adopt(data.channel)
                try await data.executeThenClose { dataIn, dataOut in
                    guard handle(.dataChannelDialled).contains(.sendAttach) else { return }
                    let reader = InboundReader(dataIn)
                    if let rejected = try await self.attach(
                        connect, reader: reader, writer: dataOut, channel: data.channel, timeout: timeout)
                    {
                        handle(.attachRejected(rejected))
                        return
                    }
                    guard handle(.attachAccepted).contains(.startPumping) else { return }
                    logger.info(
                        "session attached", metadata: ["data": "\(data.channel.localAddress?.displayString ?? "?")"])
                    let relaySide = PumpEndpoint(channel: data.channel, reader: reader, writer: dataOut)
                    let targetSide = PumpEndpoint(
                        channel: target.channel, reader: InboundReader(targetIn), writer: targetOut)
                    let outcome = await self.pump.run(
                        relaySide, targetSide, meter: session.meter, limits: config.pumpLimits)
                    switch outcome {
                    case .finished:
                        handle(.finPassedOn(.first))
                        handle(.finPassedOn(.second))
                    case .failed(let endpoint, let why):
                        handle(.failed(endpoint == .first ? .first : .second, why))
                    }
                }
            }
        } catch {
            // Writing `attach` failed, or closing a connection did.
            handle(.attachRejected(Network.describe(error)))
        }
    }

    /// Logs how a session ended: `session closed` once joined; before, `session refused`
    /// when the relay was told so (S8), else `session failed`.
    private static func logEnd(of session: AgentSession, logger: Logger) {
        guard let end = session.end else { return }
        switch end.reason {
        case _ where end.joined:
            logger.sessionClosed(meter: session.meter, started: session.started, reason: end.description)
        case .targetUnreachable, .dataChannelFailed:
            logger.warning("session refused: \(end)")
        default:
            logger.warning("session failed: \(end)")
        }
    }

    /// Sends `attach` and reads the relay's answer within `timeout`: nil if accepted, else
    /// why not ("relay refused the data channel: …").
    private func attach(
        _ connect: ControlMessage.Connect,
        reader: InboundReader,
        writer: NIOAsyncChannelOutboundWriter<ByteBuffer>,
        channel: any Channel,
        timeout: TimeAmount
    ) async throws -> String? {
        let deadline = Deadline(on: channel.eventLoop, after: timeout) { channel.close(promise: nil) }
        defer { deadline.cancel() }
        try await writer.write(ControlCodec.encode(.attach(.init(session: connect.session, token: connect.token))))
        let reply: ControlMessage?
        do {
            reply = try await reader.readMessage()
        } catch let error as ProtocolError {
            return "bad answer to attach: \(error)"
        }
        guard let reply else {
            return "relay closed the data channel \(deadline.expired ? "(no answer in time)" : "before answering")"
        }
        if let error = AttachReply.evaluate(reply, session: connect.session) {
            return "relay refused the data channel: \(error)"
        }
        return nil
    }
}
