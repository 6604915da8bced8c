extension String {
    /// This string without the white space and line breaks at either end, as Foundation's
    /// `trimmingCharacters(in: .whitespacesAndNewlines)` trimmed them.
    package func trimmingWhitespaceAndNewlines() -> String {
        let scalars = self.unicodeScalars
        guard let first = scalars.firstIndex(where: { !Self.isWhitespaceOrNewline($0) }) else { return "" }
        let last = scalars.lastIndex(where: { !Self.isWhitespaceOrNewline($0) })!
        return String(scalars[first...last])
    }

    /// Foundation's `CharacterSet.whitespacesAndNewlines`: tab, the line breaks U+000A to
    /// U+000D, U+0085, U+2028 and U+2029, and the spaces (with U+200B, and not U+180E).
    private static func isWhitespaceOrNewline(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x09...0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200B, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: true
        default: false
        }
    }
}
