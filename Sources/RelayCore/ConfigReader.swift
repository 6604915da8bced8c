import FoundationEssentials
import Glibc
import RelayProtocol
import RelaySupport

/// One problem in a config file, with the JSON path of the value at fault.
public struct ConfigProblem: Sendable, Equatable, CustomStringConvertible {
    /// Where, as `$.services[1].listen`.
    public let path: String
    /// What is wrong.
    public let message: String

    /// Creates a problem report.
    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }

    public var description: String { "\(self.path): \(self.message)" }
}

/// A config that failed validation: every problem found, in document order.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    /// The file that was read.
    public let file: String
    /// Every problem found.
    public let problems: [ConfigProblem]

    /// Creates the error for `file`.
    public init(file: String, problems: [ConfigProblem]) {
        self.file = file
        self.problems = problems
    }

    /// One line: the file, the number of problems and the first one.
    public var description: String {
        let first = self.problems.first.map { $0.description } ?? "invalid"
        let more = self.problems.count > 1 ? " (and \(self.problems.count - 1) more; run with --check-config)" : ""
        return "\(self.file): \(first)\(more)"
    }
}

/// Walks a JSON config, collecting every problem with its path; strict about unknown keys.
///
/// Readers return `nil` for a missing or bad value after noting the problem, so one pass
/// finds everything wrong with a file.
public final class ConfigReader {
    /// Problems found so far.
    public private(set) var problems: [ConfigProblem] = []
    /// The directory relative `secretFile` paths are resolved against.
    public let baseDirectory: String

    /// Starts a reader; `baseDirectory` is the config file's directory.
    public init(baseDirectory: String) {
        self.baseDirectory = baseDirectory
    }

    /// Reads and parses a config file into its top-level object, or notes why it cannot.
    /// A config that still holds a shipped placeholder (see ``ConfigPlaceholders``) is refused
    /// with one problem per placeholder; `package` names the Debian package that ships it.
    public static func load(path: String, package: String) throws(ConfigError) -> (ConfigReader, [String: JSONValue]) {
        let reader = ConfigReader(baseDirectory: PathString.directory(of: path))
        let data: Data
        switch Self.readFile(path) {
        case .success(let bytes): data = bytes
        case .failure(let reason):
            throw ConfigError(
                file: path, problems: [.init(path: "$", message: "cannot read the file: \(reason.description)")])
        }
        let root: JSONValue
        do {
            root = try JSONDecoder().decode(JSONValue.self, from: data)
        } catch {
            throw ConfigError(
                file: path, problems: [.init(path: "$", message: "not valid JSON: \(Self.reason(error))")])
        }
        guard case .object(let object) = root else {
            throw ConfigError(file: path, problems: [.init(path: "$", message: "must be a JSON object")])
        }
        let placeholders = ConfigPlaceholders.paths(in: root)
        guard placeholders.isEmpty else {
            throw ConfigError(
                file: path, problems: placeholders.map { ConfigPlaceholders.problem(at: $0, package: package) })
        }
        return (reader, object)
    }

    /// Notes a problem at `path`.
    public func problem(_ path: String, _ message: String) {
        self.problems.append(ConfigProblem(path: path, message: message))
    }

    /// Notes every key of `object` not in `allowed` as a problem (typos are caught, not ignored);
    /// comment keys (`"//..."`, see ``ConfigPlaceholders``) are always allowed.
    public func rejectUnknownKeys(_ object: [String: JSONValue], at path: String, allowed: Set<String>) {
        for key in object.keys.sorted() where !allowed.contains(key) && !ConfigPlaceholders.isComment(key) {
            self.problem("\(path).\(key)", "unknown key (allowed: \(allowed.sorted().joined(separator: ", ")))")
        }
    }

    /// A string value; `nil` when missing (a problem if `required`) or not a string.
    public func string(_ object: [String: JSONValue], _ key: String, at path: String, required: Bool = true) -> String?
    {
        switch object[key] {
        case .string(let value)?: return value
        case nil:
            if required { self.problem("\(path).\(key)", "required key is missing") }
            return nil
        case let other?:
            self.problem("\(path).\(key)", "must be a string, not \(other.kindDescription)")
            return nil
        }
    }

    /// A number of seconds, within `range`, or `defaultValue` when missing.
    public func seconds(
        _ object: [String: JSONValue],
        _ key: String,
        at path: String,
        default defaultValue: Double,
        range: ClosedRange<Double>
    ) -> Double {
        switch object[key] {
        case nil: return defaultValue
        case .number(let value)? where range.contains(value): return value
        case .number?:
            self.problem(
                "\(path).\(key)",
                "must be between \(Self.format(range.lowerBound)) and \(Self.format(range.upperBound)) seconds")
            return defaultValue
        case let other?:
            self.problem("\(path).\(key)", "must be a number of seconds, not \(other.kindDescription)")
            return defaultValue
        }
    }

    /// The objects of an array value, each with its path; notes non-objects.
    public func objects(_ object: [String: JSONValue], _ key: String, at path: String, required: Bool = true)
        -> [(path: String, object: [String: JSONValue])]
    {
        switch object[key] {
        case .array(let items)?:
            var result: [(String, [String: JSONValue])] = []
            for (index, item) in items.enumerated() {
                let itemPath = "\(path).\(key)[\(index)]"
                if case .object(let fields) = item {
                    result.append((itemPath, fields))
                } else {
                    self.problem(itemPath, "must be an object, not \(item.kindDescription)")
                }
            }
            return result
        case nil:
            if required { self.problem("\(path).\(key)", "required key is missing") }
            return []
        case let other?:
            self.problem("\(path).\(key)", "must be an array, not \(other.kindDescription)")
            return []
        }
    }

