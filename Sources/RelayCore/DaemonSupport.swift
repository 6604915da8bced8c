import Glibc
import Logging
import RelaySupport

/// What both daemons' command lines share: log setup and `--check-config` output.
public enum DaemonSupport {
    /// Log levels accepted by `--log-level`.
    public static let logLevels = Logger.Level.allCases.map(\.rawValue)

    /// Installs the one-line stderr logger and ignores SIGPIPE (a closed peer must not kill the daemon).
    public static func bootstrap(logLevel: String) throws -> Logger.Level {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw DaemonError("unknown log level '\(logLevel)' (use one of: \(logLevels.joined(separator: ", ")))")
        }
        signal(SIGPIPE, SIG_IGN)
        Self.raiseDescriptorLimit()
        StderrLogHandler.bootstrap(level: level)
        return level
    }

    /// Raises the soft limit on open descriptors to the hard limit: every session holds
    /// two sockets, and the soft default (often 1024) would cap a daemon at a few hundred.
    public static func raiseDescriptorLimit() {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max
        else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    }

    /// `--check-placeholders`: prints one line per shipped placeholder left in the config at
    /// `path` on stderr and returns false when there is any; checks nothing else.
    public static func reportPlaceholders(path: String, package: String) -> Bool {
        let problems = ConfigPlaceholders.check(path: path, package: package)
        let text = problems.map { "\(package): \(path): \($0)\n" }.joined()
        StandardStream.error.write(text)
        return problems.isEmpty
    }

    /// Prints every problem of a config on its own line (`path: message`) to stderr.
    public static func printProblems(_ error: ConfigError) {
        var text = ""
        for problem in error.problems { text += "\(error.file): \(problem)\n" }
        text += "\(error.file): \(error.problems.count) problem\(error.problems.count == 1 ? "" : "s") found\n"
        StandardStream.error.write(text)
    }
}

/// A start-up failure of a daemon: one line, exit status 1.
public struct DaemonError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
