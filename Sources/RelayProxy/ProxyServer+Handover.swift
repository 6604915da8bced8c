import FoundationEssentials
import Glibc
import Logging
import RelayCore
import RelayDataPlane

/// The restart path (docs/restart.md): at a SIGTERM that is a restart, the relay hands its
/// listeners and live plaintext sessions to the next process through systemd's file
/// descriptor store; at start, it takes back what the process before handed over.
extension ProxyServer {
    /// The daemon name a state document must carry.
    static let handoverDaemon = "relay-proxy"

    // MARK: - Old process

    /// Hands over and exits 0 when systemd restarts the unit and the store is usable; returns
    /// (to drain as a stop does) otherwise.
    func handOverIfRestarting() async {
        let listenerCount = self.listeners.withLock { $0.values.reduce(0) { $0 + $1.count } }
        // The state memfd goes first: if the store takes it, it takes the rest.
        guard
            let (job, splice, memfd) = self.handover.begin(
                needed: Handover.descriptorsNeeded(sessions: self.state.sessions.count, listeners: listenerCount),
                plane: self.activePlane.withLock({ $0 }), memfdName: "relay-proxy-state", logger: self.logger)
        else { return }
        let began = Date()
        let clock = ContinuousClock.now
        self.logger.info(
            "handing over to the next process", metadata: ["job": "\(job)", "sessions": "\(self.state.sessions.count)"])

        // 1. New clients wait in the listeners' backlogs.
        let fromUnits = self.adoptedOpen.withLock { $0 }
        var listeners: [(name: String, descriptor: CInt)] = []
        func detach(_ name: String) {
            for listener in self.listeners.withLock({ $0[name] ?? [] }) {
                guard let descriptor = listener.detach() else { continue }
                // A socket unit's listener is passed again anyway.
                if fromUnits.contains(name) {
                    _ = Glibc.close(descriptor)
                } else {
                    listeners.append((name, descriptor))
                }
            }
        }
        for name in self.listeners.withLock({ Array($0.keys) }).sorted() where name != Self.agentPortName {
            detach(name)
        }
        // 2. Sessions waiting for their data channel (or writing `attached`) start pumping
        // or fail, within the attach timeout; the agent port accepts their attaches meanwhile.
        _ = await Handover.wait(
            while: { self.state.sessions.contains { $0.running == nil && $0.end == nil } },
            timeout: .milliseconds(Int64(self.state.config.attachTimeout * 1000) + 1000))
        detach(Self.agentPortName)

        // 3. The splice plane stops; every plaintext session's sockets and state are collected.
        let (records, sessionDescriptors) = Handover.collect(
            await splice.freeze(), sessions: self.state.sessions, spliceID: { $0.running?.spliceID },
            record: { owner, frozen in
                HandoverState.Session(
                    id: owner.id, service: owner.service, agent: owner.agent, client: owner.client,
                    startedAt: owner.startedAt.timeIntervalSince1970, forwardBytes: owner.meter.forward,
                    backwardBytes: owner.meter.backward, forward: .init(frozen.forward),
                    backward: .init(frozen.backward))
            }, logger: self.logger)
        let descriptors = listeners + sessionDescriptors
        let document = HandoverState(
            daemon: Self.handoverDaemon, startedAt: began.timeIntervalSince1970,
            listeners: Array(Set(listeners.map(\.name))).sorted(), agents: self.state.agents.map(\.id).sorted(),
            sessions: records)
        let stored = HandoverFile.write(document.encoded(), to: memfd) && self.handover.store(descriptors)
        if !stored {
            self.logger.error("the file descriptor store did not take every descriptor: sessions may be lost")
        }
        let carried = Set(records.map(\.id))
        let rest = self.state.sessions.filter { !carried.contains($0.id) }
        self.logger.info(
            "handed over",
            metadata: [
                "sessions": "\(records.count)", "listeners": "\(listeners.count)",
                "draining": "\(rest.count)", "ms": "\((ContinuousClock.now - clock).wholeMilliseconds)",
            ])
        // 4. What cannot be carried (user space: TLS data channels) drains as at a stop.
        if !rest.isEmpty {
            for agent in self.state.agents { agent.close(.shuttingDown, "the relay is restarting") }
            let uncarried = { self.state.sessions.filter { !carried.contains($0.id) } }
            await self.life.drain(
                uncarried, live: rest.count, graceful: true, timeout: .seconds(self.state.config.drainTimeout),
                waitForNoSessions: { timeout in
                    await Handover.wait(
                        while: { !uncarried().isEmpty }, timeout: timeout, every: Handover.drainPollInterval)
                })
        }
        // The carried sessions' sockets stay open in systemd's store: exiting closes only
        // this process's copies (no FIN, no reset).
        exit(0)
    }

    // MARK: - New process

    /// The state document the process before stored, if any: read, checked and closed.
    func readHandedOver() -> HandoverState? {
        guard let state = self.handover.readState(daemon: Self.handoverDaemon, logger: self.logger) else { return nil }
        // Listeners the process before stored are this process's own from now on.
        self.adoptedOpen.withLock { $0.subtract(state.listeners) }
        for name in state.listeners { self.handover.remove(name) }
        return state
    }

    /// Takes over the sessions of `state`: each one's two sockets go back on the splice
    /// plane, its unsent bytes first; its clients' agents are expected back.
    func resume(_ state: HandoverState, dataPlane: any DataPlane) -> [(ProxySession, OwnedSocket)] {
        let splice = dataPlane as? SpliceDataPlane ?? SpliceDataPlane(plane: SpliceDataPlane.shared)
        for agent in state.agents { self.state.agentGrace.expect(agent, within: Handover.agentGraceSeconds) }
        var unclaimed = self.handover.unclaimed
        var resumed: [(ProxySession, OwnedSocket)] = []
        for record in state.sessions {
            guard let (first, second) = self.handover.takeSockets(of: record.id, from: &unclaimed, logger: self.logger)
            else { continue }
            let client = OwnedSocket(first)
            let data = OwnedSocket(second)
            guard let session = self.state.adoptSession(record, clientSocket: client),
                let clientDescriptor = client.take(), let dataDescriptor = data.take()
            else {
                client.reset()
                data.reset()
                continue
            }
            let running = splice.resume(
                FrozenSplice(
                    id: 0, first: clientDescriptor, second: dataDescriptor, forward: record.forward.frozen,
                    backward: record.backward.frozen),
                meter: session.meter, limits: session.pumpLimits)
            session.resumed(data: .socket(data), running: running)
            resumed.append((session, client))
        }
        self.handover.closeUnclaimed(unclaimed, logger: self.logger)
        let handoverMs = Int((Date().timeIntervalSince1970 - state.startedAt) * 1000)
        self.logger.info(
            "resumed \(resumed.count) sessions from the process before",
            metadata: [
                "sessions": "\(resumed.count)", "listeners": "\(state.listeners.count)",
                "agentsExpected": "\(state.agents.count)", "handoverMs": "\(handoverMs)",
            ])
        return resumed
    }
}
