import Logging
import NIOCore
import RelayCore
import RelayProtocol
import Synchronization

extension AgentPort {
    /// Handles one accepted connection on a TLS agent port: the handshake (one warning with
    /// the reason and the peer's address when it fails), then the first line read through
    /// TLS: a control channel runs until it closes; a data channel is handed to its session
    /// as an adopted connection, pumped in user space.
    func handle(_ socket: OwnedSocket, tls: ProxyTLS) async {
        // The same limits as in plaintext, before the handshake costs anything: a slot among
        // the unauthenticated connections, held until the agent registers or its data
        // channel is handed over (AgentPortLimits.swift).
        guard let slot = self.admit(socket) else { return socket.close() }
        defer { slot.release() }
        let timeout = self.state.config.handshakeTimeout
        let deadline = ContinuousClock.now + .seconds(timeout)
        var logger = self.logger
        let remote = socket.remote
        logger[metadataKey: "remote"] = "\(remote)"
        let connection: AdoptedConnection
        do {
            connection = AdoptedConnection(
                try await Network.adopt(socket, group: self.group, tls: tls, until: deadline))
        } catch let failure as TLSFailure {
            logger.warning("agent-port connection refused: \(failure)")
            return
        } catch {
            logger.debug("agent-port connection ended with an error: \(Network.describe(error))")
            return
        }
        let channel = connection.channel
        let endpoint: PumpEndpoint
        do {
            endpoint = try await connection.endpoint()
        } catch {
            return connection.release()
        }
        let left = max(.zero, ContinuousClock.now.duration(to: deadline))
        let handshake = Deadline(on: channel.eventLoop, after: .fromSeconds(left.inSeconds)) {
            channel.close(promise: nil)
        }
        let send: @Sendable (ControlMessage) async throws -> Void = {
            try await endpoint.writer.write(ControlCodec.encode($0))
        }
        let first: ControlMessage
        do {
            guard let message = try await endpoint.reader.readMessage() else {
                logger.warning(
                    handshake.expired
                        ? "agent-port connection dropped: sent nothing within \(timeout)s"
                        : "agent-port connection dropped: closed before its first line")
                return connection.release()
            }
            first = message
        } catch let error as ProtocolError {
            logger.warning("agent-port connection refused: \(error)")
            try? await send(error.errorMessage)
            return connection.release()
        } catch {
            logger.debug("agent-port connection ended with an error: \(Network.describe(error))")
            return connection.reset()
        }
        // With mutual TLS the client certificate must name the agent, on top of its proof.
        var identity: (@Sendable (String) async -> String?)? = nil
        if tls.mutual { identity = { @Sendable agent in await tls.identityProblem(on: channel, agent: agent) } }
        switch first {
        case .hello(let hello):
            guard self.admit(hello, from: socket, logger: logger) else { return connection.release() }
            if let identity, let problem = await identity(hello.agent) {
                let error = ProtocolError(.authFailed, problem)
                logger.warning("agent-port connection refused: \(error)", metadata: ["agent": "\(hello.agent)"])
                try? await send(error.errorMessage)
                return connection.release()
            }
            _ = try? await channel.eventLoop.submit { try self.state.config.tcp.apply(to: channel, role: .control) }
                .get()
            let control = ProxyControlChannel(
                state: self.state, logger: self.logger, channel: channel, remote: remote, deadline: handshake,
                slot: slot)
            await control.run(hello: first, reader: endpoint.reader, outbound: endpoint.writer)
            connection.release()
        case .attach(let attach):
            let joined = await self.attach(
                attach, link: .adopted(connection), logger: logger, identity: identity, send: send)
            // Joined: the session's data plane owns the connection now, and the handshake
            // timeout no longer applies.
            handshake.cancel()
            if !joined { connection.release() }
        default:
            let error = ProtocolError(
                .unexpectedMessage, "the first line must be 'hello' or 'attach', not '\(first.type)'")
            logger.warning("agent-port connection refused: \(error)")
            try? await send(error.errorMessage)
            connection.release()
        }
    }
}
