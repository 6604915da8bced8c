import Synchronization

/// The tickets one relay gave this agent, for resuming data channels' TLS sessions: bounded in
/// entries and in age, safe from any thread. A cache belongs to one relay and one verification
/// configuration (`TLSResumption` makes one per client TLS context), so a ticket is only ever
/// offered to the relay, server name, pin and CA it was obtained from.
public final class TLSSessionCache: Sendable {
    /// How many tickets are kept at most (the oldest goes first). A relay running BoringSSL
    /// issues two per connection and each is used once, so a handful covers a burst of opens.
    public static let defaultMaxEntries = 32
    /// How long a ticket is offered at most after it arrived, even if the relay allows longer
    /// (BoringSSL's servers allow 2 hours by default; TLS 1.3 caps it at 7 days).
    public static let defaultMaxAge: Duration = .seconds(3600)

    public let maxEntries: Int
    public let maxAge: Duration
    private let tickets = Mutex<[TLSTicket]>([])

    public init(maxEntries: Int = TLSSessionCache.defaultMaxEntries, maxAge: Duration = TLSSessionCache.defaultMaxAge) {
        self.maxEntries = max(1, maxEntries)
        self.maxAge = maxAge
    }

    /// The number of tickets held, expired ones included until the next `take`.
    public var count: Int { tickets.withLock { $0.count } }

    /// Keeps `ticket`, dropping the oldest beyond `maxEntries`.
    func store(_ ticket: TLSTicket) {
        let dropped: [TLSTicket] = tickets.withLock { list in
            list.append(ticket)
            let excess = list.count - maxEntries
            guard excess > 0 else { return [] }
            let oldest = Array(list.prefix(excess))
            list.removeFirst(excess)
            return oldest
        }
        _ = dropped  // freed here, outside the lock
    }

    /// The newest ticket still valid, removed if it may be used only once; expired ones are
    /// dropped on the way.
    func take(now: ContinuousClock.Instant = .now) -> TLSTicket? {
        var expired: [TLSTicket] = []
        let ticket: TLSTicket? = tickets.withLock { list in
            expired = list.filter { $0.expires <= now }
            list.removeAll { $0.expires <= now }
            guard let newest = list.last else { return nil }
            if newest.singleUse { list.removeLast() }
            return newest
        }
        expired.removeAll()  // freed here, outside the lock
        return ticket
    }

    /// Forgets every ticket (for example when the relay's identity can no longer be trusted).
    public func removeAll() {
        let all = tickets.withLock { list in
            let all = list
            list.removeAll()
            return all
        }
        _ = all
    }
}
