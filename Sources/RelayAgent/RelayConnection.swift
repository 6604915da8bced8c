import FoundationEssentials
import NIOCore
import RelayCore
import Synchronization

/// One relay the agent keeps a control channel to (`relay`, or each of `relays`): the
/// channel's condition as `relayctl status` reports it, the live channel, and what its own
/// reconnect loop needs (the flag and wakeup a reload sets). Each relay has its own loop,
/// backoff, heartbeats and TLS (docs/high-availability.md).
final class RelayConnection: Sendable {
    /// The control channel's condition.
    enum Condition: Sendable, Equatable {
        case connecting(attempt: Int)
        case connected(since: Date)
        case waiting(until: Date, lastError: String)
        case stopped
    }

    private struct Store {
        var condition: Condition = .connecting(attempt: 1)
        var channel: (any Channel)?
        var control: AgentControlChannel?
        /// The attempt number of the current or last connection attempt.
        var attempts = 0
        /// Why the last connection ended or failed.
        var lastError: String?
        /// When the current condition began.
        var since = Date()
        /// Set by a reload that needs a fresh control channel: reconnect without a backoff delay.
        var reconnectNow = false
        /// A reload removed this relay from the config: its loop ends.
        var removed = false
    }

    /// The relay's agent port.
    let address: HostPort
    private let store = Mutex(Store())
    /// Ends a backoff wait early when a reload changed what the agent dials with.
    let wakeups = Wakeup()

    init(address: HostPort) {
        self.address = address
    }

    /// The condition now; setting it keeps the attempt count, last error and start time.
    /// Returns whether the channel became connected (`true`) or stopped being so (`false`).
    @discardableResult
    func set(_ condition: Condition) -> Bool? {
        self.store.withLock { store in
            let was = if case .connected = store.condition { true } else { false }
            if case .connecting(let attempt) = condition { store.attempts = attempt }
            if case .waiting(_, let error) = condition { store.lastError = error }
            if case .connected = condition { store.attempts = 0 }
            if store.condition != condition { store.since = Date() }
            store.condition = condition
            let now = if case .connected = condition { true } else { false }
            return was == now ? nil : now
        }
    }

    var condition: Condition { self.store.withLock { $0.condition } }

    /// Whether the control channel is registered.
    var isConnected: Bool { if case .connected = self.condition { true } else { false } }

    /// Connection attempts since the last registration, the last error, and when the condition began.
    var history: (attempts: Int, lastError: String?, since: Date) {
        self.store.withLock { ($0.attempts, $0.lastError, $0.since) }
    }

    /// The live control channel's connection, if any.
    var channel: (any Channel)? { self.store.withLock { $0.channel } }

    /// The live control channel, if any.
    var control: AgentControlChannel? {
        get { self.store.withLock { $0.control } }
        set { self.store.withLock { $0.control = newValue } }
    }

    /// Records the live connection (nil when it closes).
    func setChannel(_ channel: (any Channel)?) {
        self.store.withLock { $0.channel = channel }
    }

    /// Takes the reconnect-now flag (clearing it).
    func takeReconnectNow() -> Bool {
        self.store.withLock { store in
            defer { store.reconnectNow = false }
            return store.reconnectNow
        }
    }

    /// A reload changed what the agent dials with: the loop reconnects at once. Returns
    /// whether a live channel was closed for it (else a backoff wait, if any, is ended).
    @discardableResult
    func reconnect() -> Bool {
        let channel = self.store.withLock { store in
            store.reconnectNow = true
            return store.channel
        }
        if let channel {
            channel.close(promise: nil)
            return true
        }
        self.wakeups.wake()
        return false
    }

    /// A reload removed the relay: its channel closes and its loop ends (sessions it asked
    /// for go on until they end).
    func remove() {
        let channel = self.store.withLock { store in
            store.removed = true
            store.condition = .stopped
            store.since = Date()
            return store.channel
        }
        channel?.close(promise: nil)
        self.wakeups.wake()
    }

    var isRemoved: Bool { self.store.withLock { $0.removed } }

    /// Shutdown: the condition becomes stopped; returns the channel to close.
    func stop() -> (any Channel)? {
        self.store.withLock { store in
            store.condition = .stopped
            store.since = Date()
            return store.channel
        }
    }
}
