import Foundation
import RelayCore

/// A fresh directory under the system's temporary directory, removed when released.
final class TempDir {
    let path: String

    init() throws {
        let path = (NSTemporaryDirectory() as NSString).appendingPathComponent("relay-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        self.path = path
    }

    deinit {
        try? FileManager.default.removeItem(atPath: self.path)
    }

    /// Writes `contents` to `name` in this directory and returns the full path.
    @discardableResult
    func write(_ name: String, _ contents: String) throws -> String {
        let full = (self.path as NSString).appendingPathComponent(name)
        try Data(contents.utf8).write(to: URL(fileURLWithPath: full))
        // Owner only: a secret file readable by others is refused (FileTrust).
        chmod(full, 0o600)
        return full
    }

    /// The full path of `name` in this directory.
    func file(_ name: String) -> String { (self.path as NSString).appendingPathComponent(name) }
}

/// The problems a config load reports, as `path: message` lines; empty if it loaded.
func problems<T>(_ load: () throws(ConfigError) -> T) -> [String] {
    do {
        _ = try load()
        return []
    } catch {
        return error.problems.map(\.description)
    }
}
