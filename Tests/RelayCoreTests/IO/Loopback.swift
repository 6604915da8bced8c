import Logging
import NIOCore
import NIOPosix

@testable import RelayCore

/// Real TCP connections on 127.0.0.1, made by the daemons' own `Network.listen` and
/// `Network.dial`: the same bootstraps and options (half-close allowed, TCP_NODELAY, the
/// default keepalive and user timeout) and the same `Network.connectionConfiguration`.
enum Loopback {
    enum Failure: Error {
        case noAcceptedConnection
    }

    static var group: any EventLoopGroup { MultiThreadedEventLoopGroup.singleton }

    /// Runs `body` with both ends of a fresh connection: the dialled end first, then the
    /// accepted one. Both are closed through `executeThenClose` when `body` returns or throws.
    static func withConnection<R: Sendable>(_ body: (Peer, Peer) async throws -> R) async throws -> R {
        let (dialled, accepted) = try await self.connect()
        return try await dialled.executeThenClose { dialledIn, dialledOut in
            try await accepted.executeThenClose { acceptedIn, acceptedOut in
                try await body(
                    Peer(channel: dialled.channel, inbound: dialledIn, outbound: dialledOut),
                    Peer(channel: accepted.channel, inbound: acceptedIn, outbound: acceptedOut))
            }
        }
    }

    /// Runs `body` with a fresh connection from a NIO peer (`Network.dial`) to a socket
    /// accepted as a plain descriptor by an `OwnedListener`, as a daemon accepts a client: the
    /// peer first, then the owned socket. The peer is closed through `executeThenClose` when
    /// `body` returns or throws; the owned socket is reset when dropped, unless it was handed on.
    static func withAcceptedSocket<R: Sendable>(_ body: (Peer, OwnedSocket) async throws -> R) async throws -> R {
        let listener = try OwnedListener.bind(try SocketAddress(ipAddress: "127.0.0.1", port: 0))
        let (sockets, arrivals) = AsyncStream.makeStream(of: OwnedSocket.self)
        let accepting = Task {
            await listener.run(logger: Logger(label: "loopback"), tuning: { TCPTuning() }) { arrivals.yield($0) }
            arrivals.finish()
        }
        let dialled: TCPConnection
        do {
            dialled = try await Network.dial(
                HostPort(host: "127.0.0.1", port: Self.port(of: listener.localAddress)), timeout: .seconds(5),
                group: self.group)
        } catch {
            listener.close()
            await accepting.value
            throw error
        }
        var iterator = sockets.makeAsyncIterator()
        let socket = await iterator.next()
        listener.close()
        await accepting.value
        guard let accepted = socket else {
            try? await dialled.executeThenClose { _, _ in }
            throw Failure.noAcceptedConnection
        }
        return try await dialled.executeThenClose { inbound, outbound in
            try await body(Peer(channel: dialled.channel, inbound: inbound, outbound: outbound), accepted)
        }
    }

    /// Runs `body` with a fresh connection from a socket dialled as a plain descriptor
    /// (`SocketIO.dial`), as a daemon dials a target, to a NIO peer accepted by
    /// `Network.listen`: the owned socket first, then the peer. The peer is closed through
    /// `executeThenClose` when `body` returns or throws; the owned socket is reset when
    /// dropped, unless it was handed on.
    static func withDialledSocket<R: Sendable>(_ body: (OwnedSocket, Peer) async throws -> R) async throws -> R {
        let listener = try await Network.listen(
            on: try SocketAddress(ipAddress: "127.0.0.1", port: 0), group: self.group)
        let port = listener.channel.localAddress?.port ?? 0
        let (dialled, accepted) = try await listener.executeThenClose { inbound, _ in
            let dialled = try await SocketIO.dial(HostPort(host: "127.0.0.1", port: port), timeout: .seconds(5))
            var accepts = inbound.makeAsyncIterator()
            guard let accepted = try await accepts.next()?.take() else { throw Failure.noAcceptedConnection }
            return (dialled, accepted)
        }
        return try await accepted.executeThenClose { inbound, outbound in
            try await body(dialled, Peer(channel: accepted.channel, inbound: inbound, outbound: outbound))
        }
    }

    /// The port of an address as logs show it ("127.0.0.1:40000").
    private static func port(of address: String) -> Int {
        address.split(separator: ":").last.flatMap { Int($0) } ?? 0
    }

