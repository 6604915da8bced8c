import Logging
import RelayControl
import Synchronization

/// Every limit a daemon enforces, in one place: each limit's maximum in force, how often it
/// was hit, and a rate-limited log line per hit, so that a flood of refusals costs one line
/// per ``logInterval`` per limit (or per limit and source) instead of one per connection.
///
/// What a hit means is the caller's business (it closes the connection); this records it,
/// logs it at most once per interval with the number of hits left unlogged since, and
/// tells the metrics (`relay_limit_hits_total{limit}`) through ``observe(_:)``.
public final class LimitCounters: Sendable {
    /// How often one limit (or one limit and source) may log a hit.
    public static let logInterval = Duration.seconds(60)
    /// The most sources whose last log time is remembered per limit; past that, hits from new
    /// sources share one log slot until the remembered ones age out.
    public static let maxRememberedSources = 4096

    private struct Limit {
        var max: Double?
        var hits = 0
    }

    private struct LogSlot {
        var lastLogged: ContinuousClock.Instant
        var suppressed = 0
    }

    private struct Store {
        var limits: [String: Limit] = [:]
        var slots: [String: [String: LogSlot]] = [:]
        var observer: (@Sendable (String) -> Void)?
    }

    private let store = Mutex(Store())
    private let interval: Duration

    /// Counters logging each limit (or limit and source) at most once per `logInterval`.
    public init(logInterval: Duration = LimitCounters.logInterval) {
        self.interval = logInterval
    }

    /// Calls `observer` with the limit's name at every hit (the metrics counter).
    public func observe(_ observer: @escaping @Sendable (String) -> Void) {
        self.store.withLock { $0.observer = observer }
    }

    /// Sets the maximum in force for `name` (config values change at reloads; hits stay).
    public func declare(_ name: String, max: Double?) {
        self.store.withLock { $0.limits[name, default: Limit(max: max)].max = max }
    }

    /// Sets several maxima at once.
    public func declare(_ limits: [(String, Double?)]) {
        for (name, max) in limits { self.declare(name, max: max) }
    }

    /// Counts a hit of `name` and logs `message` at warning level unless this limit (with
    /// `source`: this limit for this source) already logged within the interval; the line
    /// carries the limit's name, its maximum and how many hits went unlogged since the last line.
    public func hit(
        _ name: String, source: String? = nil, logger: Logger, _ message: @autoclosure () -> String,
        metadata: Logger.Metadata = [:]
    ) {
        self.record(name, count: true, source: source, logger: logger, message(), metadata: metadata)
    }

    /// Logs `message` like ``hit(_:source:logger:_:metadata:)`` (at most once per interval for
    /// `name` and `source`) without counting a hit: for events that lead to a limit, such as
    /// failed proofs.
    public func note(
        _ name: String, source: String? = nil, logger: Logger, _ message: @autoclosure () -> String,
        metadata: Logger.Metadata = [:]
    ) {
        self.record(name, count: false, source: source, logger: logger, message(), metadata: metadata)
    }

    private func record(
        _ name: String, count: Bool, source: String?, logger: Logger, _ message: @autoclosure () -> String,
        metadata: Logger.Metadata
    ) {
        let now = ContinuousClock.now
        let (log, max, suppressed, observer) = self.store.withLock {
            store -> (Bool, Double?, Int, (@Sendable (String) -> Void)?) in
            if count { store.limits[name, default: Limit(max: nil)].hits += 1 }
            let max = store.limits[name]?.max
            let observer = count ? store.observer : nil
            let key = source ?? ""
            var slots = store.slots[name] ?? [:]
            defer { store.slots[name] = slots }
            if var slot = slots[key] {
                if now - slot.lastLogged < self.interval {
                    slot.suppressed += 1
                    slots[key] = slot
                    return (false, max, 0, observer)
                }
                slots[key] = LogSlot(lastLogged: now)
                return (true, max, slot.suppressed, observer)
            }
            if slots.count >= Self.maxRememberedSources {
                slots = slots.filter { now - $0.value.lastLogged < self.interval }
                if slots.count >= Self.maxRememberedSources {
                    // Too many sources at once: they share the limit's own slot.
                    if let shared = slots[""], now - shared.lastLogged < self.interval {
                        slots[""]?.suppressed += 1
                        return (false, max, 0, observer)
                    }
                    slots[""] = LogSlot(lastLogged: now)
                    return (true, max, 0, observer)
                }
            }
            slots[key] = LogSlot(lastLogged: now)
            return (true, max, 0, observer)
        }
        observer?(name)
        guard log else { return }
        var metadata = metadata
        if count { metadata["limit"] = "\(name)" }
        if let max { metadata["max"] = "\(Self.format(max))" }
        if let source { metadata["source"] = "\(source)" }
        if suppressed > 0 { metadata["unlogged"] = "\(suppressed)" }
        let seconds = Self.format(self.interval.inSeconds)
        logger.warning("\(message()) (logged at most once per \(seconds)s)", metadata: metadata)
    }

    /// How many times `name` was hit.
    public func hits(_ name: String) -> Int {
        self.store.withLock { $0.limits[name]?.hits ?? 0 }
    }

    /// Every declared or hit limit, for `relayctl status`.
    public var report: [String: LimitReport] {
        self.store.withLock { store in store.limits.mapValues { LimitReport(max: $0.max, hits: $0.hits) } }
    }

    /// The names of every declared or hit limit.
    public var names: [String] { self.store.withLock { Array($0.limits.keys) } }

    static func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : "\(value)"
    }
}
