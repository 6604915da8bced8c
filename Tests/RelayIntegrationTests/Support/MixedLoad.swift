import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// A mixed load through one relay service: uploads, downloads, echoes, clients that
/// half-close first, and clients that reset midway, all against one ``MixedTarget`` that a
/// small header tells what to do. Every byte a client receives is checked against what it
/// must be, so a short or corrupt transfer cannot pass for a good one.
enum MixedLoad {
    /// What a session does.
    enum Kind: String, CaseIterable, Sendable {
        /// Sends `size` bytes and half-closes; the target answers with their SHA-256 and count.
        case upload
        /// Asks for `size` bytes and keeps its own side open until they have all arrived.
        case download
        /// Asks for `size` bytes and half-closes at once, then keeps reading.
        case halfClosedDownload
        /// Sends `size` bytes while reading their echo, half-closes after the last one.
        case echo
        /// Asks for `size` bytes, half-closes at once, and reads them slowly, a little at a
        /// time: the relay and the agent hold queued bytes for it when the target's FIN comes,
        /// with the input of the connection they write to already closed.
        case slowHalfClosedDownload
        /// The target greets and half-closes first, then reads the `size` bytes the client
        /// sends slowly: the same, the other way round. The target records what it read.
        case targetFinishesFirst
        /// A download the client resets (SO_LINGER 0) after part of it arrived.
        case abortedDownload
        /// An echo the client resets after part of it came back.
        case abortedEcho

        var isAborted: Bool { self == .abortedDownload || self == .abortedEcho }

        /// How often each kind is picked, out of the sum of all weights.
        var weight: Int {
            switch self {
            case .upload: 22
            case .download: 18
            case .halfClosedDownload: 18
            case .echo: 22
            case .slowHalfClosedDownload: 5
            case .targetFinishesFirst: 5
            case .abortedDownload: 5
            case .abortedEcho: 5
            }
        }

        static func random<G: RandomNumberGenerator>(using generator: inout G) -> Kind {
            var pick = Int.random(in: 0..<Self.allCases.reduce(0) { $0 + $1.weight }, using: &generator)
            for kind in Self.allCases {
                if pick < kind.weight { return kind }
                pick -= kind.weight
            }
            return .upload
        }
    }

    /// A size from 1 byte to `maximum`, uniform in its logarithm: as many tiny sessions as big ones.
    static func randomSize<G: RandomNumberGenerator>(maximum: Int, using generator: inout G) -> Int {
        max(1, min(maximum, Int(exp(Double.random(in: 0...log(Double(maximum)), using: &generator)))))
    }

    /// How one session went, as the client saw it.
    struct Result: Sendable {
        var kind: Kind
        var size: Int
        /// The client's local port: the relay logs it as `client=127.0.0.1:PORT` in `session open`.
        var port: Int
        /// The SHA-256 of what the client sent, when only the target can check it (``Kind/targetFinishesFirst``).
        var sentDigest: String?
        /// When the client was connected (orders sessions that reused a port).
        var connectedAt: ContinuousClock.Instant
        /// The session's offset into the pattern, unique to it: the target's key for what it read.
        var offset = 0
        var sent = 0
        var received = 0
        /// Why the session is not right, or nil; an aborted session is right when it was aborted.
        var failure: String?
    }

    /// The header a client sends first: kind, size, and the offset into ``TestData``'s
    /// endless pattern at which the payload starts (each session its own, so a byte from
    /// another session or another place shows).
    struct Header {
        static let length = 17
        enum Command: UInt8 {
            case upload = 0x55  // U
            case download = 0x44  // D
            case echo = 0x45  // E
            case greetThenRead = 0x47  // G
        }

        var command: Command
        var size: Int
        var offset: Int

        var buffer: ByteBuffer {
            var buffer = ByteBuffer()
            buffer.writeInteger(self.command.rawValue)
            buffer.writeInteger(UInt64(self.size))
            buffer.writeInteger(UInt64(self.offset))
            return buffer
        }

