import Foundation
import RelayProtocol
import Testing

@Suite struct AuthenticatorTests {
    static let secret = Secret("correct horse battery staple")
    static let nonce = "bm9uY2Ugbm9uY2U="
    static let agentNonce = "YWdlbnQgbm9uY2U="
    static let handshake = Authenticator.Handshake(relayNonce: nonce, agentNonce: agentNonce, agentID: "office")
    /// hex(HMAC-SHA256(secret, "relay-auth-v2" NUL relayNonce NUL agentNonce NUL "office")),
    /// computed independently (Python hmac).
    static let knownProof = "939830989f9001b9d044c19eb556755e8510d9d519b10ed782faae3197a4c6e1"
    /// The same with the label "relay-welcome-v2": the relay's proof.
    static let knownRelayProof = "7fa30a671dc3222c40fe22d3e0a294a24bcbe810799df24640138ca6593e5a2f"
    /// hex(HMAC-SHA256(secret, "relay-attach-v2" NUL "3f9a0c12be47" NUL 43×"A")).
    static let knownAttachProof = "9de84d1a396c8f18c812884aa4389e61f538aaed081cf17b87a15fdd474450b7"

    static func verify(_ proof: String, secret: Secret = secret, _ handshake: Authenticator.Handshake = handshake)
        -> Bool
    {
        Authenticator.verifyAgent(proof: proof, secret: secret, handshake)
    }

    static func with(relayNonce: String? = nil, agentNonce: String? = nil, agentID: String? = nil)
        -> Authenticator.Handshake
    {
        .init(
            relayNonce: relayNonce ?? Self.nonce, agentNonce: agentNonce ?? Self.agentNonce,
            agentID: agentID ?? "office")
    }