    /// A listener on port 0 that accepts one connection and closes; the caller owns both
    /// ends and must run each through `executeThenClose`.
    private static func connect() async throws -> (dialled: TCPConnection, accepted: TCPConnection) {
        let listener = try await Network.listen(
            on: try SocketAddress(ipAddress: "127.0.0.1", port: 0), group: self.group)
        let port = listener.channel.localAddress?.port ?? 0
        return try await listener.executeThenClose { inbound, _ in
            let dialled = try await Network.dial(
                HostPort(host: "127.0.0.1", port: port), timeout: .seconds(5), group: self.group)
            do {
                var accepts = inbound.makeAsyncIterator()
                guard let accepted = try await accepts.next()?.take() else { throw Failure.noAcceptedConnection }
                return (dialled, accepted)
            } catch {
                try? await dialled.executeThenClose { _, _ in }
                throw error
            }
        }
    }
}

/// One end of a loopback connection, valid inside ``Loopback/withConnection(_:)``'s body.
struct Peer: Sendable {
    /// How a read of the rest of a stream ended.
    enum End: Sendable, Equatable {
        /// A clean end of stream (the peer's FIN).
        case endOfStream
        /// The connection failed (a reset), in `Network.describe`'s words.
        case error(String)
        /// The reader stopped at the byte count it was asked for.
        case stoppedAtCount

        /// Whether the connection ended with a reset.
        var isReset: Bool {
            if case .error(let reason) = self { return reason.contains("reset") }
            return false
        }
    }

    let channel: any Channel
    /// The one reader of this end's inbound bytes (a pump endpoint's, if this end is one).
    let reader: InboundReader
    let writer: NIOAsyncChannelOutboundWriter<ByteBuffer>

    init(
        channel: any Channel, inbound: NIOAsyncChannelInboundStream<ByteBuffer>,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    ) {
        self.channel = channel
        self.reader = InboundReader(inbound)
        self.writer = outbound
    }

    func write(_ text: String) async throws {
        try await self.writer.write(ByteBuffer(string: text))
    }

    /// Shuts down this end's write side once every byte written so far has reached the
    /// socket, and returns when the FIN is out. (NIO turns a write shutdown into a full
    /// close, dropping queued writes, when the input is already closed: the empty write is
    /// a barrier, as in the pump.)
    func finishWriting() async throws {
        try await self.channel.writeAndFlush(ByteBuffer())
        try await self.channel.close(mode: .output)
    }

    /// Resets the connection (SO_LINGER 0, then close): the other end reads ECONNRESET.
    func reset() {
        self.channel.abort()
    }

    /// Reads until `count` bytes have arrived or the stream ends, as text.
    func read(count: Int) async throws -> String {
        var text = ""
        while text.utf8.count < count, let chunk = try await self.reader.nextChunk() {
            text += String(buffer: chunk)
        }
        return text
    }

    /// Reads the rest of the stream (or up to `count` bytes), checking every byte against
    /// `pattern` from `offset` on. Never throws: a failed read is the result's `end`.
    func receive(_ pattern: TestPattern, from offset: Int = 0, count: Int? = nil) async -> Received {
        var received = Received(offset: offset)
        do {
            while count.map({ received.count < $0 }) ?? true {
                guard let chunk = try await self.reader.nextChunk() else {
                    received.end = .endOfStream
                    return received
                }
                if received.firstMismatch == nil,
                    let mismatch = pattern.firstMismatch(in: chunk, at: offset + received.count)
                {
                    received.firstMismatch = mismatch
                }
                received.count += chunk.readableBytes
            }
            received.end = .stoppedAtCount
        } catch {
            received.end = .error(AsyncChannelPump.describe(error))
        }
        return received
    }

    /// Writes `count` bytes of `pattern` from `offset` on, in chunks of at most `chunk` bytes.
    func send(_ pattern: TestPattern, from offset: Int = 0, count: Int, chunk: Int = 64 << 10) async throws {
        var sent = 0
        while sent < count {
            let length = min(chunk, count - sent)
            try await self.writer.write(pattern.bytes(at: offset + sent, count: length))
            sent += length
        }
    }
}

/// What ``Peer/receive(_:from:count:)`` read.
struct Received: Sendable, CustomStringConvertible {
    /// Where in the pattern the read started.
    var offset: Int
    var count = 0
    /// The pattern offset of the first wrong byte, if any.
    var firstMismatch: Int?
    var end: Peer.End?

    /// Exactly `expected` bytes, all as sent, then a clean end of stream.
    func isIntact(_ expected: Int) -> Bool {
        self.count == expected && self.firstMismatch == nil && self.end == .endOfStream
    }

    var description: String {
        let mismatch = self.firstMismatch.map { ", first wrong byte at \($0)" } ?? ""
        return "\(self.count) bytes\(mismatch), ended by \(self.end.map { "\($0)" } ?? "nothing")"
    }
}
