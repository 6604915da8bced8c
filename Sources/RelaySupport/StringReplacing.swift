extension String {
    /// This string with every occurrence of `target` replaced by `replacement`, left to right
    /// and without overlaps, matched byte for byte in UTF-8.
    ///
    /// For the ASCII targets relay replaces this is what Foundation's
    /// `replacingOccurrences(of:with:)` gave, except that Foundation skipped a target followed
    /// by a combining mark (`"\u{301}` kept its quote unescaped); this replaces every one.
    package func replacingLiterally(_ target: String, with replacement: String) -> String {
        let needle = Array(target.utf8)
        guard let first = needle.first else { return self }
        let bytes = Array(self.utf8)
        var result: [UInt8] = []
        result.reserveCapacity(bytes.count)
        var index = 0
        var replaced = false
        while index < bytes.count {
            if bytes[index] == first, bytes[index...].starts(with: needle) {
                result.append(contentsOf: replacement.utf8)
                index += needle.count
                replaced = true
            } else {
                result.append(bytes[index])
                index += 1
            }
        }
        return replaced ? String(decoding: result, as: UTF8.self) : self
    }
}
