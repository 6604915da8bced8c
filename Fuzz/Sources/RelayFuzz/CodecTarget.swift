import NIOCore
import RelayProtocol

/// The NDJSON codec: any line decodes to a message or a ProtocolError (never a trap), and a
/// decoded message encodes to one line that decodes to the same message.
enum CodecTarget {
    static func run(_ bytes: [UInt8]) {
        guard
            case .success(let message) = Result(catching: { () throws(ProtocolError) in
                try ControlCodec.decode(ByteBuffer(bytes: bytes))
            })
        else { return }
        var encoded = ControlCodec.encode(message)
        let line = Array(encoded.readableBytesView)
        check(line.last == UInt8(ascii: "\n"), "an encoded message ends with a newline")
        check(line.dropLast().allSatisfy { $0 != UInt8(ascii: "\n") }, "an encoded message is one line")
        encoded.moveWriterIndex(to: encoded.writerIndex - 1)
        do {
            let again = try ControlCodec.decode(encoded)
            check(again == message, "round trip changed \(message) into \(again)")
        } catch {
            check(false, "our own encoding of \(message) does not decode: \(error)")
        }
    }
}
