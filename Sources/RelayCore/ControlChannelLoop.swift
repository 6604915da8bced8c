import NIOCore
import RelayProtocol
import Synchronization

/// What one end of a control channel decides; ``ControlChannelLoop`` does its I/O.
///
/// The relay's and the agent's ends differ only here: each feeds its own pure state machine
/// and carries out its actions, mostly by queueing messages on the loop.
public protocol ControlChannelHandler: Sendable {
    /// A line arrived and decoded, at `receivedAt` (``MonotonicMillis``).
    func received(_ message: ControlMessage, at receivedAt: UInt64)
    /// A line could not be framed or decoded (too long, not JSON, not a valid message).
    func receivedInvalid(_ error: ProtocolError)
    /// Whether heartbeats run yet: only once the handshake is done.
    var heartbeatsStarted: Bool { get }
    /// The peer stayed silent past the heartbeat timeout: the loop has recorded that as the
    /// close reason; the handler says so to the peer and closes the channel.
    func heartbeatExpired(after timeout: Double)
    /// Why the channel ended when the peer closed it (a handshake timeout looks the same).
    var endOfStreamReason: String { get }
}

/// The machinery both ends of a control channel share: a bounded outbox drained in order
/// by the channel's only writer task, a reader that turns lines into messages, and a
/// heartbeat ticker. ``run(_:reader:outbound:)`` runs all three until the reader stops.
public final class ControlChannelLoop: Sendable {
    /// What the writer task takes from the outbox.
    private enum Outgoing: Sendable {
        case message(ControlMessage)
        case close
    }

    /// The most messages queued for the peer before more are refused: a peer that stops
    /// reading cannot make either daemon buffer without bound. At the relay a full outbox
    /// refuses new sessions for that agent (`agent_congested`); at the agent it drops refusals,
    /// whose sessions the relay times out anyway.
    public static let outboxLimit = 1024

    /// The heartbeat is checked this often per heartbeat interval, so a dead peer is noticed
    /// within a quarter interval of its timeout...
    public static let ticksPerInterval = 4.0
    /// ...but at least this often (seconds), whatever the interval...
    public static let longestTick = 1.0
    /// ...and at most this often (seconds), however short the interval.
    public static let shortestTick = 0.01

    /// The connection this loop serves.
    private let channel: any Channel
    /// The peer, as close reasons name it ("agent", "relay").
    private let peer: String
    /// The heartbeat timeout in seconds and the tick, both changed by ``retune(heartbeatInterval:heartbeatTimeout:)``.
    private let timing: Mutex<(timeout: Double, tick: Duration)>
    private let heartbeat: Mutex<Heartbeat>
    private let closeReason = Mutex<String?>(nil)
    private let outbox: AsyncStream<Outgoing>
    private let outboxInput: AsyncStream<Outgoing>.Continuation
    /// The clock messages are stamped with (`at`) as they are queued: the relay's end.
    private let stamp: (@Sendable () -> UInt64)?

    /// Prepares the loop of `channel`, whose peer is called `peer` in close reasons, with
    /// the heartbeat interval and timeout in seconds; with `stamp`, every message that has an
    /// `at` field is stamped with its reading when queued.
    public init(
        channel: any Channel, peer: String, heartbeatInterval: Double, heartbeatTimeout: Double,
        stamp: (@Sendable () -> UInt64)? = nil
    ) {
        self.channel = channel
        self.peer = peer
        self.stamp = stamp
        self.timing = Mutex((heartbeatTimeout, Self.tick(for: heartbeatInterval)))
        self.heartbeat = Mutex(
            Heartbeat(interval: .seconds(heartbeatInterval), timeout: .seconds(heartbeatTimeout), now: .now)
        )
        (self.outbox, self.outboxInput) = AsyncStream.makeStream(
            of: Outgoing.self, bufferingPolicy: .bufferingOldest(Self.outboxLimit))
    }

    private static func tick(for interval: Double) -> Duration {
        .seconds(max(Self.shortestTick, min(Self.longestTick, interval / Self.ticksPerInterval)))
    }

