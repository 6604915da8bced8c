import NIOCore
import RelayProtocol
import Synchronization
import Testing

@testable import RelayCore

extension IOTests {
    /// `ControlChannelLoop` on one end of a real connection, with a handler that records what
    /// the loop hands it; the test is the peer at the other end.
    @Suite(.timeLimit(.minutes(1)))
    struct ControlChannelLoopTests {
        @Test func messagesQueuedBeforeRunGoOutFirstAndInOrder() async throws {
            let handler = RecordingHandler()
            try await Self.withLoop(handler: handler) { loop in
                for seq in 1...3 { #expect(loop.send(.ping(.init(seq: UInt64(seq))))) }
            } body: { loop, peer, _ in
                #expect(loop.send(.ping(.init(seq: 4))))
                var seqs: [UInt64] = []
                for _ in 1...4 {
                    if case .ping(let ping)? = try await peer.reader.readMessage() { seqs.append(ping.seq) }
                }
                #expect(seqs == [1, 2, 3, 4])
            }
        }

        @Test func closeAfterSendsTheLastMessageThenCloses() async throws {
            let handler = RecordingHandler()
            try await Self.withLoop(handler: handler) { loop, peer, ended in
                let bye = ControlMessage.error(.init(code: .shuttingDown, message: "bye"))
                #expect(loop.send(.ping(.init(seq: 1))))
                loop.close(after: bye)
                loop.send(.ping(.init(seq: 2)))
                var messages: [ControlMessage] = []
                while let message = try await peer.reader.readMessage() { messages.append(message) }
                #expect(messages == [.ping(.init(seq: 1)), bye], "then the end of stream")
                #expect(await ended.wait(seconds: 5), "the loop did not stop once its channel closed")
            }
        }

        /// The outbox holds `outboxLimit` messages and refuses the next; all it took go out in order.
        @Test func theOutboxRefusesPastItsLimit() async throws {
            let handler = RecordingHandler()
            let limit = ControlChannelLoop.outboxLimit
            try await Self.withLoop(handler: handler) { loop in
                var accepted = 0
                for seq in 1...limit where loop.send(.ping(.init(seq: UInt64(seq)))) { accepted += 1 }
                #expect(accepted == limit)
                #expect(!loop.send(.ping(.init(seq: 0))))
            } body: { loop, peer, _ in
                var seqs: [UInt64] = []
                for _ in 1...limit {
                    if case .ping(let ping)? = try await peer.reader.readMessage() { seqs.append(ping.seq) }
                }
                #expect(seqs == (1...limit).map(UInt64.init))
            }
        }

        /// A peer that stops reading fills the socket, then the outbox: `send` says no, and
        /// memory stays bounded. Once the peer reads again everything taken arrives, in order,
        /// and `send` takes messages again.
        @Test func aPeerThatDoesNotReadFillsTheOutbox() async throws {
            let handler = RecordingHandler()
            let filler = String(repeating: "x", count: 8000)
            let cap = 20_000
            try await Self.withLoop(handler: handler) { loop, peer, _ in
                var accepted = 0
                while accepted < cap, loop.send(.error(.init(code: .timeout, message: "\(accepted) \(filler)"))) {
                    accepted += 1
                    // Pacing, so the writer drains into the socket while there is room.
                    if accepted % 32 == 0 { try await Task.sleep(for: .milliseconds(1)) }
                }
                print(
                    "figure: outbox: refused after \(accepted) messages of 8 KiB "
                        + "(\(accepted - ControlChannelLoop.outboxLimit) beyond the outbox limit went into the socket)")
                #expect(accepted < cap, "send never said no")
                var inOrder = 0
                for index in 0..<accepted {
                    guard case .error(let report)? = try await peer.reader.readMessage(),
                        report.message.hasPrefix("\(index) ")
                    else { break }
                    inOrder += 1
                }
                #expect(inOrder == accepted)
                #expect(loop.send(.ping(.init(seq: 1))))
                #expect(try await peer.reader.readMessage() == .ping(.init(seq: 1)))
            }
        }

        @Test func pingsStartOnlyOnceHeartbeatsStart() async throws {
            let handler = RecordingHandler(heartbeatsStarted: false)
            let interval = 0.2
            let window = 1.2
            try await Self.withLoop(handler: handler, interval: interval, timeout: 60) { _, peer, _ in
                let arrivals = Arrivals(peer)
                // Three intervals in which no ping may go out.
                try await Task.sleep(for: .seconds(3 * interval))
                let started = ContinuousClock.now
                handler.startHeartbeats()
                // Then one ping per interval, though the loop ticks four times as often. A
                // loaded machine may delay a ping's arrival, never send one early: the pings
                // arrived by the end of the window are at most one per interval, plus the first.
                try await Task.sleep(for: .seconds(window))
                let pings = arrivals.pings.filter { $0.at <= started + .seconds(window) }
                let first = pings.first.map { ($0.at - started).inSeconds * 1000 } ?? -1
                print(
                    "figure: heartbeat: first ping \(Int(first)) ms after the start, \(pings.count) pings in the "
                        + "\(Int(window * 1000)) ms after it (interval \(Int(interval * 1000)) ms)")
                #expect(arrivals.pings.allSatisfy { $0.at >= started }, "a ping went out before heartbeats started")
                #expect(pings.map(\.seq) == (0..<pings.count).map { UInt64($0 + 1) })
                #expect(pings.count >= 2)
                #expect(Double(pings.count) <= window / interval + 1, "more than one ping per interval")
            }
        }

        @Test func aSilentPeerExpiresTheHeartbeat() async throws {
            let handler = RecordingHandler()
            let (interval, timeout) = (0.25, 1.0)
            let created = ContinuousClock.now
            try await Self.withLoop(handler: handler, interval: interval, timeout: timeout) { loop, peer, ended in
                // The peer reads (pings arrive) but never answers, until the loop closes the channel.
                let read = try await Timing.withTimeout(10) { () -> (pings: Int, last: ControlMessage?) in
                    var pings = 0
                    var last: ControlMessage?
                    while let message = try await peer.reader.readMessage() {
                        if case .ping = message { pings += 1 }
                        last = message
                    }
                    return (pings, last)
                }
                let expiredAt = handler.expiredAt
                let after = expiredAt.map { ($0 - created).inSeconds * 1000 } ?? -1
                print(
                    "figure: heartbeat: a silent peer expired after \(Int(after)) ms "
                        + "(timeout \(Int(timeout * 1000)) ms, tick \(Int(Self.tick(interval) * 1000)) ms, "
                        + "\(read?.pings ?? 0) pings sent)")
                #expect(read != nil, "the loop never closed the channel")
                #expect(expiredAt != nil)
                #expect(after >= timeout * 1000)
                #expect(after <= (timeout + Self.tick(interval) + 1) * 1000)
                #expect((read?.pings ?? 0) >= 1)
                #expect(read?.last == .error(.init(code: .timeout, message: "silent for \(timeout)s")))
                #expect(await ended.wait(seconds: 5))
                #expect(loop.reason.hasPrefix("heartbeat timeout"), "\(loop.reason)")
            }
        }

        @Test func aPeerThatAnswersStaysAlive() async throws {
            let handler = RecordingHandler()
            let (interval, timeout) = (0.1, 1.0)
            try await Self.withLoop(handler: handler, interval: interval, timeout: timeout) { _, peer, _ in
                // Two and a half timeouts' worth of answered pings.
                let end = ContinuousClock.now + .seconds(2.5 * timeout)
                var answered = 0
                while ContinuousClock.now < end, case .ping(let ping)? = try await peer.reader.readMessage() {
                    try await peer.writer.write(ControlCodec.encode(.pong(.init(seq: ping.seq))))
                    answered += 1
                }
                #expect(answered >= 5)
                #expect(handler.expiredAt == nil, "expired although the peer answered every ping")
            }
        }

        @Test func thePeersEndOfStreamGivesTheHandlersReason() async throws {
            let handler = RecordingHandler()
            try await Self.withLoop(handler: handler) { loop, peer, ended in
                try await peer.finishWriting()
                #expect(await ended.wait(seconds: 5), "the loop did not stop at the peer's end of stream")
                #expect(loop.reason == handler.endOfStreamReason)
                #expect(try await peer.reader.readMessage() == nil, "the loop did not close its channel")
            }
        }

        @Test func invalidLinesReachTheHandler() async throws {
            let handler = RecordingHandler()
            try await Self.withLoop(handler: handler) { _, peer, ended in
                try await peer.write("not json\n" + #"{"type":"bogus"}"# + "\n" + #"{"type":"ping","seq":5}"# + "\n")
                #expect(await handler.nextReceived() == .ping(.init(seq: 5)))
                #expect(handler.invalid.map(\.code) == [.badJSON, .unknownType])
                // An over-long line ends the reading: the framer cannot find the next line.
                try await peer.write(String(repeating: "y", count: ProtocolLimits.maxLineBytes + 1))
                #expect(await ended.wait(seconds: 5), "the loop kept reading after an over-long line")
                #expect(handler.invalid.map(\.code) == [.badJSON, .unknownType, .lineTooLong])
            }
        }

        // MARK: - Helpers

        /// The heartbeat tick `ControlChannelLoop` uses for `interval`.
        static func tick(_ interval: Double) -> Double {
            max(
                ControlChannelLoop.shortestTick,
                min(ControlChannelLoop.longestTick, interval / ControlChannelLoop.ticksPerInterval))
        }

        /// Runs a loop on one end of a fresh connection with `handler`, calling `beforeRun` on it
        /// first; `body` gets the loop, the other end, and a flag raised when `run` returns.
        static func withLoop(
            handler: RecordingHandler,
            interval: Double = 30,
            timeout: Double = 90,
            beforeRun: (ControlChannelLoop) throws -> Void = { _ in },
            body: (ControlChannelLoop, Peer, Flag) async throws -> Void
        ) async throws {
            try await Loopback.withConnection { local, peer in
                let loop = ControlChannelLoop(
                    channel: local.channel, peer: "test peer", heartbeatInterval: interval, heartbeatTimeout: timeout)
                handler.serve(loop)
                try beforeRun(loop)
                let ended = Flag()
                let run = Task {
                    await loop.run(handler, reader: local.reader, outbound: local.writer)
                    ended.raise()
                }
                do {
                    try await body(loop, peer, ended)
                } catch {
                    local.channel.close(promise: nil)
                    await run.value
                    throw error
                }
                local.channel.close(promise: nil)
                await run.value
            }
        }
    }
}

/// The pings a peer reads, with when each arrived, recorded by a task of its own until the
/// peer's stream ends.
final class Arrivals: Sendable {
    private let store = Mutex<[(seq: UInt64, at: ContinuousClock.Instant)]>([])

