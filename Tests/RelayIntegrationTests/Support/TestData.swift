import Crypto
import Foundation
import NIOCore

/// Test payloads: a block of random bytes of a prime length, repeated as far as needed, so
/// that no chunk boundary of the pump lines up with a repetition and reordering shows.
enum TestData {
    static let block: [UInt8] = {
        var generator = SystemRandomNumberGenerator()
        return (0..<1_000_003).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }()

    /// The `length` bytes that start at `offset` in the endless repetition of ``block``.
    static func slice(offset: Int, length: Int) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(length)
        var position = offset % block.count
        var remaining = length
        while remaining > 0 {
            let count = min(remaining, block.count - position)
            _ = block.withUnsafeBytes { raw in
                buffer.writeBytes(UnsafeRawBufferPointer(rebasing: raw[position..<position + count]))
            }
            remaining -= count
            position = 0
        }
        return buffer
    }

    /// Random bytes for one message.
    static func random(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }
}

/// An incremental SHA-256 that prints as hex.
struct Digest {
    private var hasher = SHA256()

    mutating func update(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { self.hasher.update(bufferPointer: $0) }
    }

    func hex() -> String {
        self.hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
