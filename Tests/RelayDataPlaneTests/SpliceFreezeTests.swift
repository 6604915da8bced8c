import Glibc
import RelayDataPlane
import Testing

extension SpliceTests {
    /// A handover's mechanics without systemd: a session frozen on one plane with bytes in
    /// its pipe, resumed on another, loses and repeats no byte, and still ends cleanly.
    @Suite(.timeLimit(.minutes(1)))
    struct SpliceFreezeTests {
        static func byte(_ index: Int) -> UInt8 { UInt8(truncatingIfNeeded: index % 251) }

        @Test func aFrozenSessionResumesOnAnotherPlaneWithoutLosingAByte() async throws {
            let total = 4 << 20
            // client ─ first ══ plane ══ second ─ target; the target does not read at first,
            // with small buffers on its side, so the forward pipe fills.
            let (client, first) = try Loopback.connection()
            let (second, target) = try Loopback.connection(smallBuffers: true)
            let old = try SplicePlane(SplicePlane.Configuration(loops: 1))
            _ = old.start(first: Descriptor(rawValue: first), second: Descriptor(rawValue: second))
            try Descriptor(rawValue: client).setNonBlocking()
            var written = 0
            let deadline = ContinuousClock.now + .seconds(10)
            // Write until everything is full: client's send buffer, first's receive buffer,
            // the pipe, second's send buffer, target's receive buffer.
            while ContinuousClock.now < deadline {
                let chunk = (written..<min(total, written + 65536)).map(Self.byte)
                let count = chunk.withUnsafeBytes { write(client, $0.baseAddress!, $0.count) }
                if count > 0 {
                    written += count
                } else if old.statistics.pipesInUse > 0 {
                    break
                } else {
                    try await Task.sleep(for: .milliseconds(5))
                }
            }
            #expect(old.statistics.pipesInUse > 0, "the forward pipe never held bytes")

            let frozen = await old.freeze()
            old.shutdown()
            try #require(frozen.count == 1)
            #expect(frozen[0].forward.pending.count > 0)
            #expect(!frozen[0].forward.finished && !frozen[0].backward.finished)
            #expect(old.statistics.sessions == [0])

            let new = try SplicePlane(SplicePlane.Configuration(loops: 1))
            defer { new.shutdown() }
            let session = new.resume(frozen[0])
            // The rest is written blocking, then the client half-closes; the target reads
            // everything, checks every byte, and half-closes too.
            _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) & ~O_NONBLOCK)
            let alreadyWritten = written
            let writer = Task.detached {
                var sent = alreadyWritten
                while sent < total {
                    let chunk = (sent..<min(total, sent + 65536)).map(Self.byte)
                    let count = chunk.withUnsafeBytes { write(client, $0.baseAddress!, $0.count) }
                    guard count > 0 else { return false }
                    sent += count
                }
                return shutdown(client, Int32(SHUT_WR)) == 0
            }
            let reader = Task.detached { () -> (Int, Int?) in
                var received = 0
                var firstWrong: Int?
                var buffer = [UInt8](repeating: 0, count: 65536)
                while true {
                    let count = buffer.withUnsafeMutableBytes { read(target, $0.baseAddress!, $0.count) }
                    guard count > 0 else { break }
                    for index in 0..<count where firstWrong == nil && buffer[index] != Self.byte(received + index) {
                        firstWrong = received + index
                    }
                    received += count
                }
                _ = shutdown(target, Int32(SHUT_WR))
                return (received, firstWrong)
            }
            #expect(await writer.value)
            let (received, firstWrong) = await reader.value
            #expect(received == total)
            #expect(firstWrong == nil, "first wrong byte at \(firstWrong ?? -1)")
            var end: UInt8 = 0
            #expect(read(client, &end, 1) == 0, "the client sees the target's FIN")
            #expect(await session.outcome(timeout: .seconds(10)) == .finished)
            close(client)
            close(target)
        }
    }
}
