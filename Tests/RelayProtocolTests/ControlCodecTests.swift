import NIOCore
import RelayProtocol
import Testing

@Suite struct ControlCodecTests {
    // MARK: encoding

    @Test(arguments: Fixture.everyMessage)
    func roundTrip(_ message: ControlMessage) throws {
        let encoded = ControlCodec.encode(message)
        let line = text(encoded)
        #expect(line.hasSuffix("\n"))
        #expect(line.filter { $0 == "\n" }.count == 1, "exactly one line: \(line)")
        #expect(line.contains(#""type":"\#(message.type)""#))
        var withoutNewline = encoded
        withoutNewline.moveWriterIndex(to: encoded.writerIndex - 1)
        #expect(try ControlCodec.decode(withoutNewline) == message)
    }

    @Test func everyTypeIsCovered() {
        let types = Set(Fixture.everyMessage.map(\.type))
        #expect(
            types == [
                "hello", "challenge", "auth", "welcome", "register", "registered", "connect", "refuse", "attach",
                "attached", "ping", "pong", "error", "restarting",
            ])
    }

    @Test func encodingIsCompactSortedAndKeepsSlashes() {
        #expect(
            text(ControlCodec.encode(.hello(.init(agent: "office", nonce: "bm9uY2U="))))
                == #"{"agent":"office","nonce":"bm9uY2U=","type":"hello","version":2}"# + "\n")
        #expect(
            text(ControlCodec.encode(.welcome(.init(heartbeatSeconds: 10, proof: Fixture.proof, at: 5))))
                == #"{"at":5,"heartbeatSeconds":10,"proof":"\#(Fixture.proof)","type":"welcome"}"# + "\n")
        // Unset clock stamps are left out.
        #expect(
            text(ControlCodec.encode(.welcome(.init(heartbeatSeconds: 10, proof: Fixture.proof))))
                == #"{"heartbeatSeconds":10,"proof":"\#(Fixture.proof)","type":"welcome"}"# + "\n")
        #expect(text(ControlCodec.encode(.ping(.init(seq: 7)))) == #"{"seq":7,"type":"ping"}"# + "\n")
        let refuse = ControlMessage.refuse(.init(session: Fixture.session, code: .targetUnreachable, message: "a/b"))
        #expect(
            text(ControlCodec.encode(refuse))
                == #"{"code":"target_unreachable","message":"a/b","session":"3f9a0c12be47","type":"refuse"}"# + "\n")
    }

    @Test func newlinesInsideStringsAreEscaped() throws {
        let message = ControlMessage.error(.init(code: .badMessage, message: "two\nlines\r\u{2028}"))
        let line = text(ControlCodec.encode(message))
        #expect(line.dropLast().contains("\n") == false)
        #expect(try decode(String(line.dropLast())) == message)
    }

    @Test func largestSequenceNumberRoundTrips() throws {
        let message = ControlMessage.ping(.init(seq: .max))
        #expect(try decode(String(text(ControlCodec.encode(message)).dropLast())) == message)
    }

    // MARK: decoding what a peer may send

    @Test func unknownFieldsAreIgnored() throws {
        #expect(try decode(#"{"type":"ping","seq":3,"later":{"x":[1,2]}}"#) == .ping(.init(seq: 3)))
    }

    @Test func fieldOrderDoesNotMatter() throws {
        #expect(try decode(#"{"seq":3,"type":"pong"}"#) == .pong(.init(seq: 3)))
    }

    @Test func wholeNumberWrittenAsFloatIsAccepted() throws {
        #expect(try decode(#"{"type":"ping","seq":1.0}"#) == .ping(.init(seq: 1)))
    }

    @Test func welcomeAcceptsFractionalSeconds() throws {
        #expect(
            try decode(#"{"type":"welcome","heartbeatSeconds":0.5,"proof":"\#(Fixture.proof)"}"#)
                == .welcome(.init(heartbeatSeconds: 0.5, proof: Fixture.proof)))
    }

    @Test func helloCarriesItsVersionWhateverItIs() throws {
        // The codec accepts any integer version; the state machine decides what it supports.
        #expect(
            try decode(#"{"type":"hello","version":1,"agent":"office"}"#)
                == .hello(.init(version: 1, agent: "office", nonce: nil)))
        #expect(
            try decode(#"{"type":"hello","version":7,"agent":"office","nonce":"n"}"#)
                == .hello(.init(version: 7, agent: "office", nonce: "n")))
    }

    @Test func stampingSetsAtOnlyWhereTheMessageHasIt() {
        let connect = ControlMessage.connect(
            .init(session: Fixture.session, service: "web", token: Fixture.token, client: "c", expiresIn: 10))
        #expect(connect.stamped(at: 42).at == 42)
        #expect(connect.stamped(at: 42).stamped(at: 50).at == 42)
        #expect(ControlMessage.ping(.init(seq: 1)).stamped(at: 9) == .ping(.init(seq: 1, at: 9)))
        #expect(ControlMessage.pong(.init(seq: 1)).stamped(at: 9) == .pong(.init(seq: 1, at: 9)))
        #expect(
            ControlMessage.challenge(.init(nonce: "n")).stamped(at: 9) == .challenge(.init(nonce: "n", at: 9)))
        let register = ControlMessage.register(.init(services: []))
        #expect(register.stamped(at: 9) == register)
        #expect(register.at == nil)
    }

    // MARK: error paths

    @Test(arguments: ["", " ", "nul", "{", #"{"type":"ping""#, "{'type':'ping'}", "\u{FEFF}x"])
    func invalidJSON(_ line: String) {
        #expect(decodeError(line) == ProtocolError(.badJSON, "invalid JSON"))
    }

    @Test func invalidUTF8OutsideStringsIsInvalidJSON() {
        var buffer = ByteBuffer(bytes: [0xFF])
        buffer.writeString(#"{"type":"ping","seq":1}"#)
        #expect(throws: ProtocolError(.badJSON, "invalid JSON")) { try ControlCodec.decode(buffer) }
    }

    @Test func invalidUTF8InAFieldIsInvalidJSON() {
        var buffer = ByteBuffer(string: #"{"type":"hello","version":1,"agent":"off"#)
        buffer.writeBytes([0xFF, 0xFE])
        buffer.writeString(#""}"#)
        #expect(throws: ProtocolError(.badJSON, "invalid JSON")) { try ControlCodec.decode(buffer) }
    }

    @Test func numberTooLargeForAnyDoubleIsInvalidJSON() {
        // Foundation's parser itself rejects 1e400, so no field is to blame.
        #expect(decodeError(#"{"type":"welcome","heartbeatSeconds":1e400}"#) == ProtocolError(.badJSON, "invalid JSON"))
    }

    @Test(arguments: ["[1,2]", "[]", #""hello""#, "42", "true", "null"])
    func notAnObject(_ line: String) {
        #expect(decodeError(line) == ProtocolError(.badJSON, "a line must be a JSON object"))
    }

    @Test func missingType() {
        #expect(decodeError("{}") == ProtocolError(.badMessage, "missing field 'type'"))
        #expect(decodeError(#"{"seq":1}"#) == ProtocolError(.badMessage, "missing field 'type'"))
    }

    @Test func typeOfWrongKind() {
        #expect(decodeError(#"{"type":5}"#) == ProtocolError(.badMessage, "field 'type' must be a string"))
        #expect(decodeError(#"{"type":null}"#) == ProtocolError(.badMessage, "field 'type' must be a string, not null"))
        #expect(decodeError(#"{"type":["ping"]}"#) == ProtocolError(.badMessage, "field 'type' must be a string"))
    }

    @Test(arguments: ["PING", "pingg", "", "hello ", "Error"])
    func unknownType(_ type: String) {
        #expect(
            decodeError(#"{"type":"\#(type)","seq":1}"#)
                == ProtocolError(.unknownType, "unknown message type '\(type)'"))
    }

    @Test func overlongTypeIsCutInTheError() throws {
        let type = String(repeating: "x", count: 32)
        #expect(decodeError(#"{"type":"\#(type)"}"#) == ProtocolError(.unknownType, "unknown message type '\(type)'"))
        let long = String(repeating: "y", count: 5000)
        let error = try #require(decodeError(#"{"type":"\#(long)"}"#))
        #expect(error == ProtocolError(.unknownType, "unknown message type '\(String(repeating: "y", count: 32))…'"))
    }

    @Test(arguments: [
        (#"{"type":"hello","version":1}"#, "agent"),
        (#"{"type":"hello","agent":"office"}"#, "version"),
        (#"{"type":"challenge"}"#, "nonce"),
        (#"{"type":"auth"}"#, "proof"),
        (#"{"type":"welcome"}"#, "heartbeatSeconds"),
        (#"{"type":"register"}"#, "services"),
        (#"{"type":"registered","accepted":[]}"#, "refused"),
        (#"{"type":"registered","refused":[]}"#, "accepted"),
        (#"{"type":"registered","accepted":[],"refused":[{"service":"x","code":"bad_json"}]}"#, "message"),
        (#"{"type":"connect","service":"web","token":"t","client":"c"}"#, "session"),
        (#"{"type":"connect","session":"3f9a0c12be47","token":"t","client":"c"}"#, "service"),
        (#"{"type":"connect","session":"3f9a0c12be47","service":"web","client":"c"}"#, "token"),
        (#"{"type":"connect","session":"3f9a0c12be47","service":"web","token":"t"}"#, "client"),
        (#"{"type":"refuse","session":"3f9a0c12be47","code":"timeout"}"#, "message"),
        (#"{"type":"refuse","session":"3f9a0c12be47","message":"m"}"#, "code"),
        (#"{"type":"attach","session":"3f9a0c12be47"}"#, "version"),
        (#"{"type":"attach","version":1,"session":"3f9a0c12be47"}"#, "token"),
        (#"{"type":"attached"}"#, "session"),
        (#"{"type":"ping"}"#, "seq"),
        (#"{"type":"pong"}"#, "seq"),
        (#"{"type":"error","message":"m"}"#, "code"),
        (#"{"type":"error","code":"timeout"}"#, "message"),
    ])
    func missingField(_ line: String, _ field: String) {
        #expect(decodeError(line) == ProtocolError(.badMessage, "missing field '\(field)'"))
    }

    @Test(arguments: [
        (#"{"type":"ping","seq":"1"}"#, "field 'seq' must be a number"),
        (#"{"type":"ping","seq":true}"#, "field 'seq' must be a number"),
        (#"{"type":"pong","seq":[1]}"#, "field 'seq' must be a number"),
        (#"{"type":"hello","version":"1","agent":"office"}"#, "field 'version' must be a number"),
        (#"{"type":"hello","version":1,"agent":7}"#, "field 'agent' must be a string"),
        (#"{"type":"welcome","heartbeatSeconds":"10"}"#, "field 'heartbeatSeconds' must be a number"),
        (#"{"type":"register","services":"web"}"#, "field 'services' must be an array"),
        (#"{"type":"register","services":{"web":1}}"#, "field 'services' must be an array"),
        (#"{"type":"register","services":["web",1]}"#, "field 'services[1]' must be a string"),
        (#"{"type":"registered","accepted":[],"refused":"x"}"#, "field 'refused' must be an array"),
        (
            #"{"type":"registered","accepted":[],"refused":[{"service":1,"code":"timeout","message":""}]}"#,
            "field 'refused[0].service' must be a string"
        ),
        (#"{"type":"error","code":1,"message":"m"}"#, "field 'code' must be a string"),
    ])
    func wrongFieldType(_ line: String, _ message: String) {
        #expect(decodeError(line) == ProtocolError(.badMessage, message))
    }

    @Test(arguments: [
        (#"{"type":"ping","seq":null}"#, "field 'seq' must be a number, not null"),
        (#"{"type":"hello","version":1,"agent":null}"#, "field 'agent' must be a string, not null"),
        (#"{"type":"register","services":null}"#, "field 'services' must be an array, not null"),
        (#"{"type":"register","services":[null]}"#, "field 'services[0]' must be a string, not null"),
    ])
    func nullField(_ line: String, _ message: String) {
        #expect(decodeError(line) == ProtocolError(.badMessage, message))
    }

    @Test(arguments: [
        #"{"type":"refuse","session":"3f9a0c12be47","code":"no_such_code","message":"m"}"#,
        #"{"type":"error","code":"BAD_JSON","message":"m"}"#,
    ])
    func unknownErrorCode(_ line: String) {
        #expect(decodeError(line) == ProtocolError(.badMessage, "invalid value in field 'code'"))
    }

    @Test func unknownErrorCodeInsideRegistered() {
        let line = #"{"type":"registered","accepted":[],"refused":[{"service":"x","code":"nope","message":""}]}"#
        #expect(decodeError(line) == ProtocolError(.badMessage, "invalid value in field 'refused[0].code'"))
    }

    /// Valid JSON whose number does not fit the field is a bad message, not bad JSON.
    @Test(arguments: [
        #"{"type":"ping","seq":-1}"#,
        #"{"type":"ping","seq":18446744073709551616}"#,
        #"{"type":"hello","version":1.5,"agent":"office"}"#,
    ])
    func numberOutOfRange(_ line: String) {
        #expect(decodeError(line) == ProtocolError(.badMessage, "a number is out of range for its field"))
    }

    @Test func errorCodesHaveTheirWireNames() {
        #expect(
            ErrorCode.allCases.map(\.rawValue) == [
                "bad_json", "line_too_long", "unknown_type", "bad_message", "unexpected_message", "unsupported_version",
                "auth_failed", "timeout", "unknown_session", "bad_token", "unknown_service", "connect_expired",
                "agent_busy", "target_unreachable",
                "data_channel_failed", "replaced", "shutting_down",
            ])
    }

    @Test func protocolErrorBecomesAnErrorMessage() {
        let error = ProtocolError(.lineTooLong, "too long")
        #expect(error.errorMessage == .error(.init(code: .lineTooLong, message: "too long")))
        #expect(error.description == "line_too_long: too long")
    }
}