        init(command: Command, size: Int, offset: Int) {
            self.command = command
            self.size = size
            self.offset = offset
        }

        /// Reads a header off `buffer`; nil (and nothing consumed) while incomplete or unknown.
        init?(from buffer: inout ByteBuffer) {
            guard buffer.readableBytes >= Self.length,
                let raw = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
                let command = Command(rawValue: raw),
                let size = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt64.self),
                let offset = buffer.getInteger(at: buffer.readerIndex + 9, as: UInt64.self)
            else { return nil }
            buffer.moveReaderIndex(forwardBy: Self.length)
            self.init(command: command, size: Int(size), offset: Int(offset))
        }
    }

    /// Checks a received stream byte for byte against ``TestData``'s pattern from an offset.
    struct PatternCheck {
        private var position: Int
        private(set) var count = 0
        /// Where the first wrong byte was, counted from the start of the stream.
        private(set) var firstMismatch: Int?

        init(offset: Int) { self.position = offset % TestData.block.count }

        mutating func check(_ buffer: ByteBuffer) {
            buffer.withUnsafeReadableBytes { received in
                TestData.block.withUnsafeBytes { block in
                    var done = 0
                    while done < received.count {
                        let length = min(received.count - done, block.count - self.position)
                        if self.firstMismatch == nil,
                            memcmp(received.baseAddress! + done, block.baseAddress! + self.position, length) != 0
                        {
                            var index = 0
                            while received[done + index] == block[self.position + index] { index += 1 }
                            self.firstMismatch = self.count + done + index
                        }
                        done += length
                        self.position = (self.position + length) % block.count
                    }
                }
            }
            self.count += buffer.readableBytes
        }

        /// nil if exactly `expected` right bytes arrived; otherwise what is wrong.
        func verdict(expected: Int) -> String? {
            if let mismatch = self.firstMismatch { return "corrupt from byte \(mismatch) of \(expected)" }
            if self.count < expected {
                return "short: \(self.count) of \(expected) bytes (\(expected - self.count) missing)"
            }
            if self.count > expected { return "long: \(self.count) of \(expected) bytes" }
            return nil
        }
    }

    static let chunk = 64 * 1024
    /// A slow reader (client or target) reads this much at a time, with a pause between reads.
    static let slowRead = 16 * 1024
    static let slowPause = Duration.milliseconds(1)
    /// A slow reader's socket receive buffer: small, so that little of the stream waits in the kernel.
    static let slowBuffer = 16 * 1024
    /// The sizes of the slow kinds: enough to fill every buffer on the way, small enough to be quick.
    static let slowSizes = (4 << 20)...(8 << 20)

    /// Like ``TestClient/connect(port:host:)``, with the socket's receive buffer set before it connects.
    static func connect(port: Int, receiveBuffer: Int) async throws -> TestClient.Connection {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBuffer))
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: Self.slowRead))
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try TestClient.Connection(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(isOutboundHalfClosureEnabled: true)
                    )
                }
            }
    }

    /// Runs one session of `kind` against the relay's `port`; never throws: an error is the
    /// result's `failure` (unless the session was meant to be aborted).
    static func session(kind: Kind, size: Int, port: Int) async -> Result {
        var generator = SystemRandomNumberGenerator()
        // Far larger than the pattern, so that it also names the session at the target.
        let offset = Int.random(in: 0..<(1 << 60), using: &generator)
        let connection: TestClient.Connection
        do {
            connection =
                kind == .slowHalfClosedDownload
                ? try await Self.connect(port: port, receiveBuffer: Self.slowBuffer)
                : try await TestClient.connect(port: port)
        } catch {
            return Result(
                kind: kind, size: size, port: 0, connectedAt: .now, failure: "cannot connect: \(error)")
        }
        var result = Result(
            kind: kind, size: size, port: connection.channel.localAddress?.port ?? 0, connectedAt: .now,
            offset: offset)
        // Aborted sessions reset after a random part of the reply, never before the first byte
        // (so the relay has joined the session by then).
        let abortAfter = kind.isAborted ? Int.random(in: 1..<max(2, size), using: &generator) : Int.max
        let outcome = Outcome()
        do {
            try await connection.executeThenClose { inbound, outbound in
                switch kind {
                case .upload:
                    var digest = Digest()
                    try await outbound.write(Header(command: .upload, size: size, offset: offset).buffer)
                    outcome.sent.add(Header.length, ordering: .relaxed)
                    var written = 0
                    while written < size {
                        let slice = TestData.slice(offset: offset + written, length: min(Self.chunk, size - written))
                        digest.update(slice)
                        written += slice.readableBytes
                        try await outbound.write(slice)
                        outcome.sent.add(slice.readableBytes, ordering: .relaxed)
                    }
                    outbound.finish()
                    var reply = ""
                    for try await chunk in inbound {
                        outcome.received.add(chunk.readableBytes, ordering: .relaxed)
                        reply += String(buffer: chunk)
                    }
                    let expected = "\(digest.hex()) \(size)\n"
                    if reply != expected {
                        outcome.fail("target saw \(reply.debugDescription), expected \(expected.debugDescription)")
                    }
                case .targetFinishesFirst:
                    try await outbound.write(Header(command: .greetThenRead, size: size, offset: offset).buffer)
                    outcome.sent.add(Header.length, ordering: .relaxed)
                    var greeting = ""
                    for try await chunk in inbound {
                        outcome.received.add(chunk.readableBytes, ordering: .relaxed)
                        greeting += String(buffer: chunk)
                    }
                    if greeting != MixedTarget.greeting {
                        outcome.fail(
                            "greeting \(greeting.debugDescription), expected \(MixedTarget.greeting.debugDescription)")
                    }
                    var digest = Digest()
                    var written = 0
                    while written < size {
                        let slice = TestData.slice(offset: offset + written, length: min(Self.chunk, size - written))
                        digest.update(slice)
                        written += slice.readableBytes
                        try await outbound.write(slice)
                        outcome.sent.add(slice.readableBytes, ordering: .relaxed)
                    }
                    // The client's input is closed already, so NIO turns its half-close into a
                    // full close, which drops writes still queued: wait until they are out.
                    try await connection.channel.writeAndFlush(ByteBuffer())
                    outbound.finish()
                    outcome.setDigest(digest.hex())
                case .download, .halfClosedDownload, .slowHalfClosedDownload, .abortedDownload:
                    try await outbound.write(Header(command: .download, size: size, offset: offset).buffer)
                    outcome.sent.add(Header.length, ordering: .relaxed)
                    if kind == .halfClosedDownload || kind == .slowHalfClosedDownload { outbound.finish() }
                    var check = PatternCheck(offset: offset)
                    for try await chunk in inbound {
                        if kind == .slowHalfClosedDownload { try await Task.sleep(for: Self.slowPause) }
                        check.check(chunk)
                        outcome.received.add(chunk.readableBytes, ordering: .relaxed)
                        if check.count >= abortAfter {
                            TestClient.reset(connection.channel)
                            outcome.aborted()
                            return
                        }
                    }
                    if let problem = check.verdict(expected: size) { outcome.fail(problem) }
                    outbound.finish()
                case .echo, .abortedEcho:
                    try await outbound.write(Header(command: .echo, size: size, offset: offset).buffer)
                    outcome.sent.add(Header.length, ordering: .relaxed)
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask {
                            var written = 0
                            while written < size {
                                let slice = TestData.slice(
                                    offset: offset + written, length: min(Self.chunk, size - written))
                                written += slice.readableBytes
                                try await outbound.write(slice)
                                outcome.sent.add(slice.readableBytes, ordering: .relaxed)
                            }
                            // One to be aborted keeps its side open: the reset comes mid-session.
                            if kind == .echo { outbound.finish() }
                        }
                        var check = PatternCheck(offset: offset)
                        for try await chunk in inbound {
                            check.check(chunk)
                            outcome.received.add(chunk.readableBytes, ordering: .relaxed)
                            if check.count >= abortAfter {
                                TestClient.reset(connection.channel)
                                outcome.aborted()
                                group.cancelAll()
                                try? await group.waitForAll()
                                return
                            }
                        }
                        if let problem = check.verdict(expected: size) { outcome.fail(problem) }
                        try await group.waitForAll()
                    }
                }
            }
        } catch {
            if !outcome.wasAborted { outcome.fail("\(error)") }
        }
        result.sent = outcome.sent.load(ordering: .relaxed)
        result.received = outcome.received.load(ordering: .relaxed)
        if kind.isAborted && !outcome.wasAborted && outcome.failure == nil {
            outcome.fail("meant to be aborted after \(abortAfter) bytes, but ended first")
        }
        result.failure = outcome.failure
        result.sentDigest = outcome.digest
        return result
    }

    /// What a session's tasks found, shared between its writer and reader.
    private final class Outcome: Sendable {
        let sent = Atomic<Int>(0)
        let received = Atomic<Int>(0)
        private let abortedFlag = Atomic<Bool>(false)
        private let problem = Mutex<String?>(nil)

        func aborted() { self.abortedFlag.store(true, ordering: .relaxed) }
        var wasAborted: Bool { self.abortedFlag.load(ordering: .relaxed) }
        func fail(_ why: String) { self.problem.withLock { $0 = $0 ?? why } }
        var failure: String? { self.problem.withLock { $0 } }
        private let digestStore = Mutex<String?>(nil)
        func setDigest(_ hex: String) { self.digestStore.withLock { $0 = hex } }
        var digest: String? { self.digestStore.withLock { $0 } }
    }

    /// Sessions finished so far, and their results.
    final class Progress: Sendable {
        let completed = Atomic<Int>(0)
        let results = Mutex<[Result]>([])
    }

    /// Runs `loops` client loops against `port` until `deadline`, each opening one session
    /// after another (a session started before the deadline runs to its end).
    static func run(
        port: Int, loops: Int, until deadline: ContinuousClock.Instant, maximumSize: Int, progress: Progress
    )
        async
    {
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<loops {
                group.addTask {
                    var generator = SystemRandomNumberGenerator()
                    while ContinuousClock.now < deadline {
                        let kind = Kind.random(using: &generator)
                        var size = Self.randomSize(maximum: maximumSize, using: &generator)
                        // An aborted session needs something to be cut short.
                        if kind.isAborted { size = max(size, 64 * 1024) }
                        if kind == .slowHalfClosedDownload || kind == .targetFinishesFirst {
                            size = Int.random(in: Self.slowSizes, using: &generator)
                        }
                        let result = await Self.session(kind: kind, size: size, port: port)
                        progress.results.withLock { $0.append(result) }
                        progress.completed.add(1, ordering: .relaxed)
                    }
                }
            }
        }
    }
}

