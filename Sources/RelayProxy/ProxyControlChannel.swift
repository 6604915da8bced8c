import Logging
import NIOCore
import RelayCore
import RelayProtocol
import Synchronization

/// One agent's control channel at the relay (S1–S4, S7–S8, heartbeats): feeds the lines
/// its ``ControlChannelLoop`` reads into the pure ``ProxyControlStateMachine`` and carries
/// out what that decides.
final class ProxyControlChannel: ControlChannelHandler {
    private let state: ProxyState
    private let logger: Logger
    private let remote: String
    private let deadline: Deadline
    private let loop: ControlChannelLoop
    private let machine: Mutex<ProxyControlStateMachine>
    private let link = Mutex<AgentLink?>(nil)
    /// Its place among the unauthenticated connections, given back at registration.
    private let slot: ConnectionSlots.Slot?

    /// Prepares the channel; `deadline` bounds the handshake and is cancelled on registration.
    init(
        state: ProxyState, logger: Logger, channel: any Channel, remote: String, deadline: Deadline,
        slot: ConnectionSlots.Slot? = nil
    ) {
        let config = state.config
        self.state = state
        self.slot = slot
        var logger = logger
        logger[metadataKey: "remote"] = "\(remote)"
        self.logger = logger
        self.remote = remote
        self.deadline = deadline
        self.loop = ControlChannelLoop(
            channel: channel,
            peer: "agent",
            heartbeatInterval: config.heartbeatInterval,
            heartbeatTimeout: config.heartbeatTimeout,
            stamp: MonotonicMillis.now
        )
        self.machine = Mutex(
            ProxyControlStateMachine(heartbeatSeconds: config.heartbeatInterval) { [state] in
                state.credentials(for: $0)
            }
        )
    }

    /// Runs the channel, whose first line was `hello`, until it closes.
    func run(hello: ControlMessage, reader: InboundReader, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async {
        self.received(hello, at: MonotonicMillis.now())
        await self.loop.run(self, reader: reader, outbound: outbound)
        let reason = self.loop.reason
        if let link = self.link.withLock({ $0 }) {
            self.state.unregister(link)
            self.logger.info("agent disconnected", metadata: ["agent": "\(link.id)", "reason": "\(reason)"])
        } else if reason != Self.authenticationFailed {
            // (A failed proof was logged already, at most once per interval per source.)
            self.logger.warning("control channel closed before registration", metadata: ["reason": "\(reason)"])
        }
    }

    func received(_ message: ControlMessage, at receivedAt: UInt64) {
        self.perform(self.machine.withLock { $0.receive(message) })
    }

    func receivedInvalid(_ error: ProtocolError) {
        self.perform(self.machine.withLock { $0.receiveInvalid(error) })
    }

    var heartbeatsStarted: Bool { self.link.withLock { $0 != nil } }

    func heartbeatExpired(after timeout: Double) {
        self.perform(self.machine.withLock { $0.close(.timeout, "no heartbeat for \(timeout)s") })
    }

    var endOfStreamReason: String { self.deadline.expired ? "handshake timeout" : "closed by agent" }

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
                self.loop.send(message)
            case .fail(let error):
                self.loop.noteClose("protocol error: \(error)")
                self.loop.close(after: error.errorMessage)
            case .authenticationFailed(let agent, let failure):
                let why = failure == .unknownAgent ? "unknown agent id" : "wrong secret (bad proof)"
                self.failedProof(agent: agent, known: failure != .unknownAgent, why: why)
                self.loop.noteClose(Self.authenticationFailed)
            case .agentReady(let agent, let services, let offered):
                self.register(agent: agent, services: services, offered: Set(offered))
            case .sessionRefused(let refuse):
                let agent = self.link.withLock { $0?.id }
                if let session = self.state.session(refuse.session), session.agent == agent {
                    session.fail(.refused(refuse.code, String(refuse.message.prefix(ProtocolLimits.maxReasonLength))))
                }
            case .pongReceived(let seq):
                let roundTrip = self.loop.pong(seq: seq)
                self.link.withLock { $0?.roundTrip = roundTrip }
            case .peerError(let report):
                self.loop.noteClose(
                    "agent reported \(report.code.rawValue): \(report.message.prefix(ProtocolLimits.maxReasonLength))")
                self.loop.close()
            case .agentRestarting(let agent):
                // Its clients wait for its next process instead of being refused (docs/restart.md).
                self.state.agentGrace.expect(agent, within: Handover.agentGraceSeconds)
                self.logger.info(
                    "agent restarting: its clients wait for it",
                    metadata: ["agent": "\(agent)", "graceSeconds": "\(Handover.agentGraceSeconds)"])
            }
        }
    }

    private static let authenticationFailed = "authentication failed"

    /// Counts a failed proof towards the source's and the agent id's backoff, and logs it at
    /// most once per interval per source.
    private func failedProof(agent: String, known: Bool, why: String) {
        let source = IPAddress(endpoint: self.remote) ?? IPAddress(bytes: [0, 0, 0, 0])
        let limits = self.state.config.limits
        let limitCounters = self.state.limits
        limitCounters.note(
            "failedProof", source: "\(source) \(agent.prefix(64))", logger: self.logger,
            "agent authentication failed: \(why)",
            metadata: ["agent": "\(agent.prefix(64))"])
        let tripped = self.state.proofBackoff.failed(
            agent: known ? agent : "", source: source, maxPerSource: limits.maxFailedProofsPerSource,
            maxPerAgent: known ? limits.maxFailedProofsPerAgent : .max)
        if let backoff = tripped.source {
            limitCounters.hit(
                LimitName.failedProofsPerSource, source: "\(source)", logger: self.logger,
                "too many failed proofs from this address: its agent-port connections are refused for \(AgentPort.seconds(backoff))"
            )
        }
        if let backoff = tripped.agent {
            limitCounters.hit(
                LimitName.failedProofsPerAgent, source: String(agent.prefix(64)), logger: self.logger,
                "too many failed proofs for this agent id: it is refused for \(AgentPort.seconds(backoff)) (except from the address it last authenticated from)"
            )
        }
    }

    private func register(agent: String, services: [String], offered: Set<String>) {
        self.deadline.cancel()
        self.slot?.release()
        if let source = IPAddress(endpoint: self.remote) {
            self.state.proofBackoff.succeeded(agent: agent, source: source)
        }
        self.loop.heard()
        let link = AgentLink(
            id: agent, remote: self.remote, services: services, offered: offered,
            provedSecret: self.machine.withLock { $0.provedSecret }, loop: self.loop)
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
