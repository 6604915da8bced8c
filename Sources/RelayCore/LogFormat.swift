import FoundationEssentials
import Glibc
import Logging
import RelaySupport

/// A swift-log handler that writes one event a line to stderr:
/// `2026-11-25T06:14:14.123Z info session=3f9a0c12be47 session open service=web client=…`.
///
/// Under journald (`JOURNAL_STREAM` set) the timestamp is left out, since the journal adds
/// its own, and the line starts with the syslog priority (`<6>`) so the level is kept.
/// Control characters from peers are escaped, so nobody can forge a log line.
public struct StderrLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let journal: Bool

    /// Creates a handler at `level`; call through ``bootstrap(level:)``.
    public init(level: Logger.Level, journal: Bool) {
        self.logLevel = level
        self.journal = journal
    }

    /// Installs this handler for the whole process.
    public static func bootstrap(level: Logger.Level = .info) {
        let journal = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] != nil
        LoggingSystem.bootstrap { _ in StderrLogHandler(level: level, journal: journal) }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = self.metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        var line = ""
        if self.journal {
            line += "<\(Self.priority(event.level))>"
        } else {
            line += Self.timestamp() + " "
        }
        line += event.level.rawValue
        if let session = merged.removeValue(forKey: "session") {
            line += " session=\(Self.clean("\(session)"))"
        }
        line += " " + Self.clean(event.message.description)
        for key in merged.keys.sorted() {
            line += " \(key)=\(Self.quoteIfNeeded(Self.clean("\(merged[key]!)")))"
        }
        line += "\n"
        StandardStream.error.write(line)
    }

    /// Escapes control characters (C0, DEL, C1) and Unicode line/paragraph separators, so
    /// one event stays one line and a peer's text cannot carry terminal escape sequences.
    static func clean(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: Self.mustEscape) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where Self.mustEscape(scalar):
                out += String(cFormat: scalar.value <= 0xff ? "\\x%02x" : "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    private static func mustEscape(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029
    }

    private static func quoteIfNeeded(_ value: String) -> String {
        guard value.isEmpty || value.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" }) else { return value }
        return "\"" + value.replacingLiterally("\\", with: "\\\\").replacingLiterally("\"", with: "\\\"") + "\""
    }

    private static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return self.timestamp(now)
    }

    /// `now` as every line starts: UTC, milliseconds (truncated), ISO 8601.
    static func timestamp(_ now: timespec) -> String {
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        // 2026-12-01T22:10:13.123Z, digit by digit: a C format through CVarArg cost a few
        // per cent of a short session's CPU, as every line has a timestamp.
        var text: [UInt8] = []
        text.reserveCapacity(24)
        func digits(_ value: Int, _ width: Int, then separator: UInt8) {
            var divisor = 1
            for _ in 1..<width { divisor *= 10 }
            var rest = value
            while divisor > 0 {
                text.append(UInt8(ascii: "0") + UInt8(rest / divisor % 10))
                rest %= divisor
                divisor /= 10
            }
            text.append(separator)
        }
        digits(Int(parts.tm_year) + 1900, 4, then: UInt8(ascii: "-"))
        digits(Int(parts.tm_mon) + 1, 2, then: UInt8(ascii: "-"))
        digits(Int(parts.tm_mday), 2, then: UInt8(ascii: "T"))
        digits(Int(parts.tm_hour), 2, then: UInt8(ascii: ":"))
        digits(Int(parts.tm_min), 2, then: UInt8(ascii: ":"))
        digits(Int(parts.tm_sec), 2, then: UInt8(ascii: "."))
        digits(Int(now.tv_nsec) / 1_000_000, 3, then: UInt8(ascii: "Z"))
        return String(decoding: text, as: UTF8.self)
    }
}
