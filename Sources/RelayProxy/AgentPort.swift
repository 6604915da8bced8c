import Logging
import NIOCore
import RelayCore
import RelayProtocol

/// Serves connections on the agent port: the first line decides whether a connection is a
/// control channel (`hello`) or a data channel for one session (`attach`).
struct AgentPort {
    let state: ProxyState
    let logger: Logger

    /// Handles one accepted connection until it closes.
    func handle(_ connection: TCPConnection) async {
        let remote = connection.channel.remoteAddress?.displayString ?? "unknown"
        let timeout = self.state.config.handshakeTimeout
        let channel = connection.channel
        var logger = self.logger
        logger[metadataKey: "remote"] = "\(remote)"
        do {
            try await connection.executeThenClose { inbound, outbound in
                let reader = InboundReader(inbound)
                let deadline = Deadline(on: channel.eventLoop, after: .fromSeconds(timeout)) {
                    channel.close(promise: nil)
                }
                let first: ControlMessage
                do {
                    guard let message = try await reader.readMessage() else {
                        deadline.cancel()
                        let why = deadline.expired ? "sent nothing within \(timeout)s" : "closed before its first line"
                        logger.warning("agent-port connection dropped: \(why)")
                        return
                    }
                    first = message
                } catch let error as ProtocolError {
                    deadline.cancel()
                    logger.warning("agent-port connection refused: \(error)")
                    try? await outbound.write(ControlCodec.encode(error.errorMessage))
                    return
                }
                switch first {
                case .hello:
                    try? await self.state.config.tcp.applyControl(to: channel)
                    let control = ProxyControlChannel(
                        state: self.state,
                        logger: self.logger,
                        channel: channel,
                        remote: remote,
                        deadline: deadline
                    )
                    await control.run(hello: first, reader: reader, outbound: outbound)
                case .attach(let attach):
                    deadline.cancel()
                    await self.attach(attach, channel: channel, reader: reader, outbound: outbound, logger: logger)
                default:
                    deadline.cancel()
                    let error = ProtocolError(
                        .unexpectedMessage, "the first line must be 'hello' or 'attach', not '\(first.type)'")
                    logger.warning("agent-port connection refused: \(error)")
                    try? await outbound.write(ControlCodec.encode(error.errorMessage))
                }
            }
        } catch {
            logger.debug("agent-port connection ended with an error: \(error)")
        }
    }

    /// S10–S11 at the relay: checks an attach and hands the data channel to the waiting
    /// session, then keeps the channel open until that session's pump is done.
    private func attach(
        _ attach: ControlMessage.Attach,
        channel: any Channel,
        reader: InboundReader,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
        logger: Logger
    ) async {
        var logger = logger
        logger[metadataKey: "session"] = "\(attach.session)"
        func refuse(_ error: ProtocolError) async {
            logger.warning("data channel refused: \(error)")
            try? await outbound.write(ControlCodec.encode(error.errorMessage))
        }
        guard attach.version == ProtocolLimits.version else {
            return await refuse(
                ProtocolError(.unsupportedVersion, "this relay speaks protocol version \(ProtocolLimits.version)"))
        }
        guard let session = self.state.session(attach.session) else {
            return await refuse(ProtocolError(.unknownSession, "no pending session with this id"))
        }
        switch session.claim(token: attach.token, dataChannel: channel) {
        case .notPending(let error), .badToken(let error):
            await refuse(error)
        case .claimed:
            do {
                try await outbound.write(ControlCodec.encode(.attached(.init(session: attach.session))))
            } catch {
                session.handle(.attachedNotSent)
                return
            }
            let done = channel.eventLoop.makePromise(of: Void.self)
            let endpoint = PumpEndpoint(channel: channel, reader: reader, writer: outbound)
            guard session.join(DataLink(endpoint: endpoint, done: done)) else {
                // Ended while `attached` was written (a kill): this task closes the data channel.
                done.succeed()
                return
            }
            try? await done.futureResult.get()
        }
    }
}
