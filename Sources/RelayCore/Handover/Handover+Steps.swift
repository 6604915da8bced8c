import Glibc
import Logging
import RelayDataPlane

/// The steps of a handover both daemons take alike (docs/restart.md); each daemon adds its
/// own: the relay its listeners and agents, the agent its `restarting` line.
extension Handover {
    /// What a handover starts with: the restart job, the splice plane to freeze and the
    /// state memfd, already in systemd's store (the document is written into it later:
    /// systemd holds the same file). Nil, with one line saying why, when the daemon should
    /// drain as at a stop instead.
    public func begin(
        needed: Int, plane: (any DataPlane)?, memfdName: String, logger: Logger
    ) -> (job: String, splice: SpliceDataPlane, memfd: CInt)? {
        let job: String
        switch self.decide(needed) {
        case .handOver(let type):
            job = type
        case .drain(let reason):
            logger.info("stopping, not handing over", metadata: ["why": "\(reason)"])
            return nil
        }
        guard let splice = plane as? SpliceDataPlane else {
            logger.info("stopping, not handing over", metadata: ["why": "dataPlane is not splice"])
            return nil
        }
        let memfd = self.memfd(memfdName)
        guard memfd >= 0, self.store([(Self.stateName, memfd)]) else {
            if memfd >= 0 { _ = Glibc.close(memfd) }
            logger.warning(
                "stopping, not handing over", metadata: ["why": "systemd's file descriptor store refused a descriptor"])
            return nil
        }
        return (job, splice, memfd)
    }

    /// The frozen sessions matched to the daemon's own (by their splice id): a record each
    /// and its two sockets under their store names. A frozen session no daemon session
    /// owns is reset and logged.
    public static func collect<Session>(
        _ frozen: [FrozenSplice], sessions: [Session], spliceID: (Session) -> UInt64?,
        record: (Session, FrozenSplice) -> HandoverState.Session, logger: Logger
    ) -> (records: [HandoverState.Session], descriptors: [(name: String, descriptor: CInt)]) {
        var byID: [UInt64: Session] = [:]
        for session in sessions {
            if let id = spliceID(session) { byID[id] = session }
        }
        var records: [HandoverState.Session] = []
        var descriptors: [(name: String, descriptor: CInt)] = []
        for session in frozen {
            guard let owner = byID.removeValue(forKey: session.id) else {
                logger.warning("closing a spliced session this process no longer knows")
                session.first.reset()
                session.second.reset()
                continue
            }
            let carried = record(owner, session)
            records.append(carried)
            descriptors.append((Self.socketName(session: carried.id, first: true), session.first.rawValue))
            descriptors.append((Self.socketName(session: carried.id, first: false), session.second.rawValue))
        }
        return (records, descriptors)
    }

    /// Polls `condition` until it no longer holds (true) or `timeout` passes (false): how a
    /// handover waits for sessions to settle or to drain.
    public static func wait(
        while condition: () -> Bool, timeout: Duration, every interval: Duration = Self.pollInterval
    ) async -> Bool {
        let end = ContinuousClock.now + timeout
        while condition() {
            guard ContinuousClock.now < end, (try? await Task.sleep(for: interval)) != nil else {
                return false
            }
        }
        return true
    }

    /// How often ``wait(while:timeout:every:)`` looks again while sessions settle.
    public static let pollInterval = Duration.milliseconds(10)
    /// How often it looks again while the sessions that cannot be carried drain.
    public static let drainPollInterval = Duration.milliseconds(50)

    // MARK: - New process

    /// The state document the process before stored for `daemon`: read, checked, closed and
    /// removed from the store. Nil when there is none or it cannot be used; then every other
    /// inherited descriptor is closed and removed too, with a line saying why.
    public func readState(daemon: String, logger: Logger) -> HandoverState? {
        guard let descriptor = self.inherited[Self.stateName] else {
            for (name, descriptor) in self.inherited {
                logger.warning("closing a stored descriptor without a state document", metadata: ["name": "\(name)"])
                _ = Glibc.close(descriptor)
                self.remove(name)
            }
            return nil
        }
        defer {
            _ = Glibc.close(descriptor)
            self.remove(Self.stateName)
        }
        do {
            guard let bytes = HandoverFile.read(descriptor) else { throw HandoverStateError("cannot read it") }
            return try HandoverState.decode(bytes, daemon: daemon)
        } catch {
            logger.error("cannot use the state the process before handed over: \(error)")
            for (name, descriptor) in self.inherited where name != Self.stateName {
                _ = Glibc.close(descriptor)
                self.remove(name)
            }
            return nil
        }
    }

    /// The inherited descriptors sessions may claim (all but the state document's).
    public var unclaimed: [String: CInt] {
        var descriptors = self.inherited
        descriptors[Self.stateName] = nil
        return descriptors
    }

    /// Takes session `id`'s two sockets out of `unclaimed` and the store; nil (what was there
    /// reset, a line logged) when one is missing.
    public func takeSockets(
        of id: String, from unclaimed: inout [String: CInt], logger: Logger
    ) -> (first: Descriptor, second: Descriptor)? {
        let names = [true, false].map { Self.socketName(session: id, first: $0) }
        let first = unclaimed.removeValue(forKey: names[0])
        let second = unclaimed.removeValue(forKey: names[1])
        for name in names { self.remove(name) }
        guard let first, let second else {
            logger.warning("closing a handed-over session missing a socket", metadata: ["session": "\(id)"])
            for descriptor in [first, second].compactMap({ $0 }) { Descriptor(rawValue: descriptor).reset() }
            return nil
        }
        return (Descriptor(rawValue: first), Descriptor(rawValue: second))
    }

    /// Closes, and removes from the store, what no session claimed.
    public func closeUnclaimed(_ unclaimed: [String: CInt], logger: Logger) {
        for (name, descriptor) in unclaimed {
            logger.warning("closing a stored descriptor no session names", metadata: ["name": "\(name)"])
            _ = Glibc.close(descriptor)
            self.remove(name)
        }
    }
}

extension Duration {
    /// Whole milliseconds (what the handover lines log).
    public var wholeMilliseconds: Int64 {
        let (seconds, attoseconds) = self.components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
