import Foundation
import NIOCore

/// A reproducible stream of bytes in which every byte depends on its position, so a
/// receiver checks what it gets without keeping what was sent: a lost, repeated or
/// misplaced chunk shows as a wrong byte (and a wrong count).
struct TestPattern: Sendable {
    /// The pattern repeats after this many bytes, a prime, so no chunk size lines it up with itself.
    static let period = 1_048_573
    /// Longest piece read from the table at once.
    private static let piece = 64 << 10
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

    /// `count` bytes of the stream from `offset` on.
    func bytes(at offset: Int, count: Int) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(count)
        var done = 0
        while done < count {
            let start = (self.seed + offset + done) % Self.period
            let length = min(Self.piece, count - done)
            Self.table.withUnsafeBufferPointer { table in
                _ = buffer.writeBytes(
                    UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(table)[start..<start + length]))
            }
            done += length
        }
        return buffer
    }

    /// The stream offset of the first byte of `chunk` that differs from the stream, when
    /// `chunk` should be the bytes from `offset` on; nil if it matches.
    func firstMismatch(in chunk: ByteBuffer, at offset: Int) -> Int? {
        chunk.withUnsafeReadableBytes { bytes in
            Self.table.withUnsafeBytes { table in
                var done = 0
                while done < bytes.count {
                    let start = (self.seed + offset + done) % Self.period
                    let length = min(Self.piece, bytes.count - done)
                    if memcmp(bytes.baseAddress! + done, table.baseAddress! + start, length) != 0 {
                        for index in 0..<length where bytes[done + index] != table[start + index] {
                            return offset + done + index
                        }
                    }
                    done += length
                }
                return nil
            }
        }
    }
}
