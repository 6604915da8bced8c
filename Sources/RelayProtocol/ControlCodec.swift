import FoundationEssentials
import NIOCore

/// Encodes messages as one JSON line each, and decodes and validates a received line.
///
/// Decoding never traps: any input yields a message or a ``ProtocolError`` naming what is wrong.
public enum ControlCodec {
    /// The message as JSON followed by a newline, ready to write.
    public static func encode(_ message: ControlMessage) -> ByteBuffer {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding our own Codable structs of strings and numbers cannot fail.
        var data = (try? encoder.encode(message)) ?? Data(#"{"type":"error","code":"bad_message"}"#.utf8)
        data.append(UInt8(ascii: "\n"))
        return ByteBuffer(bytes: data)
    }

    /// Decodes one line (without its newline) into a validated message.
    public static func decode(_ line: ByteBuffer) throws(ProtocolError) -> ControlMessage {
        let data = Data(line.readableBytesView)
        let message: ControlMessage
        do {
            message = try JSONDecoder().decode(ControlMessage.self, from: data)
        } catch let error as ProtocolError {
            throw error
        } catch let error as DecodingError {
            throw Self.describe(error, data: data)
        } catch {
            throw ProtocolError(.badJSON, "invalid JSON")
        }
        try message.validate()
        return message
    }

    private static func describe(_ error: DecodingError, data: Data) -> ProtocolError {
        func path(_ context: DecodingError.Context) -> String {
            guard !context.codingPath.isEmpty else { return "message" }
            var text = ""
            for key in context.codingPath {
                if let index = key.intValue {
                    text += "[\(index)]"
                } else {
                    text += text.isEmpty ? key.stringValue : ".\(key.stringValue)"
                }
            }
            return "field '\(text)'"
        }
        switch error {
        case .dataCorrupted(let context) where context.codingPath.isEmpty:
            // Foundation reports a number that does not fit its field (-1 or 1.5 for a count)
            // like broken JSON, without a path: tell the two apart by parsing the line again.
            if JSONSyntax.isWellFormed(data) {
                return ProtocolError(.badMessage, "a number is out of range for its field")
            }
            return ProtocolError(.badJSON, "invalid JSON")
        case .dataCorrupted(let context):
            return ProtocolError(.badMessage, "invalid value in \(path(context))")
        case .keyNotFound(let key, _):
            return ProtocolError(.badMessage, "missing field '\(key.stringValue)'")
        case .typeMismatch(_, let context) where context.codingPath.isEmpty,
            .valueNotFound(_, let context) where context.codingPath.isEmpty:
            return ProtocolError(.badJSON, "a line must be a JSON object")
        case .typeMismatch(let type, let context):
            return ProtocolError(.badMessage, "\(path(context)) must be \(Self.typeName(type))")
        case .valueNotFound(let type, let context):
            return ProtocolError(.badMessage, "\(path(context)) must be \(Self.typeName(type)), not null")
        @unknown default:
            return ProtocolError(.badMessage, "malformed message")
        }
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Bool.Type: "a boolean"
        case is Int.Type, is UInt64.Type, is Double.Type: "a number"
        case is [String].Type, is [Any].Type: "an array"
        default: "of another type"
        }
    }
}

extension ControlMessage: Codable {
    private enum TypeKey: String, CodingKey { case type }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: TypeKey.self)
        let type = try container.decode(String.self, forKey: .type)
        switch type {
        case "hello": self = .hello(try Hello(from: decoder))
        case "challenge": self = .challenge(try Challenge(from: decoder))
        case "auth": self = .auth(try Auth(from: decoder))
        case "welcome": self = .welcome(try Welcome(from: decoder))
        case "register": self = .register(try Register(from: decoder))
        case "registered": self = .registered(try Registered(from: decoder))
        case "connect": self = .connect(try Connect(from: decoder))
        case "refuse": self = .refuse(try Refuse(from: decoder))
        case "attach": self = .attach(try Attach(from: decoder))
        case "attached": self = .attached(try Attached(from: decoder))
        case "ping": self = .ping(try Ping(from: decoder))
        case "pong": self = .pong(try Pong(from: decoder))
        case "error": self = .error(try ErrorReport(from: decoder))
        case "restarting": self = .restarting(try Restarting(from: decoder))
        default:
            let shown = type.count > 32 ? String(type.prefix(32)) + "…" : type
            throw ProtocolError(.unknownType, "unknown message type '\(shown)'")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: TypeKey.self)
        try container.encode(self.type, forKey: .type)
        switch self {
        case .hello(let m): try m.encode(to: encoder)
        case .challenge(let m): try m.encode(to: encoder)
        case .auth(let m): try m.encode(to: encoder)
        case .welcome(let m): try m.encode(to: encoder)
        case .register(let m): try m.encode(to: encoder)
        case .registered(let m): try m.encode(to: encoder)
        case .connect(let m): try m.encode(to: encoder)
        case .refuse(let m): try m.encode(to: encoder)
        case .attach(let m): try m.encode(to: encoder)
        case .attached(let m): try m.encode(to: encoder)
        case .ping(let m): try m.encode(to: encoder)
        case .pong(let m): try m.encode(to: encoder)
        case .error(let m): try m.encode(to: encoder)
        case .restarting(let m): try m.encode(to: encoder)
        }
    }
}