/// The target of a mixed load: reads a ``MixedLoad/Header`` and then uploads' digest,
/// downloads' bytes (honouring writability), an echo, or a greeting and a half-close
/// followed by a slow read whose digest it records, as the header says.
final class MixedTarget: Sendable {
    static let greeting = "ready\n"

    /// What a greet-then-read connection read: its byte count and SHA-256.
    struct Read: Sendable, Equatable {
        var count: Int
        var digest: String
    }

    let channel: any Channel
    private let counters: Counters
    var port: Int { self.channel.localAddress!.port! }

    private init(channel: any Channel, counters: Counters) {
        self.channel = channel
        self.counters = counters
    }

    final class Counters: Sendable {
        let accepted = Atomic<Int>(0)
        let closed = Atomic<Int>(0)
        /// By the header's offset, which names the session.
        let reads = Mutex<[Int: Read]>([:])
    }

    var acceptedCount: Int { self.counters.accepted.load(ordering: .relaxed) }
    var closedCount: Int { self.counters.closed.load(ordering: .relaxed) }

    /// What the greet-then-read session with this `offset` read, once it ended.
    func read(offset: Int) -> Read? { self.counters.reads.withLock { $0[offset] } }

    static func start() async throws -> MixedTarget {
        let counters = Counters()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 1024)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    counters.accepted.add(1, ordering: .relaxed)
                    channel.closeFuture.whenComplete { _ in counters.closed.add(1, ordering: .relaxed) }
                    try channel.pipeline.syncOperations.addHandler(MixedTargetHandler(counters: counters))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return MixedTarget(channel: channel, counters: counters)
    }

    /// Waits until every connection the target accepted has closed.
    func waitForAllClosed(timeout: Duration = .seconds(10)) async throws {
        let deadline = ContinuousClock.now + timeout
        while self.closedCount < self.acceptedCount {
            guard ContinuousClock.now < deadline else {
                throw HarnessError("the target still has \(self.acceptedCount - self.closedCount) connections open")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    func close() async {
        try? await self.channel.close()
    }
}

private final class MixedTargetHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let counters: MixedTarget.Counters
    private var pending = ByteBuffer()
    private var header: MixedLoad.Header?
    private var digest = Digest()
    private var received = 0
    private var sent = 0
    private var finished = false
    private var failed = false
    private var reader: RepeatedTask?

    init(counters: MixedTarget.Counters) {
        self.counters = counters
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        if self.header == nil {
            self.pending.writeBuffer(&buffer)
            guard let header = MixedLoad.Header(from: &self.pending) else {
                if self.pending.readableBytes >= MixedLoad.Header.length { context.close(promise: nil) }
                return
            }
            self.header = header
            buffer = self.pending
            self.pending = ByteBuffer()
            switch header.command {
            case .download: self.sendMore(context: context)
            case .greetThenRead: self.greetThenReadSlowly(context: context)
            case .upload, .echo: break
            }
        }
        guard let header = self.header, buffer.readableBytes > 0 else { return }
        switch header.command {
        case .upload, .greetThenRead:
            self.digest.update(buffer)
            self.received += buffer.readableBytes
        case .echo:
            context.write(self.wrapOutboundOut(buffer), promise: nil)
        case .download:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.header?.command == .echo { context.flush() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if self.header?.command == .download { self.sendMore(context: context) }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case ChannelEvent.inputClosed = event else { return }
        guard let header = self.header else {
            context.close(promise: nil)
            return
        }
        switch header.command {
        case .upload:
            self.finishWith(ByteBuffer(string: "\(self.digest.hex()) \(self.received)\n"), context: context)
        case .echo:
            // Everything is echoed; its input closed, the channel may close once the echo is out.
            self.finishWith(ByteBuffer(), context: context)
        case .greetThenRead:
            self.record()
            context.close(promise: nil)
        case .download:
            break  // half-closed first: keep sending
        }
    }

    /// Its output already shut, NIO may end a greet-then-read channel at the peer's FIN
    /// without `inputClosed` first.
    func channelInactive(context: ChannelHandlerContext) {
        self.reader?.cancel()
        if self.header?.command == .greetThenRead { self.record() }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.failed = true
        context.close(promise: nil)
    }

    /// Greets, half-closes, and from then on reads a little at a time, on a timer.
    private func greetThenReadSlowly(context: ChannelHandlerContext) {
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: MixedTarget.greeting)), promise: nil)
        context.close(mode: .output, promise: nil)
        let options = context.channel.syncOptions
        try? options?.setOption(ChannelOptions.autoRead, value: false)
        try? options?.setOption(
            ChannelOptions.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: MixedLoad.slowRead))
        let pause = MixedLoad.slowPause.components
        let interval = TimeAmount.nanoseconds(pause.seconds * 1_000_000_000 + pause.attoseconds / 1_000_000_000)
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        self.reader = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            loopBound.value.read()
        }
    }

    private func record() {
        guard let header = self.header, !self.finished, !self.failed else { return }
        self.finished = true
        let read = MixedTarget.Read(count: self.received, digest: self.digest.hex())
        self.counters.reads.withLock { $0[header.offset] = read }
    }

    private func sendMore(context: ChannelHandlerContext) {
        guard let header = self.header, !self.finished else { return }
        while context.channel.isActive && context.channel.isWritable && self.sent < header.size {
            let count = min(MixedLoad.chunk, header.size - self.sent)
            let slice = TestData.slice(offset: header.offset + self.sent, length: count)
            // Counted before the write: a write may call back into this function (writability).
            self.sent += count
            context.write(self.wrapOutboundOut(slice), promise: nil)
        }
        if self.sent == header.size {
            self.finishWith(ByteBuffer(), context: context)
        } else {
            context.flush()
        }
    }

    /// Writes `last`, and closes once every write reached the socket.
    private func finishWith(_ last: ByteBuffer, context: ChannelHandlerContext) {
        guard !self.finished else { return }
        self.finished = true
        let channel = context.channel
        context.writeAndFlush(self.wrapOutboundOut(last)).whenComplete { _ in channel.close(promise: nil) }
    }
}

