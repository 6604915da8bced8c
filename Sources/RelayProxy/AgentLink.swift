import Foundation
import NIOCore
import RelayProtocol
import Synchronization

/// A registered agent's control channel, as the rest of the relay sees it: who it is,
/// what it serves, and a way to send it messages.
final class AgentLink: Sendable {
    /// What the control channel's writer task takes from the outbox.
    enum Outgoing: Sendable {
        case message(ControlMessage)
        case close
    }

    /// The most messages queued for one agent before new sessions for it are refused: an
    /// agent that stops reading cannot make the relay buffer without bound.
    static let outboxLimit = 1024

    let id: String
    let remote: String
    let connectedAt: Date
    /// The services the relay accepted at registration.
    let services: [String]
    /// Every service the agent offered; a reload may assign one of these to it later.
    let offered: Set<String>
    let channel: any Channel
    private let outbox: AsyncStream<Outgoing>.Continuation
    private let roundTripStore = Mutex<Duration?>(nil)

    init(
        id: String,
        remote: String,
        services: [String],
        offered: Set<String>,
        channel: any Channel,
        outbox: AsyncStream<Outgoing>.Continuation
    ) {
        self.id = id
        self.remote = remote
        self.connectedAt = Date()
        self.services = services
        self.offered = offered
        self.channel = channel
        self.outbox = outbox
    }

    /// The last heartbeat round trip.
    var roundTrip: Duration? {
        get { self.roundTripStore.withLock { $0 } }
        set { self.roundTripStore.withLock { $0 = newValue } }
    }

    /// Queues a message; `false` if the outbox is full or the channel is gone.
    func send(_ message: ControlMessage) -> Bool {
        if case .enqueued = self.outbox.yield(.message(message)) { return true }
        return false
    }

    /// Sends an `error` and closes the control channel (sessions already open go on). An
    /// agent whose outbox is full gets no explanation: its channel is closed at once.
    func close(_ code: ErrorCode, _ message: String) {
        _ = self.outbox.yield(.message(.error(.init(code: code, message: message))))
        if case .enqueued = self.outbox.yield(.close) { return }
        self.channel.close(promise: nil)
    }
}
