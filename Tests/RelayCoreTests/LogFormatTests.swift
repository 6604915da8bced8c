import Glibc
import Testing

@testable import RelayCore

@Suite struct LogFormatTests {
    static func isOneCleanLine(_ text: String) -> Bool {
        !text.unicodeScalars.contains {
            $0.properties.generalCategory == .control || $0 == "\u{2028}" || $0 == "\u{2029}"
        }
    }

    @Test(arguments: ["", "plain text", "session open service=web", "é ü 日本 🙂", "back\\slash"])
    func printableTextIsUnchanged(_ text: String) {
        #expect(StderrLogHandler.clean(text) == text)
    }

    @Test(arguments: [
        ("two\nlines", "two\\nlines"),
        ("cr\rlf\r\n", "cr\\rlf\\r\\n"),
        ("tab\there", "tab\\there"),
        ("nul\u{0}", "nul\\x00"),
        ("\u{1b}[31mred\u{1b}[0m", "\\x1b[31mred\\x1b[0m"),
        ("bell\u{7}", "bell\\x07"),
        ("del\u{7f}", "del\\x7f"),
        ("\u{1f}", "\\x1f"),
    ])
    func controlCharactersAreEscaped(_ text: String, _ expected: String) {
        #expect(StderrLogHandler.clean(text) == expected)
        #expect(Self.isOneCleanLine(StderrLogHandler.clean(text)))
    }

    @Test(arguments: [
        ("next\u{85}line", "next\\x85line"),
        ("csi\u{9b}31m", "csi\\x9b31m"),
        ("line\u{2028}separator", "line\\u2028separator"),
        ("para\u{2029}graph", "para\\u2029graph"),
    ])
    func unicodeLineBreaksAndC1ControlsAreEscaped(_ text: String, _ expected: String) {
        #expect(StderrLogHandler.clean(text) == expected)
        #expect(Self.isOneCleanLine(StderrLogHandler.clean(text)))
    }

    @Test func aForgedLogLineStaysOnItsLine() {
        let forged = "bye\n2026-11-25T06:14:14.123Z info agent connected agent=evil"
        let cleaned = StderrLogHandler.clean(forged)
        #expect(!cleaned.contains("\n"))
        #expect(cleaned == "bye\\n2026-11-25T06:14:14.123Z info agent connected agent=evil")
    }

    @Test func everyControlScalarIsEscaped() {
        var text = ""
        for value in UInt32(0)...0x9F {
            text.unicodeScalars.append(Unicode.Scalar(value)!)
        }
        #expect(Self.isOneCleanLine(StderrLogHandler.clean(text)))
    }

    @Test func timestampsAreISO8601InUTCWithMilliseconds() {
        let cases: [(Int, Int, String)] = [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (1_764_627_013, 123_999_999, "2025-12-01T22:10:13.123Z"),
            (1_798_761_599, 999_000_000, "2026-12-31T23:59:59.999Z"),
            (951_782_400, 7_000_000, "2000-02-29T00:00:00.007Z"),
        ]
        for (seconds, nanoseconds, expected) in cases {
            let now = timespec(tv_sec: seconds, tv_nsec: nanoseconds)
            #expect(StderrLogHandler.timestamp(now) == expected)
        }
    }
}