/// One transfer through a ``MixedTarget`` that moves its first `heldAfter` bytes, then holds
/// (its client neither reads nor writes) until ``release()``: a session that is certainly
/// live while a test signals or reloads a daemon, and whose end is then checked byte for byte.
final class HeldTransfer: Sendable {
    enum Kind: String, Sendable {
        /// Asks for `size` bytes; holds after receiving `heldAfter`.
        case download
        /// Sends `size` bytes, the target answers with their digest; holds after sending `heldAfter`.
        case upload
        /// Sends `size` bytes and reads their echo; holds after `heldAfter` came back.
        case echo
    }

    /// How the transfer ended.
    struct Outcome: Sendable {
        var sent = 0
        var received = 0
        /// nil if every byte arrived right; otherwise what is wrong (an error, short, corrupt).
        var failure: String?
        /// The error that ended it, if one did (a reset shows here).
        var error: String?
        /// When the client saw the end.
        var endedAt = ContinuousClock.now
    }

    let kind: Kind
    let size: Int
    /// The client's local port (the relay logs it as the session's `client`).
    let port: Int
    private let releases: AsyncStream<Void>.Continuation
    private let task: Task<Outcome, Never>

    private init(
        kind: Kind, size: Int, port: Int, releases: AsyncStream<Void>.Continuation, task: Task<Outcome, Never>
    ) {
        self.kind = kind
        self.size = size
        self.port = port
        self.releases = releases
        self.task = task
    }

