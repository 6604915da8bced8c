import Crypto
import FoundationEssentials
import RelaySupport

/// The challenge/response that proves an agent knows its secret without sending it (S1–S2).
///
/// proof = hex(HMAC-SHA256(key: secret, message: "relay-auth-v1" NUL nonce NUL agentID)),
/// where `nonce` is the base64 text exactly as the relay sent it in `challenge`.
public enum Authenticator {
    /// Domain separation: this HMAC key is used for nothing else, but a label keeps it so.
    static let label = "relay-auth-v1"

    /// A fresh random nonce, base64 encoded, for one `challenge`.
    public static func makeNonce() -> String {
        Data(randomBytes(ProtocolLimits.nonceBytes)).base64EncodedString()
    }

    /// The proof an agent sends in `auth`.
    public static func proof(secret: Secret, nonce: String, agentID: String) -> String {
        let mac = HMAC<SHA256>.authenticationCode(
            for: message(nonce: nonce, agentID: agentID),
            using: SymmetricKey(data: secret.bytes)
        )
        return Hex.encode(Array(mac))
    }

    /// Whether `proof` is right, compared in constant time.
    public static func verify(proof: String, secret: Secret, nonce: String, agentID: String) -> Bool {
        guard let code = Hex.decode(proof) else { return false }
        return HMAC<SHA256>.isValidAuthenticationCode(
            code,
            authenticating: message(nonce: nonce, agentID: agentID),
            using: SymmetricKey(data: secret.bytes)
        )
    }

    private static func message(nonce: String, agentID: String) -> [UInt8] {
        Array(label.utf8) + [0] + Array(nonce.utf8) + [0] + Array(agentID.utf8)
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
