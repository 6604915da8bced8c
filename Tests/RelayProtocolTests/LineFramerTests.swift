import NIOCore
import RelayProtocol
import Testing

@Suite struct LineFramerTests {
    /// Every complete line the framer yields now, as text.
    static func lines(_ framer: inout LineFramer) throws(ProtocolError) -> [String] {
        var out: [String] = []
        while let line = try framer.nextLine() { out.append(text(line)) }
        return out
    }

    @Test func emptyFramerHasNothing() throws {
        var framer = LineFramer()
        #expect(try framer.nextLine() == nil)
        #expect(framer.bufferedBytes == 0)
        #expect(framer.takeRemainder() == nil)
    }

    /// A peer whose every write ends inside a line (the next line's start pending) never
    /// makes the framer hold more than one line plus one read, however much it sends: bytes
    /// taken out as lines are let go of. Before, the framer's storage grew with every read
    /// (32 MiB sent: 32 MiB held).
    @Test func partialLinesAtEveryReadDoNotAccumulate() throws {
        let limit = 16 * 1024
        var framer = LineFramer(maxLineBytes: limit)
        let line = Array(String(repeating: "x", count: limit - 100).utf8) + [UInt8(ascii: "\n")]
        // Writes of one line's length, shifted by half a line: each ends mid-line.
        var pending = Array(line[(line.count / 2)...])
        var sent = 0
        var lines = 0
        var largest = 0
        while sent < 32 << 20 {
            pending += line
            let read = Array(pending.prefix(line.count))
            pending.removeFirst(read.count)
            framer.append(ByteBuffer(bytes: read))
            sent += read.count
            while try framer.nextLine() != nil { lines += 1 }
            largest = max(largest, framer.retainedBytes)
        }
        print(
            "figure: framer fed \(sent >> 20) MiB of mid-line writes (\(lines) lines) retained at most \(largest) bytes"
        )
        #expect(lines > 1000)
        #expect(largest <= limit + line.count * 2, "retained \(largest) bytes")
    }

    @Test func oneLine() throws {
        var framer = LineFramer()
        framer.append(ByteBuffer(string: "hello\n"))
        #expect(try Self.lines(&framer) == ["hello"])
        #expect(framer.bufferedBytes == 0)
    }

    @Test func dripFedOneByteAtATime() throws {
        var framer = LineFramer()
        var got: [String] = []
        for byte in "{\"type\":\"ping\",\"seq\":1}\r\nsecond\n\nthird".utf8 {
            framer.append(ByteBuffer(bytes: [byte]))
            got += try Self.lines(&framer)
        }
        #expect(got == [#"{"type":"ping","seq":1}"#, "second", ""])
        #expect(framer.bufferedBytes == 5)
        #expect(framer.takeRemainder().map(text) == "third")
    }

    @Test func crlfAndBareLF() throws {
        var framer = LineFramer()
        framer.append(ByteBuffer(string: "a\r\nb\nc\r\r\n\r\n"))
        #expect(try Self.lines(&framer) == ["a", "b", "c\r", ""])
    }

    @Test func crSplitFromItsLF() throws {
        var framer = LineFramer()
        framer.append(ByteBuffer(string: "a\r"))
        #expect(try framer.nextLine() == nil)
        framer.append(ByteBuffer(string: "\n"))
        #expect(try Self.lines(&framer) == ["a"])
    }

    @Test func loneCRIsNotALineEnd() throws {
        var framer = LineFramer()
        framer.append(ByteBuffer(string: "a\rb\n"))
        #expect(try Self.lines(&framer) == ["a\rb"])
    }

    @Test func severalLinesInOneChunk() throws {
        var framer = LineFramer()
        framer.append(ByteBuffer(string: "one\ntwo\nthree\nfou"))
        #expect(try Self.lines(&framer) == ["one", "two", "three"])
        framer.append(ByteBuffer(string: "r\n"))
        #expect(try Self.lines(&framer) == ["four"])
    }

    @Test func lineSplitAcrossChunks() throws {
        var framer = LineFramer()
        framer.append(ByteBuffer(string: "hel"))
        #expect(try framer.nextLine() == nil)
        #expect(framer.bufferedBytes == 3)
        framer.append(ByteBuffer(string: "lo\nwor"))
        #expect(try Self.lines(&framer) == ["hello"])
        framer.append(ByteBuffer(string: "ld\n"))
        #expect(try Self.lines(&framer) == ["world"])
    }

