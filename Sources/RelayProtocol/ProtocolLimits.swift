/// Fixed limits and constants of the wire protocol, shared by both ends.
///
/// Everything here is part of the protocol: changing a value changes what a peer may send.
public enum ProtocolLimits {
    /// The protocol version this build speaks, sent in `hello` and `attach`.
    public static let version = 1

    /// The longest control line accepted, newline included. A longer line is a protocol
    /// error (`line_too_long`) and the connection is closed: no control message comes
    /// near this, so it only bounds what a hostile peer can make us buffer.
    public static let maxLineBytes = 16 * 1024

    /// Bytes of randomness in the relay's authentication nonce.
    public static let nonceBytes = 32

    /// Bytes of randomness in a session's attach token.
    public static let tokenBytes = 32

    /// Bytes of randomness in a session id (printed as hex, so twice as many characters).
    public static let sessionIDBytes = 6

    /// The longest agent id or service name accepted on the wire or in a config.
    public static let maxNameLength = 64

    /// The most services one agent may register.
    public static let maxServicesPerAgent = 1024

    /// The longest free-text `message` a peer may send in `error` or `refuse`; longer text is cut.
    public static let maxReasonLength = 512
}
