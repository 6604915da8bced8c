import NIOCore

/// Splits a byte stream into newline-terminated lines, with a hard cap on a line's length.
///
/// A pure buffer: feed it what the socket read, take out complete lines, and when the
/// connection turns into a raw byte stream (a data channel after `attach`) take the
/// bytes that arrived past the last line with ``takeRemainder()``.
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

    /// Adds bytes read from the connection.
    public mutating func append(_ bytes: ByteBuffer) {
        if self.buffer == nil || self.buffer!.readableBytes == 0 {
            self.buffer = bytes
        } else {
            var incoming = bytes
            self.buffer!.writeBuffer(&incoming)
        }
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