    @Test func takeRemainderAfterALine() throws {
        var framer = LineFramer()
        var chunk = ByteBuffer(string: #"{"type":"attached","session":"3f9a0c12be47"}"# + "\n")
        chunk.writeBytes([0x00, 0xFF, 0x0A, 0x41])  // raw bytes, including a newline, follow at once
        framer.append(chunk)
        #expect(try framer.nextLine().map(text) == #"{"type":"attached","session":"3f9a0c12be47"}"#)
        let taken = framer.takeRemainder()
        let remainder = try #require(taken)
        #expect(Array(remainder.readableBytesView) == [0x00, 0xFF, 0x0A, 0x41])
        #expect(framer.bufferedBytes == 0)
        #expect(framer.takeRemainder() == nil)
    }

    @Test func takeRemainderWhenNothingIsLeft() throws {
        var framer = LineFramer()
        framer.append(ByteBuffer(string: "attach\n"))
        #expect(try Self.lines(&framer) == ["attach"])
        #expect(framer.takeRemainder() == nil)
    }

    @Test func emptyChunksAreHarmless() throws {
        var framer = LineFramer()
        framer.append(ByteBuffer())
        #expect(try framer.nextLine() == nil)
        framer.append(ByteBuffer(string: "x"))
        framer.append(ByteBuffer())
        framer.append(ByteBuffer(string: "\n"))
        #expect(try Self.lines(&framer) == ["x"])
    }

    // MARK: the cap

    @Test func lineOfExactlyTheCapIsAccepted() throws {
        var framer = LineFramer(maxLineBytes: 8)
        framer.append(ByteBuffer(string: "1234567\n"))  // 7 + newline = 8
        #expect(try Self.lines(&framer) == ["1234567"])
    }

    @Test func lineOverTheCapWithItsNewline() {
        var framer = LineFramer(maxLineBytes: 8)
        framer.append(ByteBuffer(string: "12345678\n"))  // 9 with newline
        #expect(throws: ProtocolError(.lineTooLong, "line longer than 8 bytes")) { try framer.nextLine() }
    }

    @Test func crlfCountsTowardsTheCap() {
        var framer = LineFramer(maxLineBytes: 8)
        framer.append(ByteBuffer(string: "1234567\r\n"))
        #expect(throws: ProtocolError(.lineTooLong, "line longer than 8 bytes")) { try framer.nextLine() }
    }

    @Test func lineOverTheCapWithoutANewlineYet() throws {
        var framer = LineFramer(maxLineBytes: 8)
        framer.append(ByteBuffer(string: "1234567"))  // could still end in time
        #expect(try framer.nextLine() == nil)
        framer.append(ByteBuffer(string: "8"))  // 8 bytes and no newline: can no longer fit
        #expect(throws: ProtocolError(.lineTooLong, "line longer than 8 bytes")) { try framer.nextLine() }
    }

    @Test func dripFedOverlongLineFailsWithoutWaitingForANewline() {
        var framer = LineFramer(maxLineBytes: 64)
        var failedAt: Int?
        for index in 0..<10_000 {
            framer.append(ByteBuffer(string: "x"))
            do {
                _ = try framer.nextLine()
            } catch {
                #expect(error.code == .lineTooLong)
                failedAt = index + 1
                break
            }
        }
        #expect(failedAt == 64)
    }

    @Test func shortLinesBeforeALongOneAreStillDelivered() throws {
        var framer = LineFramer(maxLineBytes: 8)
        framer.append(ByteBuffer(string: "ok\n" + String(repeating: "x", count: 20) + "\n"))
        #expect(try framer.nextLine().map(text) == "ok")
        #expect(throws: ProtocolError(.lineTooLong, "line longer than 8 bytes")) { try framer.nextLine() }
    }

    @Test func defaultCapIsTheProtocolLimit() throws {
        #expect(LineFramer().maxLineBytes == 16 * 1024)
        #expect(ProtocolLimits.maxLineBytes == 16_384)
        var framer = LineFramer()
        framer.append(ByteBuffer(string: String(repeating: "a", count: 16_383) + "\n"))
        #expect(try framer.nextLine()?.readableBytes == 16_383)
        framer.append(ByteBuffer(string: String(repeating: "a", count: 16_384) + "\n"))
        #expect(throws: ProtocolError(.lineTooLong, "line longer than 16384 bytes")) { try framer.nextLine() }
    }

    /// However a stream is cut into chunks, the same lines come out.
    @Test func randomChunkingGivesTheSameLines() throws {
        var rng = SeededGenerator(seed: 42)
        for _ in 0..<200 {
            let lineCount = Int.random(in: 0...8, using: &rng)
            let lines = (0..<lineCount).map { _ in
                String((0..<Int.random(in: 0...30, using: &rng)).map { _ in "abc{}\" \r".randomElement(using: &rng)! })
            }
            let tail = String(repeating: "t", count: Int.random(in: 0...5, using: &rng))
            let stream = Array((lines.map { $0 + "\n" }.joined() + tail).utf8)
            var framer = LineFramer(maxLineBytes: 64)
            var got: [String] = []
            var offset = 0
            while offset < stream.count {
                let size = Int.random(in: 1...7, using: &rng)
                let end = min(stream.count, offset + size)
                framer.append(ByteBuffer(bytes: stream[offset..<end]))
                got += try Self.lines(&framer)
                offset = end
            }
            let expected = lines.map { $0.hasSuffix("\r") ? String($0.dropLast()) : $0 }
            #expect(got == expected)
            #expect(framer.takeRemainder().map(text) ?? "" == tail)
        }
    }
}
