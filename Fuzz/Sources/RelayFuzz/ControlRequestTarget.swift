import FoundationEssentials
import NIOCore
import RelayControl
import RelayCore

/// The control socket's request parser (ControlSocketServer.decode): any line is a request or
/// a failure with a code, and a request encodes back to a line that decodes to it.
enum ControlRequestTarget {
    static func run(_ bytes: [UInt8]) {
        let line = ByteBuffer(bytes: bytes)
        _ = ControlSocketServer.requestID(line)
        guard case .success(let request) = ControlSocketServer.decode(line) else { return }
        guard let encoded = try? ControlJSON.encoder().encode(request) else {
            return check(false, "a decoded request does not encode: \(request)")
        }
        guard case .success(let again) = ControlSocketServer.decode(ByteBuffer(bytes: encoded)) else {
            return check(false, "our own encoding of \(request) does not decode")
        }
        check(again == request, "round trip changed \(request) into \(again)")
    }
}
