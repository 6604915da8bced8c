import Logging
import NIOCore
import RelayCore
import RelayProtocol
import Synchronization

/// One control channel from the agent to the relay: the handshake through the pure
/// ``AgentControlStateMachine``, heartbeats both ways, and `connect` requests handed to
/// the session runner. Its ``ControlChannelLoop`` does the reading, writing and ticking.
final class AgentControlChannel: ControlChannelHandler {
    /// How it ended, for the reconnect loop.
    struct Outcome: Sendable {
        /// Whether the agent got as far as registering.
        let registered: Bool
        /// Why it closed, for the log and `relayctl status`.
        let reason: String
    }

    private let config: AgentConfig
    /// The relay this channel goes to; data channels for its `connect`s go there too (with
    /// the TLS settings in force when each is dialled).
    let relay: HostPort
    private let logger: Logger
    private let deadline: Deadline
    private let loop: ControlChannelLoop
    private let onConnect: @Sendable (ControlMessage.Connect, AgentControlChannel) -> Void
    private let onRegistered: @Sendable () -> Void
    private let machine: Mutex<AgentControlStateMachine>
    private let registered = Mutex(false)
    /// This end's address, for the log (a firewall rule or a packet trace can name the channel).
    private let local: String
    private let roundTripStore = Mutex<Duration?>(nil)
    private let onExpired: @Sendable (ControlMessage.Connect) -> Void
    /// Stale `connect`s dropped since the last log line about them, and when that was.
    private let expiredLog = Mutex<(last: ContinuousClock.Instant?, dropped: Int)>((nil, 0))

    /// Stale `connect`s are logged at most once per this many seconds (with how many were
    /// dropped since): a stall can leave hundreds queued.
    static let expiredLogIntervalSeconds = 10

    init(
        config: AgentConfig,
        relay: HostPort,
        logger: Logger,
        channel: any Channel,
        onRegistered: @escaping @Sendable () -> Void,
        onConnect: @escaping @Sendable (ControlMessage.Connect, AgentControlChannel) -> Void,
        onExpired: @escaping @Sendable (ControlMessage.Connect) -> Void = { _ in }
    ) {
        self.onExpired = onExpired
        self.config = config
        self.relay = relay
        self.logger = logger
        self.onConnect = onConnect
        self.onRegistered = onRegistered
        self.local = channel.localAddress?.displayString ?? "?"
        self.deadline = Deadline(on: channel.eventLoop, after: .fromSeconds(config.connectTimeout)) { [channel] in
            channel.close(promise: nil)
        }
        self.loop = ControlChannelLoop(
            channel: channel,
            peer: "relay",
            heartbeatInterval: config.heartbeatInterval,
            heartbeatTimeout: config.heartbeatTimeout
        )
        self.machine = Mutex(
            AgentControlStateMachine(agentID: config.id, secret: config.secret, services: config.services.map(\.name))
        )
    }

    /// The secret this channel authenticated with: data channels opened for its `connect`s
    /// prove it in their `attach` (a reload that rotates it does not touch this channel).
    var secret: Secret { self.config.secret }

    /// The last heartbeat round trip to the relay.
    var roundTrip: Duration? { self.roundTripStore.withLock { $0 } }

    /// Tells the relay this agent cannot serve a session (S8).
    /// Tells the relay this agent is restarting (its next process registers again soon),
    /// then closes the channel.
    func sayRestarting() {
        self.loop.noteClose("restarting: handing over to the next process")
        self.loop.close(after: .restarting(.init()))
    }

    func refuse(session: String, code: ErrorCode, message: String) {
        self.loop.send(.refuse(.init(session: session, code: code, message: message)))
    }

    /// Runs the channel until it closes.
    func run(_ connection: TCPConnection) async -> Outcome {
        do {
            try await connection.executeThenClose { inbound, outbound in
                self.perform(self.machine.withLock { $0.start() })
                await self.loop.run(self, reader: InboundReader(inbound), outbound: outbound)
            }
        } catch {
            self.loop.noteClose("\(error)")
        }
        self.deadline.cancel()
        return Outcome(registered: self.registered.withLock { $0 }, reason: self.loop.reason)
    }

