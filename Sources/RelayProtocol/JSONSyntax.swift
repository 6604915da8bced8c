import FoundationEssentials

/// Questions about a JSON text that need no schema, answered with the `JSONDecoder` every
/// other reading uses (Foundation's `JSONSerialization` is not in FoundationEssentials).
///
/// `JSONDecoder` checks strings and numbers only when they are decoded, so each answer decodes
/// every value of the document: a text passes only if all of it is well formed.
package enum JSONSyntax {
    /// Whether `data` is one well-formed JSON value of any kind (what
    /// `JSONSerialization.jsonObject(with:options: .fragmentsAllowed)` accepted).
    package static func isWellFormed(_ data: Data) -> Bool {
        (try? JSONDecoder().decode(AnyValue.self, from: data)) != nil
    }

    /// Whether `data` is a well-formed JSON object (what `JSONSerialization.jsonObject(with:)`
    /// returned as `[String: Any]`).
    package static func isObject(_ data: Data) -> Bool {
        (try? JSONDecoder().decode(AnyValue.self, from: data))?.isObject == true
    }

    /// The integer value of the member `key` of a well-formed JSON object, as
    /// `(object as? [String: Any])?[key] as? Int` gave it: a number that is exactly an integer
    /// (`7`, `7.0`, `7e0`), or 1 and 0 for `true` and `false`; `nil` for anything else.
    package static func integerMember(_ key: String, of data: Data) -> Int? {
        guard Self.isObject(data) else { return nil }
        let decoder = JSONDecoder()
        decoder.userInfo[IntegerMember.keyInfo] = key
        return (try? decoder.decode(IntegerMember.self, from: data))?.value
    }

    /// A name for any member.
    private struct Key: CodingKey {
        let stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    /// Any JSON value, decoded all the way down so that every string and number is checked.
    private struct AnyValue: Decodable {
        let isObject: Bool

        init(from decoder: any Decoder) throws {
            if let object = try? decoder.container(keyedBy: Key.self) {
                for key in object.allKeys { _ = try object.decode(AnyValue.self, forKey: key) }
                self.isObject = true
                return
            }
            self.isObject = false
            if var array = try? decoder.unkeyedContainer() {
                while !array.isAtEnd { _ = try array.decode(AnyValue.self) }
                return
            }
            let single = try decoder.singleValueContainer()
            if single.decodeNil() || (try? single.decode(Bool.self)) != nil || (try? single.decode(Double.self)) != nil
            {
                return
            }
            _ = try single.decode(String.self)
        }
    }

    /// One member of an object as an integer, its name in the decoder's `userInfo`.
    private struct IntegerMember: Decodable {
        static let keyInfo = CodingUserInfoKey(rawValue: "relay.integerMember")!
        let value: Int?

        init(from decoder: any Decoder) throws {
            let object = try decoder.container(keyedBy: Key.self)
            let key = Key(stringValue: decoder.userInfo[Self.keyInfo] as? String ?? "")
            if let number = try? object.decode(Int.self, forKey: key) {
                self.value = number
            } else if let flag = try? object.decode(Bool.self, forKey: key) {
                self.value = flag ? 1 : 0
            } else {
                self.value = nil
            }
        }
    }
}
