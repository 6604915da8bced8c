/// Text a daemon supplied, made safe to print on a terminal: every control character is
/// shown as a visible escape instead of being obeyed, so an error text such as
/// `"\u{1B}[2J\r"` cannot clear the screen, move the cursor, retitle the window or forge lines.
///
/// Escaped: C0 (U+0000–U+001F) as `\r`, `\n`, `\t` or `\x1b`; DEL as `\x7f`; C1 (U+0080–U+009F,
/// which some terminals obey as ESC sequences) and the bidirectional overrides and isolates
/// (U+202A–U+202E, U+2066–U+2069, which reorder what is shown) as `\u{9b}`. A backslash is
/// left as it is.
public enum TerminalText {
    /// `text` with every control character escaped; `keepingNewlines` keeps line feeds (for
    /// text that is lines by nature, as the metrics exposition).
    public static func escape(_ text: String, keepingNewlines: Bool = false) -> String {
        guard text.unicodeScalars.contains(where: { Self.isControl($0) }) else { return text }
        var result = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            if !Self.isControl(scalar) || (keepingNewlines && scalar == "\n") {
                result.append(scalar)
                continue
            }
            let escaped: String
            switch scalar.value {
            case 0x0A: escaped = "\\n"
            case 0x0D: escaped = "\\r"
            case 0x09: escaped = "\\t"
            case 0x00...0x1F, 0x7F: escaped = "\\x" + Self.hex(scalar.value, digits: 2)
            default: escaped = "\\u{" + String(scalar.value, radix: 16) + "}"
            }
            result.append(contentsOf: escaped.unicodeScalars)
        }
        return String(result)
    }

    /// Whether a terminal might obey `scalar` rather than show it.
    public static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1F, 0x7F...0x9F, 0x202A...0x202E, 0x2066...0x2069: true
        default: false
        }
    }

    /// JSON text (as JSONEncoder writes it, which escapes C0 in strings already) with DEL, C1
    /// and the bidirectional controls written as `\u` escapes too: the same JSON value, nothing
    /// a terminal obeys. Line feeds stay (pretty-printed JSON's own); every other control
    /// character can only occur inside a string, where `\uXXXX` means the same.
    public static func escapeJSON(_ json: String) -> String {
        guard json.unicodeScalars.contains(where: { $0 != "\n" && Self.isControl($0) }) else { return json }
        var result = String.UnicodeScalarView()
        for scalar in json.unicodeScalars {
            if scalar != "\n" && Self.isControl(scalar) {
                result.append(contentsOf: ("\\u" + Self.hex(scalar.value, digits: 4)).unicodeScalars)
            } else {
                result.append(scalar)
            }
        }
        return String(result)
    }

    private static func hex(_ value: UInt32, digits: Int) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }
}
