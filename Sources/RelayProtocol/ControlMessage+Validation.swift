/// Value checks beyond JSON types: names, ids and sizes a peer may send.
extension ControlMessage {
    /// Throws ``ErrorCode/badMessage`` when a field holds a value no honest peer sends.
    func validate() throws(ProtocolError) {
        switch self {
        case .hello(let m):
            try Names.require(m.agent, field: "agent")
            // Version 1 had no nonce: its `hello` decodes, to be answered `unsupported_version`.
            if m.version == ProtocolLimits.version || m.nonce != nil {
                try Self.require(Self.isNonce(m.nonce), "nonce")
            }
        case .challenge(let m):
            try Self.require(Self.isNonce(m.nonce), "nonce")
        case .auth(let m):
            try Self.require(Self.isProof(m.proof), "proof")
        case .welcome(let m):
            try Self.require(m.heartbeatSeconds.isFinite && m.heartbeatSeconds >= 0, "heartbeatSeconds")
            try Self.require(Self.isProof(m.proof), "proof")
        case .register(let m):
            try Self.require(m.services.count <= ProtocolLimits.maxServicesPerAgent, "services")
            for name in m.services { try Names.require(name, field: "services") }
        case .registered(let m):
            for name in m.accepted { try Names.require(name, field: "accepted") }
        case .connect(let m):
            try SessionIDs.require(m.session)
            try Names.require(m.service, field: "service")
            try Self.require(Tokens.isWellFormed(m.token), "token")
        case .refuse(let m):
            try SessionIDs.require(m.session)
        case .attach(let m):
            try SessionIDs.require(m.session)
            try Self.require(Tokens.isWellFormed(m.token), "token")
            // Version 1 had no proof: its `attach` decodes, to be answered `unsupported_version`.
            if m.version == ProtocolLimits.version || m.proof != nil {
                try Self.require(Self.isProof(m.proof), "proof")
            }
        case .attached(let m):
            try SessionIDs.require(m.session)
        case .ping, .pong, .error, .restarting:
            break
        }
    }

    private static func isNonce(_ nonce: String?) -> Bool {
        guard let nonce else { return false }
        return !nonce.isEmpty && nonce.utf8.count <= ProtocolLimits.maxNonceLength
    }

    private static func isProof(_ proof: String?) -> Bool {
        proof?.utf8.count == 64
    }

    private static func require(_ condition: Bool, _ field: String) throws(ProtocolError) {
        if !condition { throw ProtocolError(.badMessage, "invalid value in field '\(field)'") }
    }
}

/// The rules for agent ids and service names, shared by the wire and the configs.
public enum Names {
    /// 1 to ``ProtocolLimits/maxNameLength`` characters of `A-Z a-z 0-9 . _ -`.
    public static func isValid(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= ProtocolLimits.maxNameLength else { return false }
        return name.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
                true
            default: false
            }
        }
    }

    /// The rule in words, for error messages.
    public static let rule = "1 to \(ProtocolLimits.maxNameLength) characters of A-Z a-z 0-9 . _ -"

    static func require(_ name: String, field: String) throws(ProtocolError) {
        if !isValid(name) { throw ProtocolError(.badMessage, "field '\(field)' must be \(rule)") }
    }
}
