import FoundationEssentials

/// The two conventions of the configs the Debian packages ship: comment keys and placeholders.
///
/// JSON has no comments, so in any object a key that begins with ``commentPrefix`` is a
/// comment and is ignored whatever its value. A string value that begins with ``marker`` is a
/// placeholder the admin has to replace: a daemon refuses a config that still holds one, and
/// the packaged units skip (not fail) a daemon whose config has not been edited yet.
public enum ConfigPlaceholders {
    /// The start of every placeholder value in a shipped config.
    public static let marker = "CHANGE-ME"
    /// The start of a comment key.
    public static let commentPrefix = "//"

    /// Whether `key` is a comment.
    public static func isComment(_ key: String) -> Bool {
        key.hasPrefix(Self.commentPrefix)
    }

    /// The JSON path of every placeholder in `value`, in key order, comments skipped.
    public static func paths(in value: JSONValue, at path: String = "$") -> [String] {
        switch value {
        case .string(let text): return text.hasPrefix(Self.marker) ? [path] : []
        case .array(let items):
            return items.enumerated().flatMap { Self.paths(in: $0.element, at: "\(path)[\($0.offset)]") }
        case .object(let fields):
            return fields.keys.sorted().filter { !Self.isComment($0) }.flatMap {
                Self.paths(in: fields[$0]!, at: "\(path).\($0)")
            }
        case .null, .bool, .number: return []
        }
    }

    /// The problem reported for a placeholder at `path`; `package` names the Debian package
    /// whose README.Debian says what to write there.
    public static func problem(at path: String, package: String) -> ConfigProblem {
        ConfigProblem(
            path: path,
            message:
                "still holds the shipped placeholder \(Self.marker): edit the file (see /usr/share/doc/\(package)/README.Debian)"
        )
    }

    /// The placeholders of the config file at `path`, as problems; none when the file cannot
    /// be read or parsed (that is for the daemon's own start-up to report).
    public static func check(path: String, package: String) -> [ConfigProblem] {
        guard case .success(let data) = ConfigReader.readFile(path),
            let root = try? JSONDecoder().decode(JSONValue.self, from: data)
        else { return [] }
        return Self.paths(in: root).map { Self.problem(at: $0, package: package) }
    }
}
