import FoundationEssentials
import Glibc
import Logging
import RelayCore
import RelayDataPlane

/// The restart path (docs/restart.md): at a SIGTERM that is a restart, the agent tells the
/// relay it is restarting, hands its live plaintext sessions (data channel and target) to
/// the next process through systemd's file descriptor store and exits; at start, it takes
/// back what the process before handed over.
extension AgentServer {
    /// The daemon name a state document must carry.
    static let handoverDaemon = "relay-agent"

    // MARK: - Old process

    /// Hands over and exits 0 when systemd restarts the unit and the store is usable; returns
    /// (to drain as a stop does) otherwise.
    func handOverIfRestarting() async {
        let decision = self.handover.decide(
            Handover.descriptorsNeeded(sessions: self.state.sessions.count, listeners: 0))
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
        let memfd = self.handover.memfd("relay-agent-state")
        guard memfd >= 0, self.handover.store([(Handover.stateName, memfd)]) else {
            if memfd >= 0 { _ = Glibc.close(memfd) }
            self.logger.warning(
                "stopping, not handing over", metadata: ["why": "systemd's file descriptor store refused a descriptor"])
            return
        }
        self.logger.info(
            "handing over to the next process", metadata: ["job": "\(job)", "sessions": "\(self.state.sessions.count)"])
        // 1. Each relay holds new clients for the next process; no new `connect` comes.
        let controls = self.state.relays.compactMap(\.control)
        _ = self.state.beginShutdown()
        for control in controls { control.sayRestarting() }
        // 2. Sessions still dialling or attaching settle (their pump starts, or they end),
        // within the connect timeout; the control channel's `restarting` line goes out.
        let settled = ContinuousClock.now + .milliseconds(Int64(self.state.config.connectTimeout * 1000) + 1000)
        let unsettled = { self.state.sessions.contains { $0.running == nil && $0.end == nil } }
        let saying = { self.state.relays.contains { $0.channel?.isActive == true } }
        while unsettled() || saying(), ContinuousClock.now < settled {
            try? await Task.sleep(for: .milliseconds(10))
        }
        // 3. The splice plane stops; every plaintext session's sockets and state are collected.
        let frozen = await splice.freeze()
        var byID: [UInt64: AgentSession] = [:]
        for session in self.state.sessions {
            if let id = session.running?.spliceID { byID[id] = session }
        }
        var records: [HandoverState.Session] = []
        var descriptors: [(name: String, descriptor: CInt)] = []
        for session in frozen {
            guard let owner = byID.removeValue(forKey: session.id) else {
                self.logger.warning("closing a spliced session the agent no longer knows")
                session.first.reset()
                session.second.reset()
                continue
            }
            records.append(
                HandoverState.Session(
                    id: owner.id, service: owner.service, agent: "", client: owner.client, target: owner.target,
                    relay: owner.relay.description,
                    startedAt: owner.startedAt.timeIntervalSince1970, forwardBytes: owner.meter.forward,
                    backwardBytes: owner.meter.backward, forward: .init(session.forward),
                    backward: .init(session.backward)))
            descriptors.append((Handover.socketName(session: owner.id, first: true), session.first.rawValue))
            descriptors.append((Handover.socketName(session: owner.id, first: false), session.second.rawValue))
        }
        let document = HandoverState(
            daemon: Self.handoverDaemon, startedAt: began.timeIntervalSince1970, sessions: records)
        if !(HandoverFile.write(document.encoded(), to: memfd) && self.handover.store(descriptors)) {
            self.logger.error("the file descriptor store did not take every descriptor: sessions may be lost")
        }
        let carried = Set(records.map(\.id))
        let rest = self.state.sessions.filter { !carried.contains($0.id) }
        let elapsed = ContinuousClock.now - clock
        self.logger.info(
            "handed over",
            metadata: [
                "sessions": "\(records.count)", "draining": "\(rest.count)",
                "ms": "\(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)",
            ])
        // 4. What cannot be carried (TLS data channels) drains as at a stop.
        if !rest.isEmpty {
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
            return try HandoverState.decode(bytes, daemon: Self.handoverDaemon)
        } catch {
            self.logger.error("cannot use the state the process before handed over: \(error)")
            for (name, descriptor) in self.handover.inherited where name != Handover.stateName {
                _ = Glibc.close(descriptor)
                self.handover.remove(name)
            }
            return nil
        }
    }

    /// Takes over the sessions of `state`: each one's data channel and target connection go
    /// back on the splice plane, its unsent bytes first.
    func resume(_ state: HandoverState, dataPlane: any DataPlane) -> [(AgentSession, any PumpRunning)] {
        let splice = dataPlane as? SpliceDataPlane ?? SpliceDataPlane(plane: SpliceDataPlane.shared)
        let config = self.state.config
        var inherited = self.handover.inherited
        inherited[Handover.stateName] = nil
        var resumed: [(AgentSession, any PumpRunning)] = []
        for record in state.sessions {
            let names = [true, false].map { Handover.socketName(session: record.id, first: $0) }
            let first = inherited.removeValue(forKey: names[0])
            let second = inherited.removeValue(forKey: names[1])
            for name in names { self.handover.remove(name) }
            guard let first, let second, self.state.session(record.id) == nil else {
                self.logger.warning(
                    "closing a handed-over session missing a socket", metadata: ["session": "\(record.id)"])
                for descriptor in [first, second].compactMap({ $0 }) { Descriptor(rawValue: descriptor).reset() }
                continue
            }
            let data = OwnedSocket(Descriptor(rawValue: first))
            let target = OwnedSocket(Descriptor(rawValue: second))
            // The relay that asked for it (the first one for a state from before `relays`).
            let relay = record.relay.flatMap { try? HostPort(parsing: $0) } ?? config.relays[0]
            let session = AgentSession(
                id: record.id, service: record.service, client: record.client, target: record.target ?? target.remote,
                relay: relay,
                telemetry: self.state.telemetry.service(record.service), halfCloseTimeout: config.halfCloseTimeout,
                resumed: record)
            guard let dataDescriptor = data.take(), let targetDescriptor = target.take() else { continue }
            let running = splice.resume(
                FrozenSplice(
                    id: 0, first: dataDescriptor, second: targetDescriptor, forward: record.forward.frozen,
                    backward: record.backward.frozen),
                meter: session.meter, limits: config.pumpLimits)
            session.resumed(data: data, target: target, running: running)
            self.state.add(session)
            session.telemetry.sessionOpened()
            resumed.append((session, running))
        }
        for (name, descriptor) in inherited {
            self.logger.warning("closing a stored descriptor no session names", metadata: ["name": "\(name)"])
            _ = Glibc.close(descriptor)
            self.handover.remove(name)
        }
        let handoverMs = Int((Date().timeIntervalSince1970 - state.startedAt) * 1000)
        self.logger.info(
            "resumed \(resumed.count) sessions from the process before",
            metadata: ["sessions": "\(resumed.count)", "handoverMs": "\(handoverMs)"])
        return resumed
    }
}