    func received(_ message: ControlMessage, at receivedAt: UInt64) {
        self.perform(self.machine.withLock { $0.receive(message, receivedAt: receivedAt) })
    }

    func receivedInvalid(_ error: ProtocolError) {
        self.perform(self.machine.withLock { $0.receiveInvalid(error) })
    }

    var heartbeatsStarted: Bool { self.registered.withLock { $0 } }

    func heartbeatExpired(after timeout: Double) {
        self.loop.close(after: .error(.init(code: .timeout, message: "no heartbeat from the relay for \(timeout)s")))
    }

    var endOfStreamReason: String {
        self.deadline.expired ? "handshake timeout (\(self.config.connectTimeout)s)" : "closed by relay"
    }

    private func perform(_ actions: [AgentControlStateMachine.Action]) {
        for action in actions {
            switch action {
            case .send(let message):
                if case .refuse(let refuse) = message, refuse.code != .connectExpired {
                    self.logger.warning(
                        "refused a session: \(refuse.message)",
                        metadata: ["session": "\(refuse.session)", "code": "\(refuse.code.rawValue)"]
                    )
                }
                self.loop.send(message)
            case .fail(let error):
                self.loop.noteClose("protocol error: \(error)")
                self.loop.close(after: error.errorMessage)
            case .registered(let accepted, let refused):
                self.deadline.cancel()
                self.registered.withLock { $0 = true }
                for item in refused {
                    self.logger.warning(
                        "relay refused a service: \(item.message)",
                        metadata: ["service": "\(item.service)", "code": "\(item.code.rawValue)"]
                    )
                }
                self.logger.info(
                    "registered with relay",
                    metadata: ["services": "\(accepted.joined(separator: ","))", "local": "\(self.local)"])
                self.onRegistered()
            case .connectRequested(let connect):
                self.onConnect(connect, self)
            case .connectExpired(let connect, let lag):
                self.onExpired(connect)
                self.noteExpired(connect, lag: lag)
            case .relayNotProven:
                self.logger.error(
                    "relay failed to prove it knows the secret: it is not the relay, or its secret for this agent differs; not registering"
                )
                self.loop.noteClose("relay failed to prove it knows the secret")
            case .pongReceived(let seq):
                let roundTrip = self.loop.pong(seq: seq)
                self.roundTripStore.withLock { $0 = roundTrip }
            case .peerError(let report):
                let message = report.message.prefix(ProtocolLimits.maxReasonLength)
                if report.code == .authFailed {
                    self.logger.error(
                        "relay refused authentication: check this agent's id and secret against the relay's config")
                } else if report.code == .unsupportedVersion {
                    self.logger.error(
                        "relay speaks another protocol version: install the same release of relay-agent as of relay-proxy"
                    )
                }
                self.loop.noteClose("relay closed the channel (\(report.code.rawValue)): \(message)")
                self.loop.close()
            }
        }
    }

    /// Logs a dropped stale `connect`: the first at once, later ones at most once per
    /// ``expiredLogIntervalSeconds`` with the count since the last line.
    private func noteExpired(_ connect: ControlMessage.Connect, lag: Int64) {
        let now = ContinuousClock.now
        let due: Int? = self.expiredLog.withLock { log in
            log.dropped += 1
            if let last = log.last, now - last < .seconds(Self.expiredLogIntervalSeconds) { return nil }
            defer { log = (now, 0) }
            return log.dropped
        }
        guard let due else { return }
        self.logger.warning(
            "dropped stale connect: it arrived after the relay stopped waiting (this agent was stalled?); target not dialled",
            metadata: [
                "session": "\(connect.session)", "service": "\(connect.service)", "lagMs": "\(lag)",
                "expiresInMs": "\(connect.expiresIn ?? 0)", "dropped": "\(due)",
            ]
        )
    }
}
