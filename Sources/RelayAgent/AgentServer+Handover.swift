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
        guard
            let (job, splice, memfd) = self.handover.begin(
                needed: Handover.descriptorsNeeded(sessions: self.state.sessions.count, listeners: 0),
                plane: self.activePlane.withLock({ $0 }), memfdName: "relay-agent-state", logger: self.logger)
        else { return }
        let began = Date()
        let clock = ContinuousClock.now
        self.logger.info(
            "handing over to the next process", metadata: ["job": "\(job)", "sessions": "\(self.state.sessions.count)"])
        // 1. Each relay holds new clients for the next process; no new `connect` comes.
        let controls = self.state.relays.compactMap(\.control)
        _ = self.state.beginShutdown()
        for control in controls { control.sayRestarting() }
        // 2. Sessions still dialling or attaching settle (their pump starts, or they end),
        // within the connect timeout; the control channels' `restarting` lines go out.
        _ = await Handover.wait(
            while: {
                self.state.sessions.contains { $0.running == nil && $0.end == nil }
                    || self.state.relays.contains { $0.channel?.isActive == true }
            },
            timeout: .milliseconds(Int64(self.state.config.connectTimeout * 1000) + 1000))
        // 3. The splice plane stops; every plaintext session's sockets and state are collected.
        let (records, descriptors) = Handover.collect(
            await splice.freeze(), sessions: self.state.sessions, spliceID: { $0.running?.spliceID },
            record: { owner, frozen in
                HandoverState.Session(
                    id: owner.id, service: owner.service, agent: "", client: owner.client, target: owner.target,
                    relay: owner.relay.description, startedAt: owner.startedAt.timeIntervalSince1970,
                    forwardBytes: owner.meter.forward, backwardBytes: owner.meter.backward,
                    forward: .init(frozen.forward), backward: .init(frozen.backward))
            }, logger: self.logger)
        let document = HandoverState(
            daemon: Self.handoverDaemon, startedAt: began.timeIntervalSince1970, sessions: records)
        if !(HandoverFile.write(document.encoded(), to: memfd) && self.handover.store(descriptors)) {
            self.logger.error("the file descriptor store did not take every descriptor: sessions may be lost")
        }
        let carried = Set(records.map(\.id))
        let rest = self.state.sessions.filter { !carried.contains($0.id) }
        self.logger.info(
            "handed over",
            metadata: [
                "sessions": "\(records.count)", "draining": "\(rest.count)",
                "ms": "\((ContinuousClock.now - clock).wholeMilliseconds)",
            ])
        // 4. What cannot be carried (TLS data channels) drains as at a stop.
        if !rest.isEmpty {
            let uncarried = { self.state.sessions.filter { !carried.contains($0.id) } }
            await self.life.drain(
                uncarried, live: rest.count, graceful: true, timeout: .seconds(self.state.config.drainTimeout),
                waitForNoSessions: { timeout in
                    await Handover.wait(
                        while: { !uncarried().isEmpty }, timeout: timeout, every: Handover.drainPollInterval)
                })
        }
        exit(0)
    }

    // MARK: - New process

    /// The state document the process before stored, if any: read, checked and closed.
    func readHandedOver() -> HandoverState? {
        self.handover.readState(daemon: Self.handoverDaemon, logger: self.logger)
    }

    /// Takes over the sessions of `state`: each one's data channel and target connection go
    /// back on the splice plane, its unsent bytes first.
    func resume(_ state: HandoverState, dataPlane: any DataPlane) -> [(AgentSession, any PumpRunning)] {
        let splice = dataPlane as? SpliceDataPlane ?? SpliceDataPlane(plane: SpliceDataPlane.shared)
        let config = self.state.config
        var unclaimed = self.handover.unclaimed
        var resumed: [(AgentSession, any PumpRunning)] = []
        for record in state.sessions {
            guard let (first, second) = self.handover.takeSockets(of: record.id, from: &unclaimed, logger: self.logger)
            else { continue }
            guard self.state.session(record.id) == nil else {
                self.logger.warning(
                    "closing a handed-over session missing a socket", metadata: ["session": "\(record.id)"])
                first.reset()
                second.reset()
                continue
            }
            let data = OwnedSocket(first)
            let target = OwnedSocket(second)
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
        self.handover.closeUnclaimed(unclaimed, logger: self.logger)
        let handoverMs = Int((Date().timeIntervalSince1970 - state.startedAt) * 1000)
        self.logger.info(
            "resumed \(resumed.count) sessions from the process before",
            metadata: ["sessions": "\(resumed.count)", "handoverMs": "\(handoverMs)"])
        return resumed
    }
}