    @Test func proofsMatchAnIndependentComputation() {
        #expect(Authenticator.agentProof(secret: Self.secret, Self.handshake) == Self.knownProof)
        #expect(Authenticator.relayProof(secret: Self.secret, Self.handshake) == Self.knownRelayProof)
        #expect(
            Authenticator.attachProof(
                secret: Self.secret, session: "3f9a0c12be47", token: String(repeating: "A", count: 43))
                == Self.knownAttachProof)
    }

    /// The worked example of docs/protocol.md ("Example: a session") is real.
    @Test func theDocumentedExampleIsRight() {
        let handshake = Authenticator.Handshake(
            relayNonce: "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
            agentNonce: "ISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0A=", agentID: "office")
        #expect(
            Authenticator.agentProof(secret: Self.secret, handshake)
                == "4df6b302f61bfe0cde10faaf50912e9b505d20aa4719f7aeb72eafff77bcc01a")
        #expect(
            Authenticator.relayProof(secret: Self.secret, handshake)
                == "b3c5528ad39dc94e10d4f61b5c48e7574403712d26f41b45b84eb5373a84efe4")
        #expect(
            Authenticator.attachProof(
                secret: Self.secret, session: "3f9a0c12be47", token: "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1-f4CBgoM")
                == "c64440a78bfaa13ae9e89e7b4c4aeeffe37371dd2a423d7de3790c2ff66e7ece")
    }

    @Test func proofIs64LowercaseHexDigits() {
        let proof = Authenticator.agentProof(
            secret: Secret("s"), .init(relayNonce: Authenticator.makeNonce(), agentNonce: "n", agentID: "a"))
        #expect(proof.count == 64)
        #expect(proof.allSatisfy { "0123456789abcdef".contains($0) })
    }

    @Test func rightProofVerifies() {
        #expect(Self.verify(Self.knownProof))
        #expect(Self.verify(Self.knownProof.uppercased()))
        #expect(Authenticator.verifyRelay(proof: Self.knownRelayProof, secret: Self.secret, Self.handshake))
        #expect(
            Authenticator.verifyAttach(
                proof: Self.knownAttachProof, secret: Self.secret, session: "3f9a0c12be47",
                token: String(repeating: "A", count: 43)))
    }

    /// The labels keep the three proofs apart: none is valid as another, so a relay's proof
    /// can never be replayed as an agent's (a reflection), nor either as an attach.
    @Test func proofsOfOneKindAreNeverValidAsAnother() {
        #expect(!Authenticator.verifyRelay(proof: Self.knownProof, secret: Self.secret, Self.handshake))
        #expect(!Self.verify(Self.knownRelayProof))
        #expect(!Authenticator.verifyAttach(proof: Self.knownProof, secret: Self.secret, session: "a", token: "b"))
    }

    @Test func wrongSecret() {
        #expect(!Self.verify(Self.knownProof, secret: Secret("Correct horse battery staple")))
        #expect(
            !Authenticator.verifyAttach(
                proof: Self.knownAttachProof, secret: Secret("another agent's secret"), session: "3f9a0c12be47",
                token: String(repeating: "A", count: 43)))
    }

    @Test func wrongNonceEitherSide() {
        #expect(!Self.verify(Self.knownProof, Self.with(relayNonce: "bm9uY2Ugbm9uY2V=")))
        #expect(!Self.verify(Self.knownProof, Self.with(agentNonce: "YWdlbnQgbm9uY2V=")))
        // Swapped: the relay cannot make the agent prove over a pair it arranged.
        #expect(!Self.verify(Self.knownProof, Self.with(relayNonce: Self.agentNonce, agentNonce: Self.nonce)))
    }

    @Test func wrongAgentID() {
        #expect(!Self.verify(Self.knownProof, Self.with(agentID: "offic")))
        #expect(!Self.verify(Self.knownProof, Self.with(agentID: "lab")))
    }

    @Test func fieldsAreSeparatedSoTheyCannotBeShifted() {
        // Without the NUL separators "ab"+"c" and "a"+"bc" would sign the same bytes.
        let one = Authenticator.agentProof(secret: Self.secret, .init(relayNonce: "ab", agentNonce: "c", agentID: "d"))
        let two = Authenticator.agentProof(secret: Self.secret, .init(relayNonce: "a", agentNonce: "bc", agentID: "d"))
        #expect(one != two)
        let three = Authenticator.attachProof(secret: Self.secret, session: "ab", token: "c")
        let four = Authenticator.attachProof(secret: Self.secret, session: "a", token: "bc")
        #expect(three != four)
    }

    @Test(arguments: [
        "",
        "zz" + String(repeating: "0", count: 62),
        String(knownProof.dropLast()),
        knownProof + "0",
        String(knownProof.dropLast(2)),
        knownProof + "00",
        " " + String(knownProof.dropFirst()),
    ])
    func malformedProof(_ proof: String) {
        #expect(!Self.verify(proof))
    }

    @Test func oneFlippedDigitFails() {
        var digits = Array(Self.knownProof)
        digits[10] = digits[10] == "0" ? "1" : "0"
        #expect(!Self.verify(String(digits)))
    }

    @Test func theDummyKeyIsNoAgentsSecret() {
        #expect(Authenticator.dummySecret.bytes.count == 32)
        #expect(!Self.verify(Self.knownProof, secret: Authenticator.dummySecret))
    }

    @Test func noncesAreFreshBase64Of32Bytes() throws {
        let nonces = (0..<50).map { _ in Authenticator.makeNonce() }
        #expect(Set(nonces).count == 50)
        for nonce in nonces {
            let bytes = try #require(Data(base64Encoded: nonce))
            #expect(bytes.count == ProtocolLimits.nonceBytes)
            #expect(nonce.count == 44)
        }
    }

    // MARK: session ids

    @Test func sessionIDsAre12HexDigitsAndUnique() {
        let ids = (0..<200).map { _ in SessionIDs.make() }
        #expect(Set(ids).count == 200)
        for id in ids {
            #expect(id.count == 12)
            #expect(id.allSatisfy { "0123456789abcdef".contains($0) })
            #expect(SessionIDs.isWellFormed(id))
        }
    }

    @Test(arguments: ["", "abc", "3f9a0c12be4", "3f9a0c12be47a", "3f9a0c12be4z", "3f9a0c12be4-", "３f9a0c12be4"])
    func malformedSessionIDs(_ id: String) {
        #expect(!SessionIDs.isWellFormed(id))
    }

    // MARK: tokens

    @Test func tokensAreBase64URLWithoutPaddingAndUnique() throws {
        let tokens = (0..<200).map { _ in Tokens.make() }
        #expect(Set(tokens).count == 200)
        let alphabet = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        for token in tokens {
            #expect(token.count == 43)
            #expect(token.allSatisfy { alphabet.contains($0) })
            #expect(Tokens.isWellFormed(token))
            let standard = token.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/") + "="
            #expect(try #require(Data(base64Encoded: standard)).count == ProtocolLimits.tokenBytes)
        }
    }

    @Test func tokenWellFormednessIsOnlyItsLength() {
        #expect(Tokens.isWellFormed(String(repeating: "a", count: 43)))
        #expect(!Tokens.isWellFormed(String(repeating: "a", count: 42)))
        #expect(!Tokens.isWellFormed(String(repeating: "a", count: 44)))
        #expect(!Tokens.isWellFormed(""))
    }

    @Test func tokensMatchOnlyThemselves() {
        let token = Tokens.make()
        #expect(Tokens.matches(token, token))
        #expect(!Tokens.matches(token, Tokens.make()))
        #expect(!Tokens.matches(String(token.dropLast()), token))
        #expect(!Tokens.matches("", token))
        #expect(Tokens.matches("", ""))
    }

    // MARK: hex

    @Test func hexRoundTrip() {
        let bytes: [UInt8] = [0x00, 0x01, 0x7F, 0x80, 0xAB, 0xFF]
        #expect(Hex.encode(bytes) == "00017f80abff")
        #expect(Hex.decode("00017f80abff") == bytes)
        #expect(Hex.decode("00017F80ABFF") == bytes)
        #expect(Hex.encode([]) == "")
        #expect(Hex.decode("") == [])
    }

    @Test(arguments: ["0", "abc", "0g", "g0", "0x00", " 00", "00 ", "é0"])
    func hexRejectsMalformed(_ text: String) {
        #expect(Hex.decode(text) == nil)
    }
}
