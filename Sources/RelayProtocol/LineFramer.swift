import NIOCore

/// Splits a byte stream into newline-terminated lines, with a hard cap on a line's length.
///
/// A pure buffer: feed it what the socket read, take out complete lines, and when the
/// connection turns into a raw byte stream (a data channel after `attach`) take the
/// bytes that arrived past the last line with ``takeRemainder()``.
///
/// It never holds more than one line (at most ``maxLineBytes``) plus one read: bytes taken
/// out as lines are let go of at the next append. (A `ByteBuffer` keeps the bytes before its
/// reader index, and appending to one grows its storage without discarding them: a peer
/// whose every write left a partial line pending made the framer grow without bound.)
public struct LineFramer: Sendable {
    /// The longest line accepted, its newline included.
    public let maxLineBytes: Int
    private var buffer: ByteBuffer?

    /// Creates a framer that refuses lines longer than `maxLineBytes`.
    public init(maxLineBytes: Int = ProtocolLimits.maxLineBytes) {
        self.maxLineBytes = maxLineBytes
    }

    /// How many bytes are held that are not yet part of a complete line.
    public var bufferedBytes: Int { self.buffer?.readableBytes ?? 0 }

    /// The bytes of storage the framer keeps alive, consumed ones included: at most one
    /// line plus one read (what bounds a peer's hold on our memory).
    public var retainedBytes: Int { self.buffer?.storageCapacity ?? 0 }

    /// Adds bytes read from the connection. The pending partial line and `bytes` go into a
    /// fresh buffer of their size, so nothing already taken out stays allocated.
    public mutating func append(_ bytes: ByteBuffer) {
        guard var pending = self.buffer, pending.readableBytes > 0 else {
            self.buffer = bytes
            return
        }
        self.buffer = nil
        var incoming = bytes
        var fresh = ByteBufferAllocator().buffer(capacity: pending.readableBytes + incoming.readableBytes)
        fresh.writeBuffer(&pending)
        fresh.writeBuffer(&incoming)
        self.buffer = fresh
    }

    /// The next complete line without its `\n` (and without a `\r` before it), or `nil`
    /// when no complete line is buffered yet.
    ///
    /// Throws ``ErrorCode/lineTooLong`` once a line exceeds the cap, whether or not its
    /// newline has arrived; the framer is useless afterwards and the connection must close.
    public mutating func nextLine() throws(ProtocolError) -> ByteBuffer? {
        guard var buffer = self.buffer, buffer.readableBytes > 0 else { return nil }
        guard let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if buffer.readableBytes >= self.maxLineBytes { throw self.tooLong() }
            return nil
        }
        let length = newline - buffer.readerIndex
        if length + 1 > self.maxLineBytes { throw self.tooLong() }
        var line = buffer.readSlice(length: length)!
        buffer.moveReaderIndex(forwardBy: 1)
        if line.readableBytesView.last == UInt8(ascii: "\r") {
            line = line.getSlice(at: line.readerIndex, length: line.readableBytes - 1)!
        }
        self.buffer = buffer
        return line
    }

    /// Everything buffered past the last line taken, leaving the framer empty.
    public mutating func takeRemainder() -> ByteBuffer? {
        defer { self.buffer = nil }
        guard let buffer = self.buffer, buffer.readableBytes > 0 else { return nil }
        return buffer
    }

    private func tooLong() -> ProtocolError {
        ProtocolError(.lineTooLong, "line longer than \(self.maxLineBytes) bytes")
    }
}