    /// Starts the transfer to the relay's `servicePort` and returns once `heldAfter` bytes
    /// moved. Once released, the rest goes at full speed, or trickles at about `rate` bytes
    /// a second (the client paces its reads and writes).
    static func start(_ kind: Kind, size: Int, heldAfter: Int, servicePort: Int, rate: Int? = nil) async throws
        -> HeldTransfer
    {
        precondition(heldAfter > 0 && heldAfter < size)
        let connection = try await TestClient.connect(port: servicePort)
        let localPort = connection.channel.localAddress?.port ?? 0
        let (held, heldInput) = AsyncStream<Result<Void, HarnessError>>.makeStream()
        let (releases, releaseInput) = AsyncStream<Void>.makeStream()
        let offset = Int.random(in: 0..<TestData.block.count)
        let task = Task {
            var outcome = Outcome()
            let counts = Counts()
            do {
                try await connection.executeThenClose { inbound, outbound in
                    try await Self.run(
                        kind, size: size, offset: offset, heldAfter: heldAfter, rate: rate, inbound: inbound,
                        outbound: outbound, counts: counts
                    ) {
                        heldInput.yield(.success(()))
                        for await _ in releases { break }
                    }
                }
            } catch {
                outcome.error = "\(error)"
            }
            outcome.sent = counts.sent.load(ordering: .relaxed)
            outcome.received = counts.received.load(ordering: .relaxed)
            outcome.failure = counts.problem.withLock { $0 } ?? outcome.error
            outcome.endedAt = .now
            heldInput.yield(.failure(HarnessError("\(kind) ended before it held: \(outcome.failure ?? "?")")))
            heldInput.finish()
            return outcome
        }
        for await state in held {
            try state.get()
            break
        }
        return HeldTransfer(kind: kind, size: size, port: localPort, releases: releaseInput, task: task)
    }

