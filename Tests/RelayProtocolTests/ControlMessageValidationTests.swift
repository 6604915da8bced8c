import RelayProtocol
import Testing

@Suite struct ControlMessageValidationTests {
    static let session = Fixture.session
    static let token = Fixture.token
    static let nameRule = "1 to 64 characters of A-Z a-z 0-9 . _ -"

    // MARK: names

    @Test(arguments: ["a", "office", "Office-2.lab_x", String(repeating: "n", count: 64), "0", "-", "."])
    func validNames(_ name: String) {
        #expect(Names.isValid(name))
    }

    @Test(arguments: ["", "bad name", "über", "a/b", "a:b", "a\n", String(repeating: "n", count: 65), "a\u{0}b", "é"])
    func invalidNames(_ name: String) {
        #expect(!Names.isValid(name))
    }

    @Test func nameRuleIsWorded() {
        #expect(Names.rule == Self.nameRule)
    }

    @Test(arguments: ["", "bad name", String(repeating: "n", count: 65), "a\"b"])
    func helloWithBadAgentName(_ name: String) {
        let line = text(ControlCodec.encode(.hello(.init(agent: name, nonce: "n")))).dropLast()
        #expect(decodeError(String(line)) == ProtocolError(.badMessage, "field 'agent' must be \(Self.nameRule)"))
    }

    @Test func registerWithBadServiceName() {
        #expect(
            decodeError(#"{"type":"register","services":["web","no way"]}"#)
                == ProtocolError(.badMessage, "field 'services' must be \(Self.nameRule)"))
    }

    @Test func registerWithTooManyServices() throws {
        let many = (0...1024).map { "s\($0)" }
        let line = String(text(ControlCodec.encode(.register(.init(services: many)))).dropLast())
        #expect(decodeError(line) == ProtocolError(.badMessage, "invalid value in field 'services'"))
        let most = Array(many.prefix(1024))
        let ok = String(text(ControlCodec.encode(.register(.init(services: most)))).dropLast())
        #expect(try decode(ok) == .register(.init(services: most)))
    }

    @Test func registerWithNoServicesIsValid() throws {
        #expect(try decode(#"{"type":"register","services":[]}"#) == .register(.init(services: [])))
    }

    @Test func registeredWithBadAcceptedName() {
        #expect(
            decodeError(#"{"type":"registered","accepted":[""],"refused":[]}"#)
                == ProtocolError(.badMessage, "field 'accepted' must be \(Self.nameRule)"))
    }

    @Test func connectWithBadServiceName() {
        let line =
            #"{"type":"connect","session":"\#(Self.session)","service":"w b","token":"\#(Self.token)","client":"c"}"#
        #expect(decodeError(line) == ProtocolError(.badMessage, "field 'service' must be \(Self.nameRule)"))
    }

    // MARK: session ids

    @Test(arguments: ["", "3f9a0c12be4", "3f9a0c12be477", "3f9a0c12be4g", "3f9a0c12be4 ", "xxxxxxxxxxxx"])
    func badSessionIDs(_ session: String) {
        let notSession = ProtocolError(.badMessage, "field 'session' is not a session id")
        #expect(decodeError(#"{"type":"attached","session":"\#(session)"}"#) == notSession)
        #expect(decodeError(#"{"type":"refuse","session":"\#(session)","code":"timeout","message":""}"#) == notSession)
        #expect(
            decodeError(#"{"type":"attach","version":1,"session":"\#(session)","token":"\#(Self.token)"}"#)
                == notSession)
        #expect(
            decodeError(
                #"{"type":"connect","session":"\#(session)","service":"web","token":"\#(Self.token)","client":"c"}"#)
                == notSession)
    }

