import NIOCore
import RelayProtocol
import Synchronization
import Testing

@testable import RelayCore

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
        let interval = 0.1
        try await Self.withLoop(handler: handler, interval: interval, timeout: 10) { _, peer, _ in
            let arrivals = Self.record(peer)
            // Four intervals in which no ping may go out.
            try await Task.sleep(for: .seconds(4 * interval))
            let started = ContinuousClock.now
            handler.startHeartbeats()
            var pings: [(seq: UInt64, at: ContinuousClock.Instant)] = []
            for await (message, at) in arrivals {
                guard case .ping(let ping) = message else { continue }
                pings.append((ping.seq, at))
                if pings.count == 3 { break }
            }
            let first = pings.first.map { ($0.at - started).inSeconds * 1000 } ?? -1
            let spacing = pings.count == 3 ? (pings[2].at - pings[0].at).inSeconds * 500 : -1
            print("figure: heartbeat: first ping \(Int(first)) ms after the start, then one every \(Int(spacing)) ms")
            #expect(pings.map(\.seq) == [1, 2, 3])
            #expect(pings.allSatisfy { $0.at >= started }, "a ping went out before heartbeats started")
            #expect(first <= (interval + Self.tick(interval) + 0.5) * 1000)
            #expect(spacing >= interval * 1000 / 2, "a ping on every tick, not every interval")
        }
    }

    @Test func aSilentPeerExpiresTheHeartbeat() async throws {
        let handler = RecordingHandler()
        let (interval, timeout) = (0.1, 0.5)
        let created = ContinuousClock.now
        try await Self.withLoop(handler: handler, interval: interval, timeout: timeout) { loop, peer, ended in
            // The peer reads (pings arrive) but never answers.
            var pings = 0
            var last: ControlMessage?
            while let message = try await peer.reader.readMessage() {
                if case .ping = message { pings += 1 }
                last = message
            }
            let expiredAt = handler.expiredAt
            let after = expiredAt.map { ($0 - created).inSeconds * 1000 } ?? -1
            print(
                "figure: heartbeat: a silent peer expired after \(Int(after)) ms "
                    + "(timeout \(Int(timeout * 1000)) ms, \(pings) pings sent)")
            #expect(expiredAt != nil)
            #expect(after >= timeout * 1000)
            #expect(after <= (timeout + Self.tick(interval) + 0.5) * 1000)
            #expect(pings >= 3)
            #expect(last == .error(.init(code: .timeout, message: "silent for \(timeout)s")))
            #expect(await ended.wait(seconds: 5))
            #expect(loop.reason.hasPrefix("heartbeat timeout"), "\(loop.reason)")
        }
    }

    @Test func aPeerThatAnswersStaysAlive() async throws {
        let handler = RecordingHandler()
        let (interval, timeout) = (0.1, 0.5)
        try await Self.withLoop(handler: handler, interval: interval, timeout: timeout) { _, peer, _ in
            // Three timeouts' worth of answered pings.
            let end = ContinuousClock.now + .seconds(3 * timeout)
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

    /// Every message `peer` reads, with when it arrived, until its stream ends.
    static func record(_ peer: Peer) -> AsyncStream<(ControlMessage, ContinuousClock.Instant)> {
        let (stream, input) = AsyncStream.makeStream(of: (ControlMessage, ContinuousClock.Instant).self)
        Task {
            while let message = try? await peer.reader.readMessage() { input.yield((message, .now)) }
            input.finish()
        }
        return stream
    }
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

    func received(_ message: ControlMessage) {
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
