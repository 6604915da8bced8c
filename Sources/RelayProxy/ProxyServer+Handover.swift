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
        let decision = self.handover.decide(
            Handover.descriptorsNeeded(sessions: self.state.sessions.count, listeners: listenerCount))
        guard case .handOver(let job) = decision else {
            if case .drain(let reason) = decision {
                self.logger.info("stopping, not handing over", metadata: ["why": "\(reason)"])
            }
            return
        }
        guard let splice = self.activePlane.withLock({ $0 }) as? SpliceDataPlane else {
            self.logger.info("stopping, not handing over", metadata: ["why": "dataPlane is not splice"])
            return
        }
        let began = Date()
        let clock = ContinuousClock.now
        // The state memfd goes first: if the store takes it, it takes the rest (the document
        // is written into it later: systemd holds the same file).
        let memfd = self.handover.memfd("relay-proxy-state")
        guard memfd >= 0, self.handover.store([(Handover.stateName, memfd)]) else {
            if memfd >= 0 { _ = Glibc.close(memfd) }
            self.logger.warning(
                "stopping, not handing over", metadata: ["why": "systemd's file descriptor store refused a descriptor"])
            return
        }
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
        let settled = ContinuousClock.now + .milliseconds(Int64(self.state.config.attachTimeout * 1000) + 1000)
        while self.state.sessions.contains(where: { $0.running == nil && $0.end == nil }),
            ContinuousClock.now < settled
        {
            try? await Task.sleep(for: .milliseconds(10))
        }
        detach(Self.agentPortName)

        // 3. The splice plane stops; every plaintext session's sockets and state are collected.
        let frozen = await splice.freeze()
        var byID: [UInt64: ProxySession] = [:]
        for session in self.state.sessions {
            if let id = session.running?.spliceID { byID[id] = session }
        }
        var records: [HandoverState.Session] = []
        var descriptors = listeners
        for session in frozen {
            guard let owner = byID.removeValue(forKey: session.id) else {
                self.logger.warning("closing a spliced session the relay no longer knows")
                session.first.reset()
                session.second.reset()
                continue
            }
            records.append(
                HandoverState.Session(
                    id: owner.id, service: owner.service, agent: owner.agent, client: owner.client,
                    startedAt: owner.startedAt.timeIntervalSince1970, forwardBytes: owner.meter.forward,
                    backwardBytes: owner.meter.backward, forward: .init(session.forward),
                    backward: .init(session.backward)))
            descriptors.append((Handover.socketName(session: owner.id, first: true), session.first.rawValue))
            descriptors.append((Handover.socketName(session: owner.id, first: false), session.second.rawValue))
        }
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
            await self.life.drain(
                { self.state.sessions.filter { !carried.contains($0.id) } }, live: rest.count, graceful: true,
                timeout: .seconds(self.state.config.drainTimeout),
                waitForNoSessions: { timeout in
                    let end = ContinuousClock.now + timeout
                    while self.state.sessions.contains(where: { !carried.contains($0.id) }) {
                        guard ContinuousClock.now < end, (try? await Task.sleep(for: .milliseconds(50))) != nil
                        else { return false }
                    }
                    return true
                })
        }
        // The carried sessions' sockets stay open in systemd's store: exiting closes only
        // this process's copies (no FIN, no reset).
        exit(0)
    }

    // MARK: - New process

    /// The state document the process before stored, if any: read, checked and closed.
    func readHandedOver() -> HandoverState? {
        guard let descriptor = self.handover.inherited[Handover.stateName] else {
            for (name, descriptor) in self.handover.inherited {
                self.logger.warning(
                    "closing a stored descriptor without a state document", metadata: ["name": "\(name)"])
                _ = Glibc.close(descriptor)
                self.handover.remove(name)
            }
            return nil
        }
        defer {
            _ = Glibc.close(descriptor)
            self.handover.remove(Handover.stateName)
        }
        do {
            guard let bytes = HandoverFile.read(descriptor) else { throw HandoverStateError("cannot read it") }
            let state = try HandoverState.decode(bytes, daemon: Self.handoverDaemon)
            // Listeners the process before stored are this process's own from now on.
            self.adoptedOpen.withLock { $0.subtract(state.listeners) }
            for name in state.listeners { self.handover.remove(name) }
            return state
        } catch {
            self.logger.error("cannot use the state the process before handed over: \(error)")
            for (name, descriptor) in self.handover.inherited where name != Handover.stateName {
                _ = Glibc.close(descriptor)
                self.handover.remove(name)
            }
            return nil
        }
    }

    /// Takes over the sessions of `state`: each one's two sockets go back on the splice
    /// plane, its unsent bytes first; its clients' agents are expected back.
    func resume(_ state: HandoverState, dataPlane: any DataPlane) -> [(ProxySession, OwnedSocket)] {
        let splice = dataPlane as? SpliceDataPlane ?? SpliceDataPlane(plane: SpliceDataPlane.shared)
        for agent in state.agents { self.state.agentGrace.expect(agent, within: Handover.agentGraceSeconds) }
        var inherited = self.handover.inherited
        inherited[Handover.stateName] = nil
        var resumed: [(ProxySession, OwnedSocket)] = []
        for record in state.sessions {
            let names = [true, false].map { Handover.socketName(session: record.id, first: $0) }
            let first = inherited.removeValue(forKey: names[0])
            let second = inherited.removeValue(forKey: names[1])
            for name in names { self.handover.remove(name) }
            guard let first, let second else {
                self.logger.warning(
                    "closing a handed-over session missing a socket", metadata: ["session": "\(record.id)"])
                for descriptor in [first, second].compactMap({ $0 }) { Descriptor(rawValue: descriptor).reset() }
                continue
            }
            let client = OwnedSocket(Descriptor(rawValue: first))
            let data = OwnedSocket(Descriptor(rawValue: second))
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
        for (name, descriptor) in inherited {
            self.logger.warning("closing a stored descriptor no session names", metadata: ["name": "\(name)"])
            _ = Glibc.close(descriptor)
            self.handover.remove(name)
        }
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

extension Duration {
    /// Whole milliseconds.
    fileprivate var wholeMilliseconds: Int64 {
        let (seconds, attoseconds) = self.components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