    @Test func upperCaseHexSessionIsWellFormed() throws {
        #expect(
            try decode(#"{"type":"attached","session":"3F9A0C12BE47"}"#) == .attached(.init(session: "3F9A0C12BE47")))
    }

    // MARK: tokens

    @Test(arguments: [0, 1, 42, 44, 100])
    func badTokenLength(_ length: Int) {
        let token = String(repeating: "A", count: length)
        let bad = ProtocolError(.badMessage, "invalid value in field 'token'")
        #expect(decodeError(#"{"type":"attach","version":1,"session":"\#(Self.session)","token":"\#(token)"}"#) == bad)
        #expect(
            decodeError(
                #"{"type":"connect","session":"\#(Self.session)","service":"web","token":"\#(token)","client":""}"#)
                == bad)
    }

    // MARK: other fields

    @Test(arguments: [0, 63, 65, 128])
    func badProofLength(_ length: Int) {
        let proof = String(repeating: "a", count: length)
        #expect(
            decodeError(#"{"type":"auth","proof":"\#(proof)"}"#)
                == ProtocolError(.badMessage, "invalid value in field 'proof'"))
    }

    @Test func proofOfRightLengthButNotHexIsLeftToTheAuthenticator() throws {
        // Shape is checked here; whether it verifies is the state machine's business (auth_failed).
        let proof = String(repeating: "z", count: 64)
        #expect(try decode(#"{"type":"auth","proof":"\#(proof)"}"#) == .auth(.init(proof: proof)))
    }

    @Test(arguments: ["", String(repeating: "n", count: 129)])
    func badNonce(_ nonce: String) {
        #expect(
            decodeError(#"{"type":"challenge","nonce":"\#(nonce)"}"#)
                == ProtocolError(.badMessage, "invalid value in field 'nonce'"))
    }

    @Test func longestNonceIsAccepted() throws {
        let nonce = String(repeating: "n", count: 128)
        #expect(try decode(#"{"type":"challenge","nonce":"\#(nonce)"}"#) == .challenge(.init(nonce: nonce)))
    }

    @Test func negativeHeartbeatSeconds() throws {
        #expect(
            decodeError(#"{"type":"welcome","heartbeatSeconds":-1,"proof":"\#(Fixture.proof)"}"#)
                == ProtocolError(.badMessage, "invalid value in field 'heartbeatSeconds'"))
        #expect(
            try decode(#"{"type":"welcome","heartbeatSeconds":0,"proof":"\#(Fixture.proof)"}"#)
                == .welcome(.init(heartbeatSeconds: 0, proof: Fixture.proof)))
    }

    /// Version 2 requires the new fields; a version 1 message decodes without them (so that
    /// it can be answered `unsupported_version`), but not with malformed ones.
    @Test func newFieldsAreRequiredInVersion2() {
        let session = Fixture.session
        let token = Fixture.token
        #expect(decodeError(#"{"type":"hello","version":2,"agent":"a"}"#)?.code == .badMessage)
        #expect(decodeError(#"{"type":"hello","version":2,"agent":"a","nonce":""}"#)?.code == .badMessage)
        #expect(decodeError(#"{"type":"hello","version":1,"agent":"a"}"#) == nil)
        #expect(decodeError(#"{"type":"welcome","heartbeatSeconds":1}"#)?.code == .badMessage)
        #expect(decodeError(#"{"type":"welcome","heartbeatSeconds":1,"proof":"ab"}"#)?.code == .badMessage)
        #expect(
            decodeError(#"{"type":"attach","version":2,"session":"\#(session)","token":"\#(token)"}"#)?.code
                == .badMessage)
        #expect(decodeError(#"{"type":"attach","version":1,"session":"\#(session)","token":"\#(token)"}"#) == nil)
        #expect(
            decodeError(#"{"type":"attach","version":1,"session":"\#(session)","token":"\#(token)","proof":"x"}"#)?
                .code == .badMessage)
    }

    @Test func freeTextIsNotValidated() throws {
        // error/refuse messages and the client address are free text (the receiver cuts and escapes them).
        let long = String(repeating: "m", count: 2000)
        #expect(
            try decode(#"{"type":"error","code":"timeout","message":"\#(long)"}"#)
                == .error(.init(code: .timeout, message: long)))
    }
}
