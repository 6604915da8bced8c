import Foundation
import Logging
import NIOCore
import RelayCore
import RelayProtocol
import Synchronization

/// One control channel from the agent to the relay: the handshake through the pure
/// ``AgentControlStateMachine``, heartbeats both ways, and `connect` requests handed to
/// the session runner. Three tasks share it: the reader, the single writer, the ticker.
final class AgentControlChannel: Sendable {
    /// How it ended, for the reconnect loop.
    struct Outcome: Sendable {
        /// Whether the agent got as far as registering.
        let registered: Bool
        /// Why it closed, for the log and `relayctl status`.
        let reason: String
    }

    /// What the writer task takes from the outbox.
    enum Outgoing: Sendable {
        case message(ControlMessage)
        case close
    }

    /// Messages queued towards the relay before more are dropped (refusals only; the
    /// relay times those sessions out anyway).
    static let outboxLimit = 1024

    private let config: AgentConfig
    private let logger: Logger
    private let channel: any Channel
    private let deadline: Deadline
    private let onConnect: @Sendable (ControlMessage.Connect, AgentControlChannel) -> Void
    private let onRegistered: @Sendable () -> Void
    private let machine: Mutex<AgentControlStateMachine>
    private let heartbeat: Mutex<Heartbeat>
    private let registered = Mutex(false)
    private let closeReason = Mutex<String?>(nil)
    private let roundTripStore = Mutex<Duration?>(nil)
    private let outbox: AsyncStream<Outgoing>
    private let outboxInput: AsyncStream<Outgoing>.Continuation

    init(
        config: AgentConfig,
        logger: Logger,
        channel: any Channel,
        onRegistered: @escaping @Sendable () -> Void,
        onConnect: @escaping @Sendable (ControlMessage.Connect, AgentControlChannel) -> Void
    ) {
        self.config = config
        self.logger = logger
        self.channel = channel
        self.onConnect = onConnect
        self.onRegistered = onRegistered
        self.deadline = Deadline(on: channel.eventLoop, after: .fromSeconds(config.connectTimeout)) { [channel] in
            channel.close(promise: nil)
        }
        self.machine = Mutex(
            AgentControlStateMachine(agentID: config.id, secret: config.secret, services: config.services.map(\.name))
        )
        self.heartbeat = Mutex(
            Heartbeat(
                interval: .seconds(config.heartbeatInterval), timeout: .seconds(config.heartbeatTimeout), now: .now)
        )
        (self.outbox, self.outboxInput) = AsyncStream.makeStream(
            of: Outgoing.self, bufferingPolicy: .bufferingOldest(Self.outboxLimit))
    }

    /// The last heartbeat round trip to the relay.
    var roundTrip: Duration? { self.roundTripStore.withLock { $0 } }

    /// Tells the relay this agent cannot serve a session (S8).
    func refuse(session: String, code: ErrorCode, message: String) {
        self.outboxInput.yield(.message(.refuse(.init(session: session, code: code, message: message))))
    }

    /// Runs the channel until it closes.
    func run(_ connection: TCPConnection) async -> Outcome {
        do {
            try await connection.executeThenClose { inbound, outbound in
                let reader = InboundReader(inbound)
                await withTaskGroup(of: Void.self) { group in
                    group.addTask { await self.write(to: outbound) }
                    group.addTask { await self.beat() }
                    self.perform(self.machine.withLock { $0.start() })
                    await self.read(from: reader)
                    self.outboxInput.yield(.close)
                    self.outboxInput.finish()
                    group.cancelAll()
                }
            }
        } catch {
            self.noteClose("\(error)")
        }
        self.deadline.cancel()
        return Outcome(
            registered: self.registered.withLock { $0 }, reason: self.closeReason.withLock { $0 } ?? "closed")
    }

    private func read(from reader: InboundReader) async {
        do {
            while let line = try await reader.readLine() {
                self.heartbeat.withLock { $0.heard(at: .now) }
                let actions: [AgentControlStateMachine.Action]
                do {
                    let message = try ControlCodec.decode(line)
                    actions = self.machine.withLock { $0.receive(message) }
                } catch {
                    actions = self.machine.withLock { $0.receiveInvalid(error) }
                }
                self.perform(actions)
            }
            self.noteClose(
                self.deadline.expired ? "handshake timeout (\(self.config.connectTimeout)s)" : "closed by relay")
        } catch let error as ProtocolError {
            self.perform(self.machine.withLock { $0.receiveInvalid(error) })
        } catch {
            self.noteClose("read error: \(error)")
        }
    }

    private func write(to outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async {
        writing: for await item in self.outbox {
            switch item {
            case .message(let message):
                do { try await outbound.write(ControlCodec.encode(message)) } catch { break writing }
            case .close:
                break writing
            }
        }
        self.channel.close(promise: nil)
    }

    private func beat() async {
        let tick = Duration.seconds(max(0.01, min(1, self.config.heartbeatInterval / 4)))
        while (try? await Task.sleep(for: tick)) != nil {
            guard self.registered.withLock({ $0 }) else { continue }
            switch self.heartbeat.withLock({ $0.tick(at: .now) }) {
            case .none:
                break
            case .sendPing(let seq):
                self.outboxInput.yield(.message(.ping(.init(seq: seq))))
            case .expired:
                self.noteClose("heartbeat timeout: relay silent for over \(self.config.heartbeatTimeout)s")
                self.outboxInput.yield(.message(.error(.init(code: .timeout, message: "no heartbeat from the relay"))))
                self.outboxInput.yield(.close)
                return
            }
        }
    }

    private func noteClose(_ reason: String) {
        self.closeReason.withLock { $0 = $0 ?? reason }
    }

    private func perform(_ actions: [AgentControlStateMachine.Action]) {
        for action in actions {
            switch action {
            case .send(let message):
                if case .refuse(let refuse) = message {
                    self.logger.warning(
                        "refused a session: \(refuse.message)",
                        metadata: ["session": "\(refuse.session)", "code": "\(refuse.code.rawValue)"]
                    )
                }
                self.outboxInput.yield(.message(message))
            case .fail(let error):
                self.noteClose("protocol error: \(error)")
                self.outboxInput.yield(.message(error.errorMessage))
                self.outboxInput.yield(.close)
            case .registered(let accepted, let refused):
                self.deadline.cancel()
                self.registered.withLock { $0 = true }
                for item in refused {
                    self.logger.warning(
                        "relay refused a service: \(item.message)",
                        metadata: ["service": "\(item.service)", "code": "\(item.code.rawValue)"]
                    )
                }
                self.logger.info("registered with relay", metadata: ["services": "\(accepted.joined(separator: ","))"])
                self.onRegistered()
            case .connectRequested(let connect):
                self.onConnect(connect, self)
            case .pongReceived(let seq):
                let roundTrip = self.heartbeat.withLock { beat -> Duration? in
                    beat.pong(seq: seq, at: .now)
                    return beat.lastRoundTrip
                }
                self.roundTripStore.withLock { $0 = roundTrip }
            case .peerError(let report):
                let message = report.message.prefix(ProtocolLimits.maxReasonLength)
                if report.code == .authFailed {
                    self.logger.error(
                        "relay refused authentication: check this agent's id and secret against the relay's config")
                }
                self.noteClose("relay closed the channel (\(report.code.rawValue)): \(message)")
                self.outboxInput.yield(.close)
            }
        }
    }
}
