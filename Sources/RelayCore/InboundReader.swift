import NIOCore
import RelayProtocol

/// Reads one connection's inbound bytes, first as control lines and then, on a data
/// channel, as a raw stream that starts with whatever arrived past the last line.
///
/// Owned by one task at a time (the handshake, then one direction of the pump), never
/// used concurrently; that is why it may be `@unchecked Sendable` around its iterator.
public final class InboundReader: @unchecked Sendable {
    private var iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    private var framer: LineFramer
    private var inRawMode = false
    /// Whether bytes came already (the first ones are checked for a TLS record).
    private var started = false

    /// Starts reading `stream`; lines longer than `maxLineBytes` are a protocol error.
    /// `buffered`: bytes already read from the socket before NIO adopted it (past a
    /// handshake line read on the descriptor), which come first.
    public init(
        _ stream: NIOAsyncChannelInboundStream<ByteBuffer>, maxLineBytes: Int = ProtocolLimits.maxLineBytes,
        buffered: [UInt8] = []
    ) {
        self.iterator = stream.makeAsyncIterator()
        self.framer = LineFramer(maxLineBytes: maxLineBytes)
        if !buffered.isEmpty {
            self.framer.append(ByteBuffer(bytes: buffered))
            self.started = true
        }
    }

    /// The next complete line, or `nil` at end of stream (a partial last line is dropped).
    /// Throws ``ProtocolError`` for an over-long line, or the channel's error.
    public func readLine() async throws -> ByteBuffer? {
        precondition(!self.inRawMode, "readLine after nextChunk: the handshake is over")
        while true {
            if let line = try self.framer.nextLine() { return line }
            guard let bytes = try await self.iterator.next() else { return nil }
            if !self.started {
                self.started = true
                // A plaintext side of the agent port hearing TLS says so rather than waiting for a line.
                if TLSFailure.looksLikeTLS(bytes) { throw TLSFailure.plaintextSide }
            }
            self.framer.append(bytes)
        }
    }

    /// The next line decoded as a message, or `nil` at end of stream.
    public func readMessage() async throws -> ControlMessage? {
        guard let line = try await self.readLine() else { return nil }
        return try ControlCodec.decode(line)
    }

    /// The next chunk of raw bytes, or `nil` at end of stream: bytes buffered past the
    /// last line come first.
    public func nextChunk() async throws -> ByteBuffer? {
        if !self.inRawMode {
            self.inRawMode = true
            if let remainder = self.framer.takeRemainder() { return remainder }
        }
        return try await self.iterator.next()
    }
}
