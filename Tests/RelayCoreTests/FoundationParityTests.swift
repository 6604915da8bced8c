import Foundation
import RelayControl
import RelayProtocol
import RelaySupport
import Testing

/// The sources use FoundationEssentials only (no ICU in the static binaries); these check
/// the small replacements for what it lacks against full Foundation, which tests may use.
struct FoundationParityTests {
    /// Full Foundation in any source file would link ICU's 34 MB of data into every binary again.
    @Test func noSourceImportsFullFoundation() throws {
        let sources = ShippedConfigTests.repository + "/Sources"
        let files = try #require(FileManager.default.enumerator(atPath: sources)).compactMap { $0 as? String }
        let pattern = #/^\s*(@\w+\s+)*(\w+\s+)?import\s+(\w+\s+)?Foundation(?!Essentials)/#
        #expect(
            "import Foundation".contains(pattern) && "@preconcurrency import struct Foundation.URL".contains(pattern))
        #expect(!"import FoundationEssentials".contains(pattern))
        var found: [String] = []
        for file in files where file.hasSuffix(".swift") {
            let text = try String(contentsOfFile: sources + "/" + file, encoding: .utf8)
            for line in text.split(separator: "\n") where line.contains(pattern) { found.append("\(file): \(line)") }
        }
        #expect(found.isEmpty, "use FoundationEssentials: \(found)")
        #expect(files.count > 50)
    }

    static let doubles: [Double] = [
        0, -0.0, 1, 0.5, 0.0005, 0.0004999, 1.0005, 2.5, 12.345678, 100, 1e6, 1e-5, 123_456_789, 1.0 / 3, 3600,
        0.001, 30, 1e300, -1.5, .infinity, -.infinity, .nan, 1_234_567, 99999.95,
    ]

    @Test func cFormatIsStringFormat() {
        for value in Self.doubles {
            for format in ["%g", "%gs", "%.3f", "%.3fs"] {
                #expect(String(cFormat: format, value) == String(format: format, value), "\(format) \(value)")
            }
        }
        for scalar: UInt32 in [0, 0x1b, 0x7f, 0x9f, 0xff, 0x2028] {
            let format = scalar <= 0xff ? "\\x%02x" : "\\u%04x"
            #expect(String(cFormat: format, scalar) == String(format: format, scalar))
        }
        let stamp = "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ"
        let (year, month, day, hour, minute, second): (Int32, Int32, Int32, Int32, Int32, Int32) = (
            2026, 1, 5, 0, 9, 59
        )
        #expect(
            String(cFormat: stamp, year, month, day, hour, minute, second, 7)
                == String(format: stamp, year, month, day, hour, minute, second, 7))
    }

    static let paths = [
        "", "/", "//", "ab", "/a", "/a/", "a/b", "/a/b/", "a//b", "//a//b//", "/etc/relay/proxy.json", "proxy.json",
        "./x.json", "../x", "../", "~/x", "/a///b", "a/\u{301}b", "x/\u{301}", "é/x", "👍/👍", "/tmp/relay proxy/s.sock",
    ]

    @Test func pathStringIsNSString() {
        for path in Self.paths {
            #expect(PathString.directory(of: path) == (path as NSString).deletingLastPathComponent, "\(path)")
            #expect(PathString.lastComponent(of: path) == (path as NSString).lastPathComponent, "\(path)")
        }
        for (path, component) in [("", "x"), ("/a", ""), ("/", "x"), ("/a/", "x"), ("a", "x//y"), ("a//", "x")] {
            #expect(PathString.appending(component, to: path) == (path as NSString).appendingPathComponent(component))
        }
    }

    /// NSString traps on these (a single character left once slashes are fixed).
    @Test func aOneCharacterNameHasNoDirectory() {
        for path in ["a", "a/", ".", "./", "x///"] {
            #expect(PathString.directory(of: path) == "")
        }
    }

    @Test func trimmingIsFoundations() {
        for value in UInt32(0)...0xFFFF {
            guard let scalar = Unicode.Scalar(value) else { continue }
            let text = "\(scalar)\(scalar)x\(scalar)y\(scalar)"
            #expect(
                text.trimmingWhitespaceAndNewlines() == text.trimmingCharacters(in: .whitespacesAndNewlines),
                "U+\(String(value, radix: 16))")
        }
    }

    @Test func replacingIsFoundations() {
        let texts = [
            "", "plain", "a\"b", "a\\b", "\"\"\"", "\\\"\\", "é\"é", "👍\"👍", "a\r\nb", "\n\n", "ab+cd/ef==",
        ]
        for text in texts {
            for (target, replacement) in [("\\", "\\\\"), ("\"", "\\\""), ("\n", " "), ("+", "-"), ("=", "")] {
                #expect(
                    text.replacingLiterally(target, with: replacement)
                        == text.replacingOccurrences(of: target, with: replacement))
            }
        }
        // Foundation skipped a quote followed by a combining mark; every one is replaced.
        #expect("\"\u{301}".replacingLiterally("\"", with: "\\\"") == "\\\"\u{301}")
    }

    @Test func timestampIsISO8601DateFormatter() {
        let formatter = ISO8601DateFormatter()
        let seconds: [Double] = [
            0, 1.999, 1_764_000_000, 1_764_000_000.9995, 1_764_000_000.99949, -0.5, -1.5, 253_402_300_800, 951_782_400,
        ]
        for value in seconds {
            let date = Date(timeIntervalSince1970: value)
            #expect(HumanFormat.timestamp(date) == formatter.string(from: date), "\(value)")
        }
    }

    static let jsonLines = [
        "", "{", "[1,]", "{\"a\":1,}", "{\"a\":1}x", "{'a':1}", "{\"a\":\"\u{1}\"}", "{\"a\":01}", "{\"a\":1.}",
        "{\"a\":\"\\x\"}", "{\"a\":\"\\ud800\"}", "{\"a\":1e400}", "{\"a\":123456789012345678901234567890}",
        "\u{FEFF}{}", "{\"a\":NaN}", "1", "\"s\"", "null", "[]", "{}", "  {}\r\n", "{\"a\":[{\"b\":[true,null]}]}",
        String(repeating: "[", count: 512) + String(repeating: "]", count: 512),
        String(repeating: "[", count: 513) + String(repeating: "]", count: 513),
    ]

    @Test func jsonSyntaxIsJSONSerialization() {
        for line in Self.jsonLines {
            let data = Data(line.utf8)
            let any = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
            #expect(JSONSyntax.isWellFormed(data) == (any != nil), "\(line.prefix(40))")
            #expect(JSONSyntax.isObject(data) == (any is [String: Any]), "\(line.prefix(40))")
        }
        let invalidUTF8 = Data([0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xFF, 0x22, 0x7D])
        #expect(!JSONSyntax.isWellFormed(invalidUTF8))
        #expect((try? JSONSerialization.jsonObject(with: invalidUTF8)) == nil)
    }

    @Test func integerMemberIsAnIntID() {
        let ids = [
            "1", "-1", "0", "1.0", "1.5", "1e2", "-0.0", "9223372036854775807", "9223372036854775808", "1e19", "true",
            "false", "null", "\"1\"", "1e-7", "9007199254740993", "[1]", "{}", "70e-1",
        ]
        for id in ids {
            let data = Data("{\"id\":\(id),\"command\":5}".utf8)
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
            #expect(JSONSyntax.integerMember("id", of: data) == object?["id"] as? Int, "\(id)")
        }
    }
}