    init(_ peer: Peer) {
        Task {
            while let message = try? await peer.reader.readMessage() {
                if case .ping(let ping) = message { self.store.withLock { $0.append((ping.seq, .now)) } }
            }
        }
    }

    var pings: [(seq: UInt64, at: ContinuousClock.Instant)] { self.store.withLock { $0 } }
}

/// A control channel end that records what the loop hands it; on a heartbeat timeout it
/// says so to the peer and closes, as both daemons' ends do.
final class RecordingHandler: ControlChannelHandler {
    private let started: Atomic<Bool>
    private let invalidStore = Mutex<[ProtocolError]>([])
    private let expiredStore = Mutex<ContinuousClock.Instant?>(nil)
    private let loop = Mutex<ControlChannelLoop?>(nil)
    private let received: AsyncStream<ControlMessage>
    private let receivedInput: AsyncStream<ControlMessage>.Continuation

    init(heartbeatsStarted: Bool = true) {
        self.started = Atomic(heartbeatsStarted)
        (self.received, self.receivedInput) = AsyncStream.makeStream(of: ControlMessage.self)
    }

    /// The loop this handler closes on a heartbeat timeout.
    func serve(_ loop: ControlChannelLoop) {
        self.loop.withLock { $0 = loop }
    }

    func startHeartbeats() {
        self.started.store(true, ordering: .relaxed)
    }

    /// Errors the loop reported, in order.
    var invalid: [ProtocolError] { self.invalidStore.withLock { $0 } }

    /// When the heartbeat expired, if it did.
    var expiredAt: ContinuousClock.Instant? { self.expiredStore.withLock { $0 } }

    /// The next message the loop handed over (nil once the handler is gone).
    func nextReceived() async -> ControlMessage? {
        for await message in self.received { return message }
        return nil
    }

    func received(_ message: ControlMessage, at receivedAt: UInt64) {
        self.receivedInput.yield(message)
    }

    func receivedInvalid(_ error: ProtocolError) {
        self.invalidStore.withLock { $0.append(error) }
    }

    var heartbeatsStarted: Bool { self.started.load(ordering: .relaxed) }

    func heartbeatExpired(after timeout: Double) {
        self.expiredStore.withLock { $0 = $0 ?? .now }
        self.loop.withLock { $0 }?.close(after: .error(.init(code: .timeout, message: "silent for \(timeout)s")))
    }

    var endOfStreamReason: String { "test peer closed the channel" }
}
