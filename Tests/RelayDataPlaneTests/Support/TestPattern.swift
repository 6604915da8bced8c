import Glibc

/// A reproducible stream of bytes in which every byte depends on its position, so a
/// receiver checks what it gets without keeping what was sent: a lost, repeated or
/// misplaced chunk shows as a wrong byte (and a wrong count).
///
/// RelayCoreTests' `TestPattern` over raw memory instead of NIO's `ByteBuffer`: these tests
/// link no NIO, and a sender writes straight from the table.
struct TestPattern: Sendable {
    /// The pattern repeats after this many bytes, a prime, so no chunk size lines it up with itself.
    static let period = 1_048_573
    /// Longest piece handed out at once.
    static let piece = 64 << 10
    /// One period of pseudo-random bytes (xorshift64), then its first piece again, so any
    /// piece from any start is contiguous.
    private static let table: [UInt8] = {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        var bytes = [UInt8]()
        bytes.reserveCapacity(period + piece)
        for _ in 0..<period {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            bytes.append(UInt8(truncatingIfNeeded: state >> 24))
        }
        bytes.append(contentsOf: bytes[0..<piece])
        return bytes
    }()

    /// Where in the table this stream starts: two streams with different seeds differ.
    let seed: Int

    init(seed: Int) {
        self.seed = seed % Self.period
    }

    /// Calls `body` with the stream's bytes from `offset` on, at most `count` and at most
    /// ``piece`` of them.
    func withBytes<R>(at offset: Int, count: Int, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        let start = (self.seed + offset) % Self.period
        let length = min(Self.piece, count)
        return Self.table.withUnsafeBytes { table in
            body(UnsafeRawBufferPointer(rebasing: table[start..<start + length]))
        }
    }

    /// `count` bytes of the stream from `offset` on.
    func bytes(at offset: Int, count: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count)
        while bytes.count < count {
            self.withBytes(at: offset + bytes.count, count: count - bytes.count) { bytes.append(contentsOf: $0) }
        }
        return bytes
    }

    /// The stream offset of the first byte of `chunk` that differs from the stream, when
    /// `chunk` should be the bytes from `offset` on; nil if it matches.
    func firstMismatch(in chunk: UnsafeRawBufferPointer, at offset: Int) -> Int? {
        var done = 0
        while done < chunk.count {
            let mismatch = self.withBytes(at: offset + done, count: chunk.count - done) { expected -> Int? in
                guard memcmp(chunk.baseAddress! + done, expected.baseAddress!, expected.count) != 0 else { return nil }
                return (0..<expected.count).first { chunk[done + $0] != expected[$0] }.map { offset + done + $0 }
            }
            if let mismatch { return mismatch }
            done += min(Self.piece, chunk.count - done)
        }
        return nil
    }
}

/// What a reader got: how many bytes, whether they matched the pattern, how the stream ended.
struct Received: Sendable, CustomStringConvertible {
    /// How a read of a stream ended.
    enum End: Sendable, Equatable {
        /// A clean end of stream (the peer's FIN).
        case endOfStream
        /// The connection failed, with the error in lowercase words ("connection reset by peer").
        case error(String)
        /// The reader stopped at the byte count it was asked for.
        case stoppedAtCount
        /// Nothing came for the reader's time limit.
        case timedOut

        /// Whether the connection ended with a reset.
        var isReset: Bool {
            if case .error(let reason) = self { return reason.contains("reset") }
            return false
        }
    }

    /// Where in the pattern the read started.
    var offset: Int
    var count = 0
    /// The pattern offset of the first wrong byte, if any.
    var firstMismatch: Int?
    var end: End?

    /// Checks `chunk`, the next bytes read, against `pattern`.
    mutating func take(_ chunk: UnsafeRawBufferPointer, of pattern: TestPattern) {
        if self.firstMismatch == nil {
            self.firstMismatch = pattern.firstMismatch(in: chunk, at: self.offset + self.count)
        }
        self.count += chunk.count
    }

    /// Exactly `expected` bytes, all as sent, then a clean end of stream.
    func isIntact(_ expected: Int) -> Bool {
        self.count == expected && self.firstMismatch == nil && self.end == .endOfStream
    }

    var description: String {
        let mismatch = self.firstMismatch.map { ", first wrong byte at \($0)" } ?? ""
        return "\(self.count) bytes\(mismatch), ended by \(self.end.map { "\($0)" } ?? "nothing")"
    }
}
