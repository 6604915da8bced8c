import Synchronization

/// Counts connections held in some state (on the agent port: not yet authenticated), in
/// total and per source address, and refuses one that would go past either maximum.
///
/// A connection takes a ``Slot`` when it is accepted and gives it back, once, when it leaves
/// that state (authenticated, attached) or closes: dropping the slot gives it back too.
public final class ConnectionSlots: Sendable {
    /// Which maximum refused a connection.
    public enum Refusal: Error, Sendable, Equatable {
        case total
        case perSource
    }

    private struct Counts {
        var total = 0
        var bySource: [IPAddress: Int] = [:]
    }

    private let counts = Mutex(Counts())

    /// Empty slots.
    public init() {}

    /// Connections held now, in total.
    public var total: Int { self.counts.withLock { $0.total } }

    /// Connections held now from `source`.
    public func held(by source: IPAddress) -> Int { self.counts.withLock { $0.bySource[source] ?? 0 } }

    /// A slot for a connection from `source`, or which maximum it would pass.
    public func take(source: IPAddress, maxTotal: Int, maxPerSource: Int) -> Result<Slot, Refusal> {
        self.counts.withLock { counts in
            if counts.total >= maxTotal { return .failure(.total) }
            if counts.bySource[source, default: 0] >= maxPerSource { return .failure(.perSource) }
            counts.total += 1
            counts.bySource[source, default: 0] += 1
            return .success(Slot(slots: self, source: source))
        }
    }

    fileprivate func release(_ source: IPAddress) {
        self.counts.withLock { counts in
            counts.total -= 1
            let left = (counts.bySource[source] ?? 1) - 1
            counts.bySource[source] = left > 0 ? left : nil
        }
    }

    /// One connection's place: given back by ``release()`` or when dropped.
    public final class Slot: Sendable {
        private let slots: ConnectionSlots
        private let source: IPAddress
        private let held = Atomic<Bool>(true)

        fileprivate init(slots: ConnectionSlots, source: IPAddress) {
            self.slots = slots
            self.source = source
        }

        /// Gives the place back (once; later calls do nothing).
        public func release() {
            guard self.held.exchange(false, ordering: .relaxed) else { return }
            self.slots.release(self.source)
        }

        deinit { self.release() }
    }
}
