import Foundation
import RelayProtocol
import Testing

@Suite struct AuthenticatorTests {
    static let secret = Secret("correct horse battery staple")
    static let nonce = "bm9uY2Ugbm9uY2U="
    /// hex(HMAC-SHA256(secret, "relay-auth-v1" NUL nonce NUL "office")), computed independently (Python hmac).
    static let knownProof = "e4a96bc56386366fd7841e7e568eab6209e46329a9dff88c1d7e228e8b8ff9f7"

    @Test func proofMatchesAnIndependentComputation() {
        #expect(Authenticator.proof(secret: Self.secret, nonce: Self.nonce, agentID: "office") == Self.knownProof)
    }

    @Test func proofIs64LowercaseHexDigits() {
        let proof = Authenticator.proof(secret: Secret("s"), nonce: Authenticator.makeNonce(), agentID: "a")
        #expect(proof.count == 64)
        #expect(proof.allSatisfy { "0123456789abcdef".contains($0) })
    }

    @Test func rightProofVerifies() {
        #expect(Authenticator.verify(proof: Self.knownProof, secret: Self.secret, nonce: Self.nonce, agentID: "office"))
        #expect(
            Authenticator.verify(
                proof: Self.knownProof.uppercased(), secret: Self.secret, nonce: Self.nonce, agentID: "office"))
    }

    @Test func wrongSecret() {
        #expect(
            !Authenticator.verify(
                proof: Self.knownProof, secret: Secret("Correct horse battery staple"), nonce: Self.nonce,
                agentID: "office"))
    }

    @Test func wrongNonce() {
        #expect(
            !Authenticator.verify(
                proof: Self.knownProof, secret: Self.secret, nonce: "bm9uY2Ugbm9uY2V=", agentID: "office"))
    }

    @Test func wrongAgentID() {
        #expect(!Authenticator.verify(proof: Self.knownProof, secret: Self.secret, nonce: Self.nonce, agentID: "offic"))
        #expect(!Authenticator.verify(proof: Self.knownProof, secret: Self.secret, nonce: Self.nonce, agentID: "lab"))
    }

    @Test func fieldsAreSeparatedSoTheyCannotBeShifted() {
        // Without the NUL separators "ab"+"c" and "a"+"bc" would sign the same bytes.
        let one = Authenticator.proof(secret: Self.secret, nonce: "ab", agentID: "c")
        let two = Authenticator.proof(secret: Self.secret, nonce: "a", agentID: "bc")
        #expect(one != two)
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
        #expect(!Authenticator.verify(proof: proof, secret: Self.secret, nonce: Self.nonce, agentID: "office"))
    }

    @Test func oneFlippedDigitFails() {
        var digits = Array(Self.knownProof)
        digits[10] = digits[10] == "0" ? "1" : "0"
        #expect(!Authenticator.verify(proof: String(digits), secret: Self.secret, nonce: Self.nonce, agentID: "office"))
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
