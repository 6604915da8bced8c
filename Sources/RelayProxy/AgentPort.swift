import Logging
import NIOCore
import RelayCore
import RelayProtocol

/// Serves connections on the agent port: the first line, read on the accepted descriptor,
/// decides whether a connection is a control channel (`hello`, then adopted into NIO) or a
/// data channel for one session (`attach`, then kept as a descriptor for the data plane).
/// With `tls` the connection is adopted into NIO with the relay's TLS handler at once; the
/// first line is read through it, and a data channel stays in NIO (its session is pumped in
/// user space).
struct AgentPort {
    let state: ProxyState
    let group: any EventLoopGroup
    let logger: Logger

    /// Handles one accepted connection: a control channel until it closes, a data channel
    /// until it is handed to its session.
    func handle(_ socket: OwnedSocket) async {
        if let tls = self.state.config.tls { return await self.handle(socket, tls: tls) }
        // Limits first, before a byte is read: the connections not yet authenticated
        // (AgentPortLimits.swift; the TLS path takes the same slot).
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

    /// S10–S11 at the relay on a plaintext data channel: checks the attach and hands the
    /// descriptor, with what the agent sent past the `attach` line, to the waiting session.
    private func attach(
        _ attach: ControlMessage.Attach, socket: OwnedSocket, reader: inout HandshakeReader,
        until deadline: ContinuousClock.Instant, logger: Logger
    ) async {
        let remainder = reader.takeRemainder()
        let joined = await self.attach(
            attach, link: .socket(socket), logger: logger,
            send: { try await SocketIO.write(ControlCodec.encode($0), to: socket, until: deadline) },
            beforeJoin: { socket.pending.withLock { $0 = remainder } })
        if !joined { socket.close() }
    }

    /// S10–S11 at the relay: checks an attach (with mutual TLS, also that the client
    /// certificate names the agent the session was offered to), answers it with `send`,
    /// and hands the data channel to the waiting session. False when the session did not
    /// take it (a refusal was sent): the caller closes it.
    func attach(
        _ attach: ControlMessage.Attach, link: SessionLink, logger: Logger,
        identity: (@Sendable (String) async -> String?)? = nil,
        send: @Sendable (ControlMessage) async throws -> Void, beforeJoin: () -> Void = {}
    ) async -> Bool {
        var logger = logger
        logger[metadataKey: "session"] = "\(attach.session)"
        func refuse(_ error: ProtocolError) async -> Bool {
            logger.warning("data channel refused: \(error)")
            try? await send(error.errorMessage)
            return false
        }
        guard attach.version == ProtocolLimits.version else {
            return await refuse(
                ProtocolError(.unsupportedVersion, ProxyControlStateMachine.versionMismatch(attach.version)))
        }
        guard let session = self.state.session(attach.session) else {
            return await refuse(ProtocolError(.unknownSession, "no pending session with this id"))
        }
        if let identity, let problem = await identity(session.agent) {
            return await refuse(ProtocolError(.authFailed, problem))
        }
        switch session.claim(attach, dataChannel: link) {
        case .notPending(let error), .badToken(let error):
            return await refuse(error)
        case .claimed:
            do {
                try await send(.attached(.init(session: attach.session)))
            } catch {
                session.handle(.attachedNotSent)
                link.reset()
                return false
            }
            beforeJoin()
            // Ended while `attached` was written (a kill): the data channel is closed here.
            guard session.join(DataLink(link: link)) else {
                link.reset()
                return false
            }
            return true
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
