import Logging
import NIOCore
import RelayCore
import RelayProtocol
import Synchronization

/// One agent's control channel at the relay (S1–S4, S7–S8, heartbeats): reads lines into
/// the pure ``ProxyControlStateMachine`` and carries out what it decides. Three tasks
/// share it: the reader, the single writer, and the heartbeat ticker.
final class ProxyControlChannel: Sendable {
    /// The heartbeat is checked this often per heartbeat interval, so a dead peer is
    /// noticed within a quarter interval of its timeout.
    static let ticksPerInterval = 4.0

    private let state: ProxyState
    private let config: ProxyConfig
    private let logger: Logger
    private let channel: any Channel
    private let remote: String
    private let deadline: Deadline
    private let machine: Mutex<ProxyControlStateMachine>
    private let heartbeat: Mutex<Heartbeat>
    private let link = Mutex<AgentLink?>(nil)
    private let closeReason = Mutex<String?>(nil)
    private let outbox: AsyncStream<AgentLink.Outgoing>
    private let outboxInput: AsyncStream<AgentLink.Outgoing>.Continuation

    /// Prepares the channel; `deadline` bounds the handshake and is cancelled on registration.
    init(state: ProxyState, logger: Logger, channel: any Channel, remote: String, deadline: Deadline) {
        let config = state.config
        self.state = state
        self.config = config
        var logger = logger
        logger[metadataKey: "remote"] = "\(remote)"
        self.logger = logger
        self.channel = channel
        self.remote = remote
        self.deadline = deadline
        self.machine = Mutex(
            ProxyControlStateMachine(heartbeatSeconds: config.heartbeatInterval) { [state] in
                state.config.credentials(for: $0)
            }
        )
        self.heartbeat = Mutex(
            Heartbeat(
                interval: .seconds(config.heartbeatInterval), timeout: .seconds(config.heartbeatTimeout), now: .now)
        )
        (self.outbox, self.outboxInput) = AsyncStream.makeStream(
            of: AgentLink.Outgoing.self,
            bufferingPolicy: .bufferingOldest(AgentLink.outboxLimit)
        )
    }

    /// Runs the channel, whose first line was `hello`, until it closes.
    func run(hello: ControlMessage, reader: InboundReader, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.write(to: outbound) }
            group.addTask { await self.beat() }
            self.perform(self.machine.withLock { $0.receive(hello) })
            await self.read(from: reader)
            self.outboxInput.yield(.close)
            self.outboxInput.finish()
            group.cancelAll()
        }
        let reason = self.closeReason.withLock { $0 } ?? "closed"
        if let link = self.link.withLock({ $0 }) {
            self.state.unregister(link)
            self.logger.info("agent disconnected", metadata: ["agent": "\(link.id)", "reason": "\(reason)"])
        } else {
            self.logger.warning("control channel closed before registration", metadata: ["reason": "\(reason)"])
        }
    }

    private func read(from reader: InboundReader) async {
        do {
            while let line = try await reader.readLine() {
                self.heartbeat.withLock { $0.heard(at: .now) }
                let actions: [ProxyControlStateMachine.Action]
                do {
                    let message = try ControlCodec.decode(line)
                    actions = self.machine.withLock { $0.receive(message) }
                } catch {
                    actions = self.machine.withLock { $0.receiveInvalid(error) }
                }
                self.perform(actions)
            }
            self.noteClose(self.deadline.expired ? "handshake timeout" : "closed by agent")
        } catch let error as ProtocolError {
            self.perform(self.machine.withLock { $0.receiveInvalid(error) })
        } catch {
            self.noteClose("read error: \(error)")
        }
    }

    /// The only writer of this channel: messages go out in order, from one task.
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

    /// Heartbeats, once registered: ping on time, drop a silent agent.
    private func beat() async {
        let tick = Duration.seconds(max(0.01, min(1, self.config.heartbeatInterval / Self.ticksPerInterval)))
        while (try? await Task.sleep(for: tick)) != nil {
            guard self.link.withLock({ $0 != nil }) else { continue }
            switch self.heartbeat.withLock({ $0.tick(at: .now) }) {
            case .none:
                break
            case .sendPing(let seq):
                self.outboxInput.yield(.message(.ping(.init(seq: seq))))
            case .expired:
                let timeout = self.config.heartbeatTimeout
                self.noteClose("heartbeat timeout: silent for over \(timeout)s")
                self.perform(self.machine.withLock { $0.close(.timeout, "no heartbeat for \(timeout)s") })
                return
            }
        }
    }

    private func noteClose(_ reason: String) {
        self.closeReason.withLock { $0 = $0 ?? reason }
    }

    private func perform(_ actions: [ProxyControlStateMachine.Action]) {
        for action in actions {
            switch action {
            case .send(let message):
                if case .registered(let registered) = message {
                    let agent = self.machine.withLock { $0.authenticatedAgent } ?? "?"
                    for refused in registered.refused {
                        self.logger.warning(
                            "agent registration refused a service",
                            metadata: [
                                "agent": "\(agent)", "service": "\(refused.service)", "reason": "\(refused.message)",
                            ]
                        )
                    }
                }
                self.outboxInput.yield(.message(message))
            case .fail(let error):
                self.noteClose("protocol error: \(error)")
                self.outboxInput.yield(.message(error.errorMessage))
                self.outboxInput.yield(.close)
            case .authenticationFailed(let agent, let failure):
                let why = failure == .unknownAgent ? "unknown agent id" : "wrong secret (bad proof)"
                self.logger.warning("agent authentication failed: \(why)", metadata: ["agent": "\(agent)"])
                self.noteClose("authentication failed")
            case .agentReady(let agent, let services, let offered):
                self.register(agent: agent, services: services, offered: Set(offered))
            case .sessionRefused(let refuse):
                let agent = self.link.withLock { $0?.id }
                if let session = self.state.session(refuse.session), session.agent == agent {
                    session.fail(.refused(refuse.code, String(refuse.message.prefix(ProtocolLimits.maxReasonLength))))
                }
            case .pongReceived(let seq):
                let roundTrip = self.heartbeat.withLock { beat -> Duration? in
                    beat.pong(seq: seq, at: .now)
                    return beat.lastRoundTrip
                }
                self.link.withLock { $0?.roundTrip = roundTrip }
            case .peerError(let report):
                self.noteClose(
                    "agent reported \(report.code.rawValue): \(report.message.prefix(ProtocolLimits.maxReasonLength))")
                self.outboxInput.yield(.close)
            }
        }
    }

    private func register(agent: String, services: [String], offered: Set<String>) {
        self.deadline.cancel()
        self.heartbeat.withLock { $0.heard(at: .now) }
        let link = AgentLink(
            id: agent,
            remote: self.remote,
            services: services,
            offered: offered,
            channel: self.channel,
            outbox: self.outboxInput
        )
        self.link.withLock { $0 = link }
        if let previous = self.state.register(link) {
            self.logger.warning(
                "agent connected again: closing its previous control channel",
                metadata: ["agent": "\(agent)", "previous": "\(previous.remote)"]
            )
            previous.close(.replaced, "a newer control channel for agent '\(agent)' took over")
        }
        self.logger.info(
            "agent connected", metadata: ["agent": "\(agent)", "services": "\(services.joined(separator: ","))"])
    }
}