    /// Applies reloaded heartbeat settings to the live channel.
    public func retune(heartbeatInterval: Double, heartbeatTimeout: Double) {
        self.timing.withLock { $0 = (heartbeatTimeout, Self.tick(for: heartbeatInterval)) }
        self.heartbeat.withLock {
            $0.retune(interval: .seconds(heartbeatInterval), timeout: .seconds(heartbeatTimeout), now: .now)
        }
    }

    /// Queues a message for the writer; `false` if the outbox is full or the channel is done.
    @discardableResult
    public func send(_ message: ControlMessage) -> Bool {
        let message = self.stamp.map { message.stamped(at: $0()) } ?? message
        if case .enqueued = self.outboxInput.yield(.message(message)) { return true }
        return false
    }

    /// Closes the channel once everything queued (and then `last`, if given) has gone out.
    /// When the outbox cannot take the close, the channel is closed at once.
    public func close(after last: ControlMessage? = nil) {
        if let last { self.send(last) }
        if case .enqueued = self.outboxInput.yield(.close) { return }
        self.channel.close(promise: nil)
    }

    /// Records why the channel closes; the first reason given wins.
    public func noteClose(_ reason: String) {
        self.closeReason.withLock { $0 = $0 ?? reason }
    }

    /// Why the channel closed (or is closing).
    public var reason: String { self.closeReason.withLock { $0 } ?? "closed" }

    /// Counts as a sign of life from the peer (a message, or registration just now).
    public func heard() {
        self.heartbeat.withLock { $0.heard(at: .now) }
    }

    /// Takes a `pong`, and returns the last heartbeat round trip.
    public func pong(seq: UInt64) -> Duration? {
        self.heartbeat.withLock { beat in
            beat.pong(seq: seq, at: .now)
            return beat.lastRoundTrip
        }
    }

    /// Runs the writer and the heartbeat ticker beside a reader in the calling task, until
    /// the peer closes, a read fails, or the handler closes the channel; then stops them.
    /// Messages queued before the call go out first.
    public func run(
        _ handler: some ControlChannelHandler,
        reader: InboundReader,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    ) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.write(to: outbound) }
            group.addTask { await self.beat(handler) }
            await self.read(from: reader, into: handler)
            self.outboxInput.yield(.close)
            self.outboxInput.finish()
            group.cancelAll()
        }
    }

    private func read(from reader: InboundReader, into handler: some ControlChannelHandler) async {
        do {
            while let line = try await reader.readLine() {
                self.heard()
                do {
                    handler.received(try ControlCodec.decode(line), at: MonotonicMillis.now())
                } catch {
                    handler.receivedInvalid(error)
                }
            }
            self.noteClose(handler.endOfStreamReason)
        } catch let error as ProtocolError {
            handler.receivedInvalid(error)
        } catch is CancellationError {
            self.noteClose("shutting down")
        } catch {
            self.noteClose("read error: \(Network.describe(error))")
        }
    }

    /// The only writer of the channel: messages go out in order, from one task.
    private func write(to outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async {
        writing: for await item in self.outbox {
            switch item {
            case .message(let message):
                do { try await outbound.write(ControlCodec.encode(message)) } catch { break writing }
            case .close:
                break writing
            }
        }
        self.channel.close(promise: nil)
    }

    /// Heartbeats, once the handler starts them: ping on time, give up on a silent peer.
    private func beat(_ handler: some ControlChannelHandler) async {
        while (try? await Task.sleep(for: self.timing.withLock { $0.tick })) != nil {
            guard handler.heartbeatsStarted else { continue }
            switch self.heartbeat.withLock({ $0.tick(at: .now) }) {
            case .none:
                break
            case .sendPing(let seq):
                self.send(.ping(.init(seq: seq)))
            case .expired:
                let timeout = self.timing.withLock { $0.timeout }
                self.noteClose("heartbeat timeout: \(self.peer) silent for over \(timeout)s")
                handler.heartbeatExpired(after: timeout)
                return
            }
        }
    }
}
