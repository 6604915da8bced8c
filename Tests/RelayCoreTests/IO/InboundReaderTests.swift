import NIOCore
import RelayProtocol
import Testing

@testable import RelayCore

extension IOTests {
    /// `InboundReader`: lines first, then raw bytes starting with whatever arrived past the last
    /// line. Read boundaries are exact here (NIO's testing stream, one element per read); the
    /// last test runs over a real connection.
    @Suite(.timeLimit(.minutes(1)))
    struct InboundReaderTests {
        /// A reader whose reads are `chunks`, one each, then the end of stream.
        static func reader(_ chunks: [String], maxLineBytes: Int = ProtocolLimits.maxLineBytes) -> InboundReader {
            let (stream, source) = NIOAsyncChannelInboundStream<ByteBuffer>.makeTestingStream()
            for chunk in chunks { source.yield(ByteBuffer(string: chunk)) }
            source.finish()
            return InboundReader(stream, maxLineBytes: maxLineBytes)
        }

        static func lines(_ reader: InboundReader) async throws -> [String] {
            var lines: [String] = []
            while let line = try await reader.readLine() { lines.append(String(buffer: line)) }
            return lines
        }

        static func chunks(_ reader: InboundReader) async throws -> [String] {
            var chunks: [String] = []
            while let chunk = try await reader.nextChunk() { chunks.append(String(buffer: chunk)) }
            return chunks
        }

        @Test func linesSplitAcrossManyTinyReads() async throws {
            let text = "hello\n{\"type\":\"ping\",\"seq\":1}\r\nthird line\n"
            let reader = Self.reader(text.map { String($0) })
            #expect(try await Self.lines(reader) == ["hello", #"{"type":"ping","seq":1}"#, "third line"])
        }

        @Test func severalLinesInOneRead() async throws {
            let reader = Self.reader(["a\nbb\n\nccc\n", "dd", "d\n"])
            #expect(try await Self.lines(reader) == ["a", "bb", "", "ccc", "ddd"])
        }

        @Test func aLineOfExactlyTheLimitIsAccepted() async throws {
            let line = String(repeating: "x", count: 15)
            let reader = Self.reader([line + "\n"], maxLineBytes: 16)
            #expect(try await Self.lines(reader) == [line])
        }

        @Test func anOverLongLineIsAProtocolError() async throws {
            let reader = Self.reader(["short\n", "0123456789", "abcdefgh\n"], maxLineBytes: 16)
            #expect(try await reader.readLine().map { String(buffer: $0) } == "short")
            let error = await #expect(throws: ProtocolError.self) { try await reader.readLine() }
            #expect(error?.code == .lineTooLong)
        }

        /// The cap holds before any newline comes: a peer that sends an endless line is refused
        /// once it reaches the cap, not when it stops.
        @Test func anOverLongLineIsRefusedBeforeItsNewline() async throws {
            let (stream, source) = NIOAsyncChannelInboundStream<ByteBuffer>.makeTestingStream()
            for _ in 0..<4 { source.yield(ByteBuffer(string: "0123")) }
            let reader = InboundReader(stream, maxLineBytes: 16)
            // The stream stays open: a reader that waited for the newline would wait forever.
            let outcome = try await Timing.withTimeout(5) { () -> ProtocolError? in
                do {
                    _ = try await reader.readLine()
                    return nil
                } catch let error as ProtocolError {
                    return error
                }
            }
            source.finish()
            #expect(outcome??.code == .lineTooLong)
        }

        @Test func aPartialLastLineIsDroppedAtEndOfStream() async throws {
            let reader = Self.reader(["done\npart", "ial"])
            #expect(try await reader.readLine().map { String(buffer: $0) } == "done")
            #expect(try await reader.readLine() == nil)
        }

        @Test func endOfStreamIsNilAndStaysNil() async throws {
            let lines = Self.reader([])
            #expect(try await lines.readLine() == nil)
            #expect(try await lines.readLine() == nil)
            let raw = Self.reader([])
            #expect(try await raw.nextChunk() == nil)
            #expect(try await raw.nextChunk() == nil)
        }

        @Test func aReadErrorIsThrown() async throws {
            struct Broken: Error {}
            let (stream, source) = NIOAsyncChannelInboundStream<ByteBuffer>.makeTestingStream()
            source.yield(ByteBuffer(string: "partial"))
            source.finish(throwing: Broken())
            let reader = InboundReader(stream)
            await #expect(throws: Broken.self) { try await reader.readLine() }
        }

        @Test func nextChunkReturnsTheRemainderFirstThenRawBytes() async throws {
            let reader = Self.reader(["attach\nWORLD", "MORE\nBYTES", "!"])
            #expect(try await reader.readLine().map { String(buffer: $0) } == "attach")
            #expect(try await Self.chunks(reader) == ["WORLD", "MORE\nBYTES", "!"])
        }

        @Test func unreadLinesBecomePartOfTheRawStream() async throws {
            let reader = Self.reader(["one\ntwo\nthree"])
            #expect(try await reader.readLine().map { String(buffer: $0) } == "one")
            #expect(try await Self.chunks(reader) == ["two\nthree"])
        }

        @Test func aLineEndingAtAReadBoundaryLeavesNoEmptyChunk() async throws {
            let reader = Self.reader(["attach\n", "raw"])
            #expect(try await reader.readLine().map { String(buffer: $0) } == "attach")
            #expect(try await Self.chunks(reader) == ["raw"])
        }

        @Test func rawBytesWithoutAHandshakePassUnframed() async throws {
            let reader = Self.reader(["a\nb", "\r\n", "c"])
            #expect(try await Self.chunks(reader) == ["a\nb", "\r\n", "c"])
        }

        @Test func readMessageDecodesAndValidates() async throws {
            let reader = Self.reader([#"{"type":"ping","seq":7}"# + "\n", "not json\n"])
            #expect(try await reader.readMessage() == .ping(.init(seq: 7)))
            let error = await #expect(throws: ProtocolError.self) { try await reader.readMessage() }
            #expect(error?.code == .badJSON)
            #expect(try await reader.readMessage() == nil)
        }

        /// Over a real connection: a line and the first raw bytes in one write, more raw bytes
        /// later, a FIN; the reader gives the line, then every raw byte in order, then nil.
        @Test func aHandshakeLineThenRawBytesOverARealConnection() async throws {
            let pattern = TestPattern(seed: 99)
            try await Loopback.withConnection { sender, receiver in
                var opening = ByteBuffer(string: "hello\n")
                opening.writeImmutableBuffer(pattern.bytes(at: 0, count: 1000))
                try await sender.writer.write(opening)
                #expect(try await receiver.reader.readLine().map { String(buffer: $0) } == "hello")
                try await sender.send(pattern, from: 1000, count: 300_000)
                try await sender.finishWriting()
                let received = await receiver.receive(pattern)
                #expect(received.isIntact(301_000), "\(received)")
            }
        }
    }
}
