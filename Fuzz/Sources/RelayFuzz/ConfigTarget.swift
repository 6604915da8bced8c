import Glibc
import RelayAgent
import RelayCore
import RelayProxy

/// The config loaders of both daemons on any bytes: a config or a ConfigError, never a trap.
/// The input is written to a file in a private directory (the loaders read files, as the
/// daemons do; relative `secretFile` paths land in that empty directory).
enum ConfigTarget {
    static let directory: String = {
        var template = Array("/tmp/relay-fuzz-config-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { fatalError("mkdtemp failed") }
        return String(cString: made)
    }()

    static func run(_ bytes: [UInt8]) {
        let path = Self.directory + "/config.json"
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { fatalError("cannot write \(path)") }
        _ = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        close(descriptor)
        // The first byte picks the loader, so one corpus serves both.
        if bytes.first.map({ $0 & 1 == 0 }) ?? true {
            _ = try? ProxyConfig.load(path: path)
        } else {
            _ = try? AgentConfig.load(path: path)
        }
    }
}