    /// Lets the client go on to the end.
    func release() {
        self.releases.yield(())
    }

    /// Releases it (if not yet) and waits for its end.
    func finish() async -> Outcome {
        self.release()
        return await self.task.value
    }

    private final class Counts: Sendable {
        let sent = Atomic<Int>(0)
        let received = Atomic<Int>(0)
        let problem = Mutex<String?>(nil)
    }

    private static func run(
        _ kind: Kind, size: Int, offset: Int, heldAfter: Int, rate: Int?,
        inbound: NIOAsyncChannelInboundStream<ByteBuffer>, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
        counts: Counts, hold: @Sendable () async -> Void
    ) async throws {
        var iterator = inbound.makeAsyncIterator()
        var check = MixedLoad.PatternCheck(offset: offset)
        var paced = false
        // Trickling: a small slice at a time, and a pause as long as `rate` asks for after each.
        let slice = rate == nil ? MixedLoad.chunk : 16 * 1024
        @Sendable func pause(after bytes: Int, paced: Bool) async throws {
            guard paced, let rate else { return }
            try await Task.sleep(for: .microseconds(bytes * 1_000_000 / rate))
        }
        func receive(upTo limit: Int) async throws {
            while check.count < limit, let chunk = try await iterator.next() {
                check.check(chunk)
                counts.received.add(chunk.readableBytes, ordering: .relaxed)
                try await pause(after: chunk.readableBytes, paced: paced)
            }
        }
        func send(from start: Int, to end: Int, digest: inout Digest) async throws {
            var written = start
            while written < end {
                let bytes = TestData.slice(offset: offset + written, length: min(slice, end - written))
                digest.update(bytes)
                written += bytes.readableBytes
                try await outbound.write(bytes)
                counts.sent.add(bytes.readableBytes, ordering: .relaxed)
                try await pause(after: bytes.readableBytes, paced: paced)
            }
        }
        func fail(_ problem: String?) {
            if let problem { counts.problem.withLock { $0 = $0 ?? problem } }
        }
        var digest = Digest()
        let command: MixedLoad.Header.Command =
            switch kind {
            case .download: .download
            case .upload: .upload
            case .echo: .echo
            }
        try await outbound.write(MixedLoad.Header(command: command, size: size, offset: offset).buffer)
        counts.sent.add(MixedLoad.Header.length, ordering: .relaxed)
        switch kind {
        case .download:
            try await receive(upTo: heldAfter)
            await hold()
            paced = true
            try await receive(upTo: Int.max)
            fail(check.verdict(expected: size))
            outbound.finish()
        case .upload:
            try await send(from: 0, to: heldAfter, digest: &digest)
            await hold()
            paced = true
            try await send(from: heldAfter, to: size, digest: &digest)
            outbound.finish()
            var reply = ""
            while let chunk = try await iterator.next() {
                counts.received.add(chunk.readableBytes, ordering: .relaxed)
                reply += String(buffer: chunk)
            }
            let expected = "\(digest.hex()) \(size)\n"
            if reply != expected { fail("target saw \(reply.debugDescription), expected \(expected.debugDescription)") }
        case .echo:
            try await send(from: 0, to: heldAfter, digest: &digest)
            try await receive(upTo: heldAfter)
            await hold()
            paced = true
            // The rest of the echo is read while the rest is written: the target echoes as it reads.
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    var written = heldAfter
                    while written < size {
                        let bytes = TestData.slice(offset: offset + written, length: min(slice, size - written))
                        written += bytes.readableBytes
                        try await outbound.write(bytes)
                        counts.sent.add(bytes.readableBytes, ordering: .relaxed)
                        try await pause(after: bytes.readableBytes, paced: true)
                    }
                    outbound.finish()
                }
                try await receive(upTo: Int.max)
                try await group.waitForAll()
            }
            fail(check.verdict(expected: size))
        }
    }
}
