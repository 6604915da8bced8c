import FoundationEssentials
import NIOCore
import RelayCore
import RelayProtocol
import Synchronization

/// A registered agent's control channel, as the rest of the relay sees it: who it is,
/// what it serves, and a way to send it messages.
final class AgentLink: Sendable {
    let id: String
    let remote: String
    let connectedAt: Date
    /// The services the relay accepted at registration.
    let services: [String]
    /// Every service the agent offered; a reload may assign one of these to it later.
    let offered: Set<String>
    /// The secret the agent proved at its handshake (a rotation window may still accept an
    /// old one); never logged.
    let provedSecret: Secret?
    private let loop: ControlChannelLoop
    private let roundTripStore = Mutex<Duration?>(nil)

    init(
        id: String,
        remote: String,
        services: [String],
        offered: Set<String>,
        provedSecret: Secret?,
        loop: ControlChannelLoop
    ) {
        self.id = id
        self.remote = remote
        self.connectedAt = Date()
        self.services = services
        self.offered = offered
        self.provedSecret = provedSecret
        self.loop = loop
    }

    /// The last heartbeat round trip.
    var roundTrip: Duration? {
        get { self.roundTripStore.withLock { $0 } }
        set { self.roundTripStore.withLock { $0 = newValue } }
    }

    /// Queues a message; `false` if the outbox (at most ``ControlChannelLoop/outboxLimit``
    /// messages) is full or the channel is gone.
    func send(_ message: ControlMessage) -> Bool {
        self.loop.send(message)
    }

    /// Applies reloaded heartbeat settings to this live channel.
    func retune(heartbeatInterval: Double, heartbeatTimeout: Double) {
        self.loop.retune(heartbeatInterval: heartbeatInterval, heartbeatTimeout: heartbeatTimeout)
    }

    /// Sends an `error` and closes the control channel (sessions already open go on). An
    /// agent whose outbox is full gets no explanation: its channel is closed at once.
    func close(_ code: ErrorCode, _ message: String) {
        self.loop.close(after: .error(.init(code: code, message: message)))
    }
}
