import NIOCore
import RelayProtocol

/// An input cut into lines as the daemons' readers cut them (LineFramer, at the protocol's line
/// limit), fed in pieces whose sizes come from the input's first byte.
enum Lines {
    static func split(_ bytes: [UInt8], maxLineBytes: Int = ProtocolLimits.maxLineBytes) -> [Result<
        ByteBuffer, ProtocolError
    >] {
        guard let first = bytes.first else { return [] }
        let piece = Int(first % 64) + 1
        var framer = LineFramer(maxLineBytes: maxLineBytes)
        var lines: [Result<ByteBuffer, ProtocolError>] = []
        var offset = 1
        while offset < bytes.count {
            let end = min(bytes.count, offset + piece)
            framer.append(ByteBuffer(bytes: bytes[offset..<end]))
            offset = end
            do {
                while let line = try framer.nextLine() { lines.append(.success(line)) }
            } catch {
                lines.append(.failure(error))
                return lines
            }
            check(framer.bufferedBytes <= maxLineBytes + piece, "the line buffer holds \(framer.bufferedBytes) bytes")
        }
        return lines
    }

    /// Each line decoded as the control channel decodes it.
    static func messages(_ bytes: [UInt8]) -> [Result<ControlMessage, ProtocolError>] {
        Self.split(bytes).map { line in
            line.flatMap { buffer in
                Result { () throws(ProtocolError) in try ControlCodec.decode(buffer) }
            }
        }
    }
}
