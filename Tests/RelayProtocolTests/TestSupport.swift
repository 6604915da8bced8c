import NIOCore
import RelayProtocol

/// Shared fixtures for the protocol tests.
enum Fixture {
    /// A well-formed session id (12 hex digits).
    static let session = "3f9a0c12be47"
    /// A well-formed token (43 characters of base64url).
    static let token = String(repeating: "A", count: 43)
    /// A well-formed proof (64 hex digits).
    static let proof = String(repeating: "0", count: 64)

    /// One valid instance of every message type, in declaration order.
    static let everyMessage: [ControlMessage] = [
        .hello(.init(agent: "office", nonce: "YWdlbnQgbm9uY2U=")),
        .challenge(.init(nonce: "bm9uY2U=", at: 81234)),
        .auth(.init(proof: proof)),
        .welcome(.init(heartbeatSeconds: 10, proof: proof, at: 81236)),
        .register(.init(services: ["web", "ssh"])),
        .registered(
            .init(
                accepted: ["web"], refused: [.init(service: "ssh", code: .unknownService, message: "not assigned")])),
        .connect(
            .init(
                session: session, service: "web", token: token, client: "203.0.113.9:51234", at: 81240,
                expiresIn: 10000)),
        .refuse(.init(session: session, code: .targetUnreachable, message: "connection refused")),
        .attach(.init(session: session, token: token, proof: proof)),
        .attached(.init(session: session)),
        .ping(.init(seq: 7, at: 81250)),
        .pong(.init(seq: 7)),
        .error(.init(code: .authFailed, message: "authentication failed")),
        .restarting(.init()),
    ]
}

/// The text of a buffer.
func text(_ buffer: ByteBuffer) -> String {
    String(buffer: buffer)
}

/// Decodes one line given as text.
func decode(_ line: String) throws(ProtocolError) -> ControlMessage {
    try ControlCodec.decode(ByteBuffer(string: line))
}

/// The error decoding `line` throws, or nil if it decodes.
func decodeError(_ line: String) -> ProtocolError? {
    do {
        _ = try decode(line)
        return nil
    } catch {
        return error
    }
}

/// The messages among state-machine actions that are `.send`, for either machine.
func sent(_ actions: [ProxyControlStateMachine.Action]) -> [ControlMessage] {
    actions.compactMap { if case .send(let message) = $0 { message } else { nil } }
}

/// The messages among agent state-machine actions that are `.send`.
func sent(_ actions: [AgentControlStateMachine.Action]) -> [ControlMessage] {
    actions.compactMap { if case .send(let message) = $0 { message } else { nil } }
}

/// A small deterministic generator (SplitMix64), so randomized tests are reproducible.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
