import Logging
import NIOCore
import RelayCore
import RelayProtocol

/// Serves connections on the agent port: the first line, read on the accepted descriptor,
/// decides whether a connection is a control channel (`hello`, then adopted into NIO) or a
/// data channel for one session (`attach`, then kept as a descriptor for the data plane).
struct AgentPort {
    let state: ProxyState
    let group: any EventLoopGroup
    let logger: Logger

    /// Handles one accepted connection: a control channel until it closes, a data channel
    /// until it is handed to its session.
    func handle(_ socket: OwnedSocket) async {
        // Limits first, before a byte is read: a source refused after failed proofs, and the
        // connections not yet authenticated (AgentPortLimits.swift).
        guard let slot = self.admit(socket) else { return socket.close() }
        defer { slot.release() }
        let timeout = self.state.config.handshakeTimeout
        let deadline = ContinuousClock.now + .seconds(timeout)
        var logger = self.logger
        logger[metadataKey: "remote"] = "\(socket.remote)"
        var reader = HandshakeReader()
        let first: ControlMessage
        do {
            guard let message = try await reader.readMessage(from: socket, until: deadline) else {
                logger.warning("agent-port connection dropped: closed before its first line")
                return socket.close()
            }
            first = message
        } catch SocketIOError.timedOut {
            logger.warning("agent-port connection dropped: sent nothing within \(timeout)s")
            return socket.close()
        } catch let error as ProtocolError {
            logger.warning("agent-port connection refused: \(error)")
            return await Self.refuse(socket, error, until: deadline)
        } catch {
            logger.debug("agent-port connection ended with an error: \(Network.describe(error))")
            return socket.reset()
        }
        switch first {
        case .hello(let hello):
            guard self.admit(hello, from: socket, logger: logger) else { return socket.close() }
            await self.control(
                socket, hello: first, buffered: reader.takeRemainder(), until: deadline, logger: logger, slot: slot)
        case .attach(let attach):
            await self.attach(attach, socket: socket, reader: &reader, until: deadline, logger: logger)
        default:
            let error = ProtocolError(
                .unexpectedMessage, "the first line must be 'hello' or 'attach', not '\(first.type)'")
            logger.warning("agent-port connection refused: \(error)")
            await Self.refuse(socket, error, until: deadline)
        }
    }

    /// S1–S4 and on: NIO adopts the connection as a control channel, with what the agent sent
    /// past its `hello` line read first, and the rest of the handshake timeout.
    private func control(
        _ socket: OwnedSocket, hello: ControlMessage, buffered: [UInt8], until deadline: ContinuousClock.Instant,
        logger: Logger, slot: ConnectionSlots.Slot
    ) async {
        if let descriptor = socket.descriptor { try? self.state.config.tcp.applyControl(to: descriptor) }
        let remote = socket.remote
        do {
            let connection = try await Network.adopt(socket, group: self.group)
            let channel = connection.channel
            try await connection.executeThenClose { inbound, outbound in
                let left = max(.zero, ContinuousClock.now.duration(to: deadline))
                let handshake = Deadline(on: channel.eventLoop, after: .nanoseconds(Int64(left.inSeconds * 1e9))) {
                    channel.close(promise: nil)
                }
                let control = ProxyControlChannel(
                    state: self.state, logger: self.logger, channel: channel, remote: remote, deadline: handshake,
                    slot: slot)
                await control.run(hello: hello, reader: InboundReader(inbound, buffered: buffered), outbound: outbound)
            }
        } catch {
            logger.debug("control channel ended with an error: \(Network.describe(error))")
        }
    }

    /// S10–S11 at the relay: checks an attach and hands the data channel, with what the agent
    /// sent past the `attach` line, to the waiting session.
    private func attach(
        _ attach: ControlMessage.Attach, socket: OwnedSocket, reader: inout HandshakeReader,
        until deadline: ContinuousClock.Instant, logger: Logger
    ) async {
        var logger = logger
        logger[metadataKey: "session"] = "\(attach.session)"
        func refuse(_ error: ProtocolError) async {
            logger.warning("data channel refused: \(error)")
            await Self.refuse(socket, error, until: deadline)
        }
        guard attach.version == ProtocolLimits.version else {
            return await refuse(
                ProtocolError(.unsupportedVersion, "this relay speaks protocol version \(ProtocolLimits.version)"))
        }
        guard let session = self.state.session(attach.session) else {
            return await refuse(ProtocolError(.unknownSession, "no pending session with this id"))
        }
        switch session.claim(token: attach.token, dataChannel: socket) {
        case .notPending(let error), .badToken(let error):
            await refuse(error)
        case .claimed:
            do {
                try await SocketIO.write(
                    ControlCodec.encode(.attached(.init(session: attach.session))), to: socket, until: deadline)
            } catch {
                session.handle(.attachedNotSent)
                return socket.reset()
            }
            let remainder = reader.takeRemainder()
            socket.pending.withLock { $0 = remainder }
            // Ended while `attached` was written (a kill): the data channel is closed here.
            if !session.join(DataLink(socket: socket)) { socket.reset() }
        }
    }

    /// Answers `error` on a connection that is refused, then closes it.
    private static func refuse(_ socket: OwnedSocket, _ error: ProtocolError, until deadline: ContinuousClock.Instant)
        async
    {
        try? await SocketIO.write(ControlCodec.encode(error.errorMessage), to: socket, until: deadline)
        socket.close()
    }
}
