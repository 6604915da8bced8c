/// A violation of the protocol by the peer: what to answer (`code`) and a one-line reason.
public struct ProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The code sent to the peer in an `error` message.
    public var code: ErrorCode
    /// A one-line human-readable explanation (never contains a secret).
    public var message: String

    /// Creates a protocol error.
    public init(_ code: ErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(self.code.rawValue): \(self.message)" }

    /// The `error` message that reports this violation to the peer.
    public var errorMessage: ControlMessage { .error(.init(code: self.code, message: self.message)) }
}
