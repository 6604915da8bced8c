import RelayCore
import Synchronization

/// Backoff after failed proofs (wrong secrets), per source address and per agent id.
///
/// Failures are counted in a window of ``window`` from the first one; the failure that
/// passes the maximum (`maxFailedProofsPerSource`, `maxFailedProofsPerAgent`) starts a
/// refusal of ``firstBackoff``; each later failure, until a whole window passed without one,
/// starts the next refusal, twice as long, up to ``longestBackoff``. While the source or the
/// agent id is refused, a `hello` is closed unanswered, except from the address that agent
/// last authenticated from (so that guessing at an agent's secret from elsewhere, or a
/// misconfigured agent behind the same address, does not lock the real agent out; data
/// channels are never refused by it). A success, a reload, or a window without failures
/// forgets the past.
final class ProofBackoff: Sendable {
    /// How long failures are counted together.
    static let window = Duration.seconds(60)
    /// The first refusal after the maximum was passed.
    static let firstBackoff = Duration.seconds(1)
    /// The longest refusal.
    static let longestBackoff = Duration.seconds(300)
    /// The most sources and agent ids remembered; past that, the oldest quiet ones are forgotten.
    static let maxRemembered = 65536

    private struct Record {
        var windowStart: ContinuousClock.Instant
        var failures = 0
        var refusedUntil: ContinuousClock.Instant?
        var nextBackoff = ProofBackoff.firstBackoff
    }

    private struct Store {
        var bySource: [IPAddress: Record] = [:]
        var byAgent: [String: Record] = [:]
        var lastGoodSource: [String: IPAddress] = [:]
    }

    private let store = Mutex(Store())

    /// How long a `hello` for `agent` from `source` is still refused because of the source's
    /// failures, if it is (never from the address `agent` last authenticated from).
    func refusal(source: IPAddress, agent: String, now: ContinuousClock.Instant = .now) -> Duration? {
        self.store.withLock { store in
            guard let until = store.bySource[source]?.refusedUntil, now < until,
                store.lastGoodSource[agent] != source
            else { return nil }
            return now.duration(to: until)
        }
    }

    /// Forgets every failure and refusal (a reload: the operator may have fixed a secret).
    func reset() {
        self.store.withLock { store in
            store.bySource.removeAll()
            store.byAgent.removeAll()
        }
    }

    /// How long a `hello` for `agent` from `source` is still refused, if it is.
    func refusal(agent: String, source: IPAddress, now: ContinuousClock.Instant = .now) -> Duration? {
        self.store.withLock { store in
            guard let until = store.byAgent[agent]?.refusedUntil, now < until,
                store.lastGoodSource[agent] != source
            else { return nil }
            return now.duration(to: until)
        }
    }

    /// Which maxima a failed proof for `agent` from `source` passed (each starts a refusal).
    struct Tripped: Equatable {
        var source: Duration?
        var agent: Duration?
    }

    /// Counts a failed proof; says which refusals it started and for how long.
    func failed(
        agent: String, source: IPAddress, maxPerSource: Int, maxPerAgent: Int, now: ContinuousClock.Instant = .now
    ) -> Tripped {
        self.store.withLock { store in
            if store.bySource.count + store.byAgent.count > Self.maxRemembered { Self.forgetQuiet(&store, now: now) }
            var tripped = Tripped()
            tripped.source = Self.count(&store.bySource[source], max: maxPerSource, now: now)
            tripped.agent = Self.count(&store.byAgent[agent], max: maxPerAgent, now: now)
            return tripped
        }
    }

    /// An agent authenticated from `source`: both records are forgotten, and the agent id's
    /// refusal no longer applies to that address.
    func succeeded(agent: String, source: IPAddress) {
        self.store.withLock { store in
            store.bySource[source] = nil
            store.byAgent[agent] = nil
            store.lastGoodSource[agent] = source
        }
    }

    private static func count(_ record: inout Record?, max: Int, now: ContinuousClock.Instant) -> Duration? {
        var current = record ?? Record(windowStart: now)
        if now - current.windowStart >= Self.window {
            // A quiet window resets the count; a whole window without any failure, the backoff too.
            let quiet = current.refusedUntil.map { now - $0 >= Self.window } ?? true
            current.windowStart = now
            current.failures = 0
            if quiet {
                current.nextBackoff = Self.firstBackoff
                current.refusedUntil = nil
            }
        }
        current.failures += 1
        var started: Duration?
        // Past the maximum, and after a refusal until a quiet window, every failure starts
        // the next, doubled refusal.
        if current.failures > max || current.refusedUntil != nil {
            started = current.nextBackoff
            current.refusedUntil = now + current.nextBackoff
            current.nextBackoff = min(current.nextBackoff * 2, Self.longestBackoff)
        }
        record = current
        return started
    }

    private static func forgetQuiet(_ store: inout Store, now: ContinuousClock.Instant) {
        func quiet(_ record: Record) -> Bool {
            now - record.windowStart >= Self.window && (record.refusedUntil.map { now >= $0 } ?? true)
        }
        store.bySource = store.bySource.filter { !quiet($0.value) }
        store.byAgent = store.byAgent.filter { !quiet($0.value) }
        if store.bySource.count + store.byAgent.count > Self.maxRemembered {
            store.bySource.removeAll()
            store.byAgent.removeAll()
        }
    }
}
