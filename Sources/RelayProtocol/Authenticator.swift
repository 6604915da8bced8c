import Crypto
import FoundationEssentials
import RelaySupport

/// The mutual challenge/response of a control channel (S1–S2) and the proof that binds a
/// data channel to its agent (S10), all HMAC-SHA256 keyed by the agent's secret:
///
/// - agent proof (in `auth`):   HMAC(secret, "relay-auth-v2" NUL relayNonce NUL agentNonce NUL agentID)
/// - relay proof (in `welcome`): HMAC(secret, "relay-welcome-v2" NUL relayNonce NUL agentNonce NUL agentID)
/// - attach proof (in `attach`): HMAC(secret, "relay-attach-v2" NUL session NUL token)
///
/// Proofs are 64 lowercase hex digits; nonces are the base64 text exactly as sent. The labels
/// keep the three apart: no proof of one kind is ever a valid proof of another.
public enum Authenticator {
    /// Label of the agent's proof in `auth`.
    static let agentLabel = "relay-auth-v2"
    /// Label of the relay's proof in `welcome`.
    static let relayLabel = "relay-welcome-v2"
    /// Label of the proof in `attach`.
    static let attachLabel = "relay-attach-v2"

    /// What both handshake proofs cover: the two nonces and the agent id.
    public struct Handshake: Equatable, Sendable {
        /// The relay's nonce, from `challenge`.
        public var relayNonce: String
        /// The agent's nonce, from `hello`.
        public var agentNonce: String
        /// The agent id, from `hello`.
        public var agentID: String

        public init(relayNonce: String, agentNonce: String, agentID: String) {
            self.relayNonce = relayNonce
            self.agentNonce = agentNonce
            self.agentID = agentID
        }

        fileprivate var fields: [String] { [self.relayNonce, self.agentNonce, self.agentID] }
    }

    /// A key no agent holds, for the proof an unknown agent id is checked against: an
    /// unknown id then costs the relay the same work as a known one with a wrong proof.
    public static let dummySecret = Secret(randomBytes(32))

    /// A fresh random nonce, base64 encoded, for one `hello` or `challenge`.
    public static func makeNonce() -> String {
        Data(randomBytes(ProtocolLimits.nonceBytes)).base64EncodedString()
    }

    /// The proof an agent sends in `auth`.
    public static func agentProof(secret: Secret, _ handshake: Handshake) -> String {
        self.mac(secret, self.agentLabel, handshake.fields)
    }

    /// Whether an agent's `auth` proof is right, compared in constant time.
    public static func verifyAgent(proof: String, secret: Secret, _ handshake: Handshake) -> Bool {
        self.verify(proof, secret, self.agentLabel, handshake.fields)
    }

    /// The proof the relay sends in `welcome`.
    public static func relayProof(secret: Secret, _ handshake: Handshake) -> String {
        self.mac(secret, self.relayLabel, handshake.fields)
    }

    /// Whether the relay's `welcome` proof is right, compared in constant time.
    public static func verifyRelay(proof: String, secret: Secret, _ handshake: Handshake) -> Bool {
        self.verify(proof, secret, self.relayLabel, handshake.fields)
    }

    /// The proof an agent sends in `attach` for a session it was offered.
    public static func attachProof(secret: Secret, session: String, token: String) -> String {
        self.mac(secret, self.attachLabel, [session, token])
    }

    /// Whether an `attach` proof is right, compared in constant time.
    public static func verifyAttach(proof: String, secret: Secret, session: String, token: String) -> Bool {
        self.verify(proof, secret, self.attachLabel, [session, token])
    }

    private static func mac(_ secret: Secret, _ label: String, _ fields: [String]) -> String {
        let code = HMAC<SHA256>.authenticationCode(
            for: self.message(label, fields), using: SymmetricKey(data: secret.bytes))
        return Hex.encode(Array(code))
    }

    private static func verify(_ proof: String, _ secret: Secret, _ label: String, _ fields: [String]) -> Bool {
        // A malformed proof still costs one HMAC, so its answer comes no sooner.
        let code = Hex.decode(proof) ?? []
        let valid = HMAC<SHA256>.isValidAuthenticationCode(
            code, authenticating: self.message(label, fields), using: SymmetricKey(data: secret.bytes))
        return valid && code.count == SHA256.byteCount
    }

    private static func message(_ label: String, _ fields: [String]) -> [UInt8] {
        var bytes = Array(label.utf8)
        for field in fields {
            bytes.append(0)
            bytes.append(contentsOf: field.utf8)
        }
        return bytes
    }
}

/// Session ids: short random hex, unique among live sessions, shown to operators.
public enum SessionIDs {
    /// A new random session id.
    public static func make() -> String { Hex.encode(randomBytes(ProtocolLimits.sessionIDBytes)) }

    /// Whether `id` has the form of a session id.
    public static func isWellFormed(_ id: String) -> Bool {
        id.utf8.count == ProtocolLimits.sessionIDBytes * 2 && Hex.decode(id) != nil
    }

    static func require(_ id: String) throws(ProtocolError) {
        if !isWellFormed(id) { throw ProtocolError(.badMessage, "field 'session' is not a session id") }
    }
}

/// Per-session attach tokens: unguessable, single use, compared in constant time.
public enum Tokens {
    /// A new random token (base64url, no padding).
    public static func make() -> String {
        Data(randomBytes(ProtocolLimits.tokenBytes)).base64EncodedString()
            .replacingLiterally("+", with: "-")
            .replacingLiterally("/", with: "_")
            .replacingLiterally("=", with: "")
    }

    /// Whether `token` could be a token (the right length); says nothing of whether it is right.
    public static func isWellFormed(_ token: String) -> Bool {
        token.utf8.count == (ProtocolLimits.tokenBytes * 4 + 2) / 3
    }

    /// Whether two tokens are equal, in constant time.
    public static func matches(_ presented: String, _ expected: String) -> Bool {
        constantTimeEquals(Array(presented.utf8), Array(expected.utf8))
    }
}

/// Lowercase hex encoding.
public enum Hex {
    private static let digits = Array("0123456789abcdef".utf8)

    /// `bytes` as lowercase hex.
    public static func encode(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The bytes of a hex string, or nil if it is not an even number of hex digits.
    public static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(chars.count / 2)
        var index = 0
        while index < chars.count {
            guard let high = value(chars[index]), let low = value(chars[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        return out
    }

    private static func value(_ char: UInt8) -> UInt8? {
        switch char {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): char - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): char - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): char - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// Cryptographically secure random bytes from the system generator.
func randomBytes(_ count: Int) -> [UInt8] {
    // Eight bytes per draw: one getrandom(2) call each, not one per byte (a session token
    // took 32 system calls).
    var generator = SystemRandomNumberGenerator()
    var bytes: [UInt8] = []
    bytes.reserveCapacity(count)
    while bytes.count < count {
        var word = generator.next()
        for _ in 0..<min(8, count - bytes.count) {
            bytes.append(UInt8(truncatingIfNeeded: word))
            word >>= 8
        }
    }
    return bytes
}
