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
    let dataPlane: any DataPlane
    let logger: Logger

    /// Runs the session; `control` is the channel the request came on, for a refusal.
    func run(_ connect: ControlMessage.Connect, control: AgentControlChannel) async {
        let config = self.state.config
        let logger = Self.logger(self.logger, session: connect.session)
        guard let service = config.service(named: connect.service) else {
            self.state.telemetry.service(connect.service).sessionRefused(reason: "unknown_service")
            control.refuse(
                session: connect.session, code: .unknownService, message: "agent does not serve '\(connect.service)'")
            return
        }
        let timeout = Duration.seconds(config.connectTimeout)
        let session = AgentSession(
            id: connect.session, service: service.name, client: connect.client, target: "\(service.target)",
            relay: control.relay, telemetry: self.state.telemetry.service(service.name),
            halfCloseTimeout: config.halfCloseTimeout)
        // maxSessions: refused before the target is dialled, so a flood of clients costs the
        // internal network nothing.
        guard self.state.addWithinLimit(session) else {
            session.telemetry.sessionRefused(reason: "limit")
            self.state.limits.hit(
                "maxSessions", logger: logger, "connect refused: maxSessions (\(config.maxSessions)) reached",
                metadata: ["service": "\(service.name)"])
            control.refuse(
                session: connect.session, code: .agentBusy,
                message: "the agent already runs its maxSessions (\(config.maxSessions)) sessions")
            return
        }
        session.telemetry.sessionOpened()
        logger.info(
            "session open",
            metadata: ["service": "\(service.name)", "client": "\(connect.client)", "target": "\(service.target)"])
        // Feeds an event; a `refuse` it asks for goes to the relay (S8), which closes the client at once.
        @Sendable @discardableResult
        func handle(_ event: SessionStateMachine.Event) -> [SessionStateMachine.Action] {
            let actions = session.handle(event)
            for case .sendRefuse(let code, let message) in actions {
                control.refuse(session: connect.session, code: code, message: message)
            }
            return actions
        }
        // Whatever path ends the session, what the data plane did not take is closed, the
        // end logged and the session forgotten: here on a path that returns before the pump
        // starts, else when the pump's run ends.
        let state = self.state
        @Sendable func end() { Self.forget(session, state: state, logger: logger, handle: handle) }
        var pumping = false
        defer { if !pumping { end() } }

        // S9 and S10 at once: the target and a fresh data channel to the relay are dialled
        // together (one round trip less per session); `attach` waits for both, so that a
        // target that is down is still refused with its reason and never attached.
        // With `proxyProtocol`, the header goes to the target as soon as it is connected,
        // before the data plane moves any byte (servers that speak first get it too).
        let header = service.proxyProtocol.map { version in
            ProxyHeader(
                source: ProxyHeader.Endpoint(connect.client),
                destination: connect.server.flatMap { ProxyHeader.Endpoint($0) },
                tlvs: [
                    .init(type: ProxyHeader.agentIDType, value: Array(config.id.utf8)),
                    .init(type: ProxyHeader.serviceType, value: Array(service.name.utf8)),
                ]
            ).encode(version)
        }
        let attach = await self.dial(
            session, first: session.start(), target: service.target, header: header, timeout: timeout,
            tuning: config.tcp, relay: control.relay, tls: config.tls(for: control.relay), handle: handle)
        guard attach, let data = session.dataLinkForAttach, let target = session.targetSocket else { return }

        if let rejected = await self.attach(connect, secret: control.secret, link: data, timeout: timeout) {
            handle(.attachRejected(rejected))
            return
        }
        guard handle(.attachAccepted).contains(.startPumping) else { return }
        logger.info("session attached", metadata: ["data": "\(data.local)"])
        // A plaintext data channel and the target are spliced; a TLS one is pumped in user space.
        let running = self.dataPlane.start(data, .socket(target), meter: session.meter, limits: config.pumpLimits)
        session.pumping(running)
        // The task returns now: no task waits through the session's life (its memory would
        // stay with every idle session).
        pumping = true
        running.whenEnded { outcome in
            Self.tell(outcome, service: service.name, limits: state.limits, logger: logger, handle: handle)
            end()
        }
    }

    /// Serves a session taken over from the process before (a handover) until it ends.
    func resume(_ session: AgentSession, running: any PumpRunning) {
        let logger = Self.logger(self.logger, session: session.id)
        let state = self.state
        running.whenEnded { outcome in
            let handle: @Sendable (SessionStateMachine.Event) -> [SessionStateMachine.Action] = { session.handle($0) }
            Self.tell(outcome, service: session.service, limits: state.limits, logger: logger, handle: handle)
            Self.forget(session, state: state, logger: logger, handle: handle)
        }
    }

    /// The end of every session, whatever ended it: what the data plane did not take is
    /// closed, the machine told, the end logged and the session forgotten.
    private static func forget(
        _ session: AgentSession, state: AgentState, logger: Logger,
        handle: @Sendable (SessionStateMachine.Event) -> [SessionStateMachine.Action]
    ) {
        session.closeConnections()
        _ = handle(.connectionsClosed)
        Self.logEnd(of: session, logger: logger)
        state.remove(session)
    }

    /// `logger` with the session's id in its metadata.
    private static func logger(_ logger: Logger, session: String) -> Logger {
        var logger = logger
        logger[metadataKey: "session"] = "\(session)"
        return logger
    }

    /// Tells the session how the data plane's run ended.
    private static func tell(
        _ outcome: PumpOutcome, service: String, limits: LimitCounters, logger: Logger,
        handle: @Sendable (SessionStateMachine.Event) -> [SessionStateMachine.Action]
    ) {
        switch outcome {
        case .finished:
            _ = handle(.finPassedOn(.first))
            _ = handle(.finPassedOn(.second))
        case .failed(let endpoint, let why):
            if why.contains("sessionIdleTimeoutSeconds") {
                limits.hit(
                    "sessionIdleTimeoutSeconds", logger: logger, "session closed: idle for sessionIdleTimeoutSeconds",
                    metadata: ["service": "\(service)"])
            }
            _ = handle(.failed(endpoint == .first ? .first : .second, why))
        }
    }

    /// What a dial gave.
    private enum Dialled: Sendable {
        case target(Result<OwnedSocket, any Error>)
        case data(Result<SessionLink, any Error>)
    }

    private static func result<Value>(_ body: () async throws -> Value) async -> Result<Value, any Error> {
        do {
            return .success(try await body())
        } catch {
            return .failure(error)
        }
    }

    /// Does the dials the machine asks for (`first`: its first actions), feeding each result
    /// as it comes; true when the machine then asks for `attach`. Dials still running when
    /// the session ends are cancelled. The data channel goes to `relay`, the relay whose
    /// control channel asked for the session.
    private func dial(
        _ session: AgentSession, first: [SessionStateMachine.Action], target: HostPort, header: [UInt8]?,
        timeout: Duration, tuning: TCPTuning, relay: HostPort, tls: AgentTLS?,
        handle: @escaping @Sendable (SessionStateMachine.Event) -> [SessionStateMachine.Action]
    ) async -> Bool {
        let group = self.group
        return await withTaskGroup(of: Dialled.self) { tasks in
            func start(_ actions: [SessionStateMachine.Action]) {
                if actions.contains(.dialTarget) {
                    tasks.addTask {
                        .target(
                            await Self.result {
                                try await Self.dialTarget(target, header: header, timeout: timeout, tuning: tuning)
                            })
                    }
                }
                if actions.contains(.dialDataChannel) {
                    tasks.addTask {
                        .data(
                            await Self.result {
                                try await Self.dialData(relay, tls: tls, timeout: timeout, tuning: tuning, group: group)
                            })
                    }
                }
            }
            start(first)
            var attach = false
            for await dialled in tasks {
                let actions: [SessionStateMachine.Action]
                switch dialled {
                case .target(.success(let socket)):
                    session.adoptTarget(socket)
                    actions = handle(.targetDialled)
                case .target(.failure(let error)):
                    actions = handle(.targetFailed("cannot connect to \(target): \(Network.describe(error))"))
                case .data(.success(let link)):
                    session.adoptData(link)
                    actions = handle(.dataChannelDialled)
                case .data(.failure(let error)):
                    let reason =
                        error is TLSFailure
                        ? "\(error)" : "cannot open a data channel to \(relay): \(Network.describe(error))"
                    actions = handle(.dataChannelFailed(reason))
                }
                start(actions)
                if actions.contains(.sendAttach) { attach = true }
                if session.end != nil { tasks.cancelAll() }
            }
            return attach
        }
    }

    /// Connects to the target and writes `header` (a PROXY header) on it, all within `timeout`;
    /// a header the socket did not take whole fails the dial.
    private static func dialTarget(
        _ target: HostPort, header: [UInt8]?, timeout: Duration, tuning: TCPTuning
    ) async throws -> OwnedSocket {
        let deadline = ContinuousClock.now + timeout
        let socket = try await SocketIO.dial(target, timeout: timeout, tuning: tuning)
        guard let header else { return socket }
        do {
            try await SocketIO.write(ByteBuffer(bytes: header), to: socket, until: deadline)
        } catch {
            socket.reset()
            throw ProxyHeaderWriteFailure(reason: error.description)
        }
        return socket
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

    /// Dials a data channel to the relay: a socket of the agent's own (spliced later), or
    /// with `tls` a connection in NIO whose handshake verified the relay.
    private static func dialData(
        _ relay: HostPort, tls: AgentTLS?, timeout: Duration, tuning: TCPTuning, group: any EventLoopGroup
    ) async throws -> SessionLink {
        guard let tls else { return .socket(try await SocketIO.dial(relay, timeout: timeout, tuning: tuning)) }
        let connection = try await Network.dial(
            relay, timeout: .fromSeconds(timeout.inSeconds), group: group, tuning: tuning, role: .data, tls: tls)
        return .adopted(AdoptedConnection(connection))
    }

    /// Sends `attach` and reads the relay's answer within `timeout`: nil if accepted, else
    /// why not ("relay refused the data channel: …"). Bytes past the answer stay with the
    /// link (a socket's ``OwnedSocket/pending``, a TLS connection's reader).
    private func attach(
        _ connect: ControlMessage.Connect, secret: Secret, link: SessionLink, timeout: Duration
    ) async -> String? {
        let deadline = ContinuousClock.now + timeout
        let reply: ControlMessage?
        // The token alone would be a bearer secret: the proof binds the data channel to the
        // secret this agent's control channel authenticated with.
        let proof = Authenticator.attachProof(secret: secret, session: connect.session, token: connect.token)
        let line = ControlCodec.encode(.attach(.init(session: connect.session, token: connect.token, proof: proof)))
        do {
            switch link {
            case .socket(let socket):
                var reader = HandshakeReader()
                try await SocketIO.write(line, to: socket, until: deadline)
                reply = try await reader.readMessage(from: socket, until: deadline)
                let remainder = reader.takeRemainder()
                socket.pending.withLock { $0 = remainder }
            case .adopted(let connection):
                let endpoint = try await connection.endpoint()
                let channel = connection.channel
                let timer = Deadline(on: channel.eventLoop, after: .fromSeconds(timeout.inSeconds)) {
                    channel.close(promise: nil)
                }
                defer { timer.cancel() }
                try await endpoint.writer.write(line)
                reply = try await endpoint.reader.readMessage()
                if reply == nil, timer.expired { throw SocketIOError.timedOut }
            }
        } catch let error as ProtocolError {
            return "bad answer to attach: \(error)"
        } catch SocketIOError.timedOut {
            return "relay closed the data channel (no answer in time)"
        } catch {
            return Network.describe(error)
        }
        guard let reply else { return "relay closed the data channel before answering" }
        if let error = AttachReply.evaluate(reply, session: connect.session) {
            return "relay refused the data channel: \(error)"
        }
        return nil
    }
}

/// The PROXY header could not be written to a connected target.
struct ProxyHeaderWriteFailure: Error, CustomStringConvertible {
    let reason: String
    var description: String { "cannot write the PROXY header: \(reason)" }
}
