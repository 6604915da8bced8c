/// Fixed limits and constants of the wire protocol, shared by both ends.
///
/// Everything here is part of the protocol: changing a value changes what a peer may send.
public enum ProtocolLimits {
    /// The protocol version this build speaks, sent in `hello` and `attach`. Version 2 made
    /// authentication mutual and bound data channels to their agent; a peer speaking
    /// another version is answered `unsupported_version`.
    public static let version = 2

    /// The longest control line accepted, newline included. A longer line is a protocol
    /// error (`line_too_long`) and the connection is closed: no control message comes
    /// near this, so it only bounds what a hostile peer can make us buffer.
    public static let maxLineBytes = 16 * 1024

    /// Bytes of randomness in each authentication nonce (the relay's and the agent's).
    public static let nonceBytes = 32

    /// The longest nonce accepted from a peer, in characters (base64 of 32 bytes is 44).
    public static let maxNonceLength = 128

    /// How many recent clock samples (`at` of handshake and heartbeat messages) an agent
    /// keeps per control channel to estimate the smallest one-way offset to the relay's
    /// clock (``ConnectAge``). At one relay ping and one pong per heartbeat interval this
    /// covers 32 intervals, short enough that clock drift between the hosts stays negligible.
    public static let connectAgeSamples = 64

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
