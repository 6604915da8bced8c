import FoundationEssentials
import Glibc

/// One request on a daemon's control socket: a single JSON object on one line,
/// `{"id":1,"command":"sessions","args":{"service":"web"}}`. See docs/protocol.md.
public struct ControlRequest: Sendable, Codable, Equatable {
    /// Chosen by the client and echoed in the response, so answers can be matched.
    public var id: Int?
    /// What to do: `status`, `agents`, `services`, `sessions`, `session`, `kill`, `reload`, `metrics`.
    public var command: String
    /// The command's arguments, all strings (`service`, `agent`, `id`).
    public var args: [String: String]?

    /// Creates a request.
    public init(id: Int?, command: String, args: [String: String]? = nil) {
        self.id = id
        self.command = command
        self.args = args
    }

    /// The argument `name`, if given and not empty.
    public func argument(_ name: String) -> String? {
        guard let value = self.args?[name], !value.isEmpty else { return nil }
        return value
    }
}

/// Why a control request failed, as the `error.code` of a response. The raw values are part
/// of the documented protocol; relayctl maps them onto its exit codes.
public enum ControlErrorCode: String, Sendable, Codable, CaseIterable {
    /// The line is not a JSON object of the request's shape.
    case badJSON = "bad_json"
    /// The request lacks an argument it needs, or one is malformed.
    case badRequest = "bad_request"
    /// The line is longer than ``ControlSocketLimits/maxRequestBytes``; the connection is closed after the answer.
    case lineTooLong = "line_too_long"
    /// This daemon has no such command.
    case unknownCommand = "unknown_command"
    /// No live session has this id.
    case unknownSession = "unknown_session"
    /// No configured service has this name.
    case unknownService = "unknown_service"
    /// No configured agent has this id.
    case unknownAgent = "unknown_agent"
    /// The reload was refused: the new config is invalid or cannot be applied.
    case reloadRefused = "reload_refused"
    /// The daemon failed to carry the request out.
    case `internal` = "internal"
}

/// The error part of a failed response.
public struct ControlFailure: Error, Sendable, Codable, Equatable, CustomStringConvertible {
    /// What kind of failure.
    public var code: ControlErrorCode
    /// One line for people.
    public var message: String

    /// Creates a failure.
    public init(_ code: ControlErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(self.code.rawValue): \(self.message)" }
}

/// What a daemon's command handler answers: a value to encode as `result`, or a failure.
/// A failure may carry a result too (a refused reload reports its problems).
public struct ControlReply: Sendable {
    let value: (any Encodable & Sendable)?
    let error: ControlFailure?

    /// A successful answer carrying `value` as its `result`.
    public static func success(_ value: some Encodable & Sendable) -> ControlReply {
        ControlReply(value: value, error: nil)
    }

    /// A failed answer.
    public static func failure(_ code: ControlErrorCode, _ message: String, result: (any Encodable & Sendable)? = nil)
        -> ControlReply
    {
        ControlReply(value: result, error: ControlFailure(code, message))
    }

    /// The response line for request `id`, newline included.
    public func encoded(id: Int?) -> Data {
        let envelope = Envelope(id: id, reply: self)
        var data = (try? ControlJSON.encoder().encode(envelope)) ?? Data(#"{"ok":false}"#.utf8)
        data.append(UInt8(ascii: "\n"))
        return data
    }

    private struct Envelope: Encodable {
        let id: Int?
        let reply: ControlReply

        enum CodingKeys: String, CodingKey {
            case id, ok, result, error
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(self.id, forKey: .id)
            try container.encode(self.reply.error == nil, forKey: .ok)
            if let value = self.reply.value { try container.encode(value, forKey: .result) }
            if let error = self.reply.error { try container.encode(error, forKey: .error) }
        }
    }
}

/// A response as a client decodes it, with the result's type chosen by the command sent.
public struct ControlResponse<Result: Decodable>: Decodable {
    /// The request's id, echoed.
    public var id: Int?
    /// Whether the request succeeded.
    public var ok: Bool
    /// The answer, present when `ok` (and for some failures, such as a refused reload).
    public var result: Result?
    /// Why the request failed, when not `ok`.
    public var error: ControlFailure?
}

/// The JSON conventions of the control socket: ISO 8601 dates, sorted keys, no slashes escaped.
public enum ControlJSON {
    /// An encoder following the conventions.
    public static func encoder(pretty: Bool = false) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting =
            pretty ? [.sortedKeys, .withoutEscapingSlashes, .prettyPrinted] : [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    /// A decoder following the conventions.
    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}

/// The limits of the control socket, each a named constant (documented in docs/protocol.md).
public enum ControlSocketLimits {
    /// The longest request line accepted, its newline included; a longer one is answered
    /// with `line_too_long` and the connection is closed.
    public static let maxRequestBytes = 64 * 1024
    /// The most control connections served at once; more are closed at once. The last
    /// ``reservedForOperator`` of them only root and the daemon's own user may take.
    public static let maxConnections = 64
    /// Connections only root (and the daemon's own user) may open: however many idle
    /// connections other members of the socket's group hold, `relayctl` as root gets in.
    public static let reservedForOperator = 8
    /// The most control connections one user (other than root and the daemon's user) may hold.
    public static let maxConnectionsPerUser = 16
    /// How long a control connection may stay idle before the daemon closes it.
    public static let idleTimeout = Duration.seconds(60)
    /// The longest response a client accepts (a status of many sessions is large).
    public static let maxResponseBytes = 64 * 1024 * 1024
    /// The mode of the socket file: owner and group may connect, nobody else.
    public static let socketMode: mode_t = 0o660
    /// The mode of the socket's parent directory when the daemon has to create it.
    public static let directoryMode: mode_t = 0o755
}
