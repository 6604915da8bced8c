import Foundation
import RelayCore
import Testing

@Suite struct JSONValueTests {
    static func decode(_ text: String) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
    }

    @Test func decodesEveryKind() throws {
        let value = try Self.decode(#"{"a":[1,true,null,"s",{"b":1.5}],"c":false,"d":0}"#)
        #expect(
            value
                == .object([
                    "a": .array([.number(1), .bool(true), .null, .string("s"), .object(["b": .number(1.5)])]),
                    "c": .bool(false),
                    "d": .number(0),
                ]))
    }

    @Test func numbersAreNotBooleans() throws {
        #expect(try Self.decode("1") == .number(1))
        #expect(try Self.decode("0") == .number(0))
        #expect(try Self.decode("true") == .bool(true))
        #expect(try Self.decode(#""true""#) == .string("true"))
        #expect(try Self.decode("-2.5e3") == .number(-2500))
    }

    @Test func emptyContainers() throws {
        #expect(try Self.decode("{}") == .object([:]))
        #expect(try Self.decode("[]") == .array([]))
    }

    @Test func invalidJSONThrows() {
        #expect(throws: (any Error).self) { try Self.decode("{") }
        #expect(throws: (any Error).self) { try Self.decode("") }
    }

    @Test func kindDescriptions() {
        #expect(JSONValue.null.kindDescription == "null")
        #expect(JSONValue.bool(true).kindDescription == "a boolean")
        #expect(JSONValue.number(1).kindDescription == "a number")
        #expect(JSONValue.string("").kindDescription == "a string")
        #expect(JSONValue.array([]).kindDescription == "an array")
        #expect(JSONValue.object([:]).kindDescription == "an object")
    }
}