    /// A `host:port` address; `allowPortZero` for listeners (0: the OS chooses).
    public func address(_ object: [String: JSONValue], _ key: String, at path: String, allowPortZero: Bool = true)
        -> HostPort?
    {
        guard let text = self.string(object, key, at: path) else { return nil }
        do {
            return try HostPort(parsing: text, allowPortZero: allowPortZero)
        } catch {
            self.problem("\(path).\(key)", "bad address '\(text)': \(error.description)")
            return nil
        }
    }

    /// An agent id or service name.
    public func name(_ object: [String: JSONValue], _ key: String, at path: String) -> String? {
        guard let name = self.string(object, key, at: path) else { return nil }
        guard Names.isValid(name) else {
            self.problem("\(path).\(key)", "'\(name)' is not a valid name: use \(Names.rule)")
            return nil
        }
        return name
    }

    /// The directory systemd's `LoadCredential=` puts credentials in (`$CREDENTIALS_DIRECTORY`),
    /// where `secretCredential` names a file; nil when the daemon was given none.
    public var credentialsDirectory: String? = getenv("CREDENTIALS_DIRECTORY").map { String(cString: $0) }

    /// The shortest secret accepted, in bytes: a shorter one could be guessed offline from
    /// one proof seen on the path.
    public static let minimumSecretBytes = 16

    /// A secret given inline as `secret`, read from the file named by `secretFile`, or from the
    /// systemd credential named by `secretCredential` (exactly one of the three; surrounding
    /// white space of a file's content is dropped); at least ``minimumSecretBytes`` bytes.
    public func secret(_ object: [String: JSONValue], at path: String) -> Secret? {
        let keys = ["secret", "secretFile", "secretCredential"]
        let given = keys.filter { object[$0] != nil }
        let values = keys.map { self.string(object, $0, at: path, required: false) }
        guard given.count == 1 else {
            if given.isEmpty {
                self.problem(
                    "\(path).secret", "required key is missing (give 'secret', 'secretFile' or 'secretCredential')")
            } else {
                self.problem(
                    "\(path).\(given[1])",
                    "give only one of 'secret', 'secretFile' and 'secretCredential', not \(given.joined(separator: " and "))"
                )
            }
            return nil
        }
        let source: (text: String, key: String)
        switch (values[0], values[1], values[2]) {
        case (let value?, _, _):
            source = (value, "secret")
        case (_, let file?, _):
            let full = file.hasPrefix("/") ? file : PathString.appending(file, to: self.baseDirectory)
            guard let content = self.secretText(at: full, key: "\(path).secretFile") else { return nil }
            source = (content, "secretFile")
        case (_, _, let name?):
            guard Names.isValid(name) else {
                self.problem("\(path).secretCredential", "must be a credential name (\(Names.rule))")
                return nil
            }
            guard let directory = self.credentialsDirectory, !directory.isEmpty else {
                self.problem(
                    "\(path).secretCredential",
                    "$CREDENTIALS_DIRECTORY is not set: give the daemon the credential with systemd's LoadCredential=\(name):PATH"
                )
                return nil
            }
            let full = PathString.appending(name, to: directory)
            guard let content = self.secretText(at: full, key: "\(path).secretCredential") else { return nil }
            source = (content, "secretCredential")
        default:
            return nil  // the value had the wrong type: noted already
        }
        let (text, key) = source
        guard !text.isEmpty else {
            self.problem("\(path).\(key)", "the secret is empty")
            return nil
        }
        guard text.utf8.count >= Self.minimumSecretBytes else {
            self.problem(
                "\(path).\(key)",
                "the secret is \(text.utf8.count) bytes, shorter than the minimum of \(Self.minimumSecretBytes); "
                    + "make one with: openssl rand -base64 32")
            return nil
        }
        return Secret(text)
    }

    /// The trimmed text of a secret file, or nil after noting why it cannot be had.
    private func secretText(at full: String, key: String) -> String? {
        switch Self.readFile(full) {
        case .success(let bytes):
            let text = String(decoding: bytes, as: UTF8.self).trimmingWhitespaceAndNewlines()
            if text.isEmpty { self.problem(key, "'\(full)' is empty") }
            return text.isEmpty ? nil : text
        case .failure(let reason):
            self.problem(key, "cannot read '\(full)': \(reason)")
            return nil
        }
    }

    /// Throws the collected problems, if any.
    public func finish(file: String) throws(ConfigError) {
        if !self.problems.isEmpty { throw ConfigError(file: file, problems: self.problems) }
    }

    /// Reads a whole file, or says why not in the system's words ("no such file or directory").
    public static func readFile(_ path: String) -> Result<Data, DaemonError> {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return .failure(DaemonError(String(cString: strerror(errno)).lowercased())) }
        defer { close(descriptor) }
        var data = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(descriptor, &chunk, chunk.count)
            if count < 0 {
                if errno == EINTR { continue }
                return .failure(DaemonError(String(cString: strerror(errno)).lowercased()))
            }
            if count == 0 { return .success(data) }
            data.append(contentsOf: chunk[0..<count])
        }
    }

    private static func format(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(value)
    }

    /// Why `JSONDecoder` refused a file: "The given data was not valid JSON." for a syntax
    /// error (it attaches no underlying error on Linux), else the error's own description.
    private static func reason(_ error: any Error) -> String {
        if case DecodingError.dataCorrupted(let context) = error { return context.debugDescription }
        return "\(error)"
    }
}
