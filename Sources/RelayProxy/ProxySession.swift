import FoundationEssentials
import NIOCore
import RelayCore
import RelayProtocol
import Synchronization

/// Why a session ended before its data channel was joined.
enum SessionFailure: Error, CustomStringConvertible {
    case refused(ErrorCode, String)
    case attachTimeout(Double)
    case agentDisconnected
    case agentCongested
    case shuttingDown
    case killed
    case serviceRemoved

    var description: String {
        switch self {
        case .refused(let code, let message): "refused by agent (\(code.rawValue)): \(message)"
        case .attachTimeout(let seconds): "no data channel from the agent within \(seconds)s"
        case .agentDisconnected: "agent disconnected before attaching"
        case .agentCongested: "agent's control channel is congested"
        case .shuttingDown: "relay is shutting down"
        case .killed: "killed by operator"
        case .serviceRemoved: "service removed by a reload"
        }
    }
}

/// The data channel handed from the agent port to the waiting client task.
struct DataLink: Sendable {
    /// The data channel, positioned after its `attach` line.
    let endpoint: PumpEndpoint
    /// Succeeded by the client task once the pump is done, so the data channel's own task may close it.
    let done: EventLoopPromise<Void>
}

/// One client connection's session at the relay (S5–S20), from accept to close.
final class ProxySession: Sendable {
    /// Where a session is in its life.
    enum Phase: Sendable {
        /// Waiting for the agent's data channel; the promise is resolved exactly once.
        case pending(EventLoopPromise<DataLink>)
        /// Joined to this data channel; bytes flow.
        case open(dataChannel: any Channel)
        /// Ended, or failed before it opened.
        case closed
    }

    /// The outcome of presenting an attach for this session.
    enum ClaimResult {
        case claimed(EventLoopPromise<DataLink>)
        case notPending
        case badToken
    }

    let id: String
    let service: String
    let agent: String
    let client: String
    let token: String
    let startedAt = Date()
    let started = ContinuousClock.now
    let meter: TrafficMeter
    let telemetry: ServiceTelemetry
    let clientChannel: any Channel
    /// Completed when the agent's data channel is joined, or failed with a ``SessionFailure``.
    let attached: EventLoopFuture<DataLink>
    private let phaseStore: Mutex<Phase>
    private let terminationStore = Mutex<SessionFailure?>(nil)

    init(
        id: String, service: String, agent: String, client: String, clientChannel: any Channel,
        telemetry: ServiceTelemetry
    ) {
        self.id = id
        self.service = service
        self.agent = agent
        self.client = client
        self.token = Tokens.make()
        self.telemetry = telemetry
        self.meter = TrafficMeter(sink: telemetry)
        self.clientChannel = clientChannel
        let promise = clientChannel.eventLoop.makePromise(of: DataLink.self)
        self.attached = promise.futureResult
        self.phaseStore = Mutex(.pending(promise))
    }

    /// The current phase.
    var phase: Phase { self.phaseStore.withLock { $0 } }

    /// Why the session was ended from outside, if it was.
    var termination: SessionFailure? { self.terminationStore.withLock { $0 } }

    /// Accepts an attach once, only while pending, only with the right token (constant time).
    func claim(token: String, dataChannel: any Channel) -> ClaimResult {
        self.phaseStore.withLock { phase in
            guard case .pending(let promise) = phase else { return .notPending }
            guard Tokens.matches(token, self.token) else { return .badToken }
            phase = .open(dataChannel: dataChannel)
            return .claimed(promise)
        }
    }

    /// Fails the session if it is still pending; `false` if it already attached or ended.
    @discardableResult
    func fail(_ failure: SessionFailure) -> Bool {
        let promise: EventLoopPromise<DataLink>? = self.phaseStore.withLock { phase in
            guard case .pending(let promise) = phase else { return nil }
            phase = .closed
            return promise
        }
        promise?.fail(failure)
        if promise != nil { self.telemetry.sessionRefused(reason: failure.metricReason) }
        return promise != nil
    }

    /// Marks the session ended.
    func markClosed() {
        self.phaseStore.withLock { $0 = .closed }
    }

    /// Ends the session from outside (operator kill, shutdown): resets the client (and the
    /// data channel, once joined), which ends the pump at once; a pending session also fails.
    func terminate(_ failure: SessionFailure) {
        self.terminationStore.withLock { $0 = failure }
        self.clientChannel.abort()
        if case .open(let dataChannel) = self.phase {
            dataChannel.abort()
        } else {
            self.fail(failure)
        }
    }
}
