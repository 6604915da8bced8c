/// The path rules of Foundation's `NSString` (`deletingLastPathComponent`,
/// `lastPathComponent`, `appendingPathComponent`) for plain strings: `/` is the only
/// separator, runs of slashes count as one, and a trailing slash is ignored.
package enum PathString {
    /// The directory part of `path`: `/etc/relay` for `/etc/relay/proxy.json`, `/` for `/x`,
    /// and `""` for a relative name without a slash.
    ///
    /// Foundation trapped on a path that reduced to one character other than `/` (`x`, `x/`);
    /// this gives `""` for it, as for any other relative name.
    package static func directory(of path: String) -> String {
        let fixed = Self.fixingSlashes(path)
        if fixed == "/" || fixed.isEmpty { return fixed }
        let start = Self.startOfLastComponent(fixed)
        if start == fixed.startIndex { return "" }
        if start == fixed.index(after: fixed.startIndex) { return "/" }
        return String(fixed[..<fixed.index(before: start)])
    }

    /// The last component of `path`: `proxy.sock` for `/run/relay/proxy.sock/`, `/` for `/`.
    package static func lastComponent(of path: String) -> String {
        let fixed = Self.fixingSlashes(path)
        if fixed.utf16.count <= 1 { return fixed }
        return String(fixed[Self.startOfLastComponent(fixed)...])
    }

    /// `component` appended to `path` with one slash between, unless either is empty or
    /// `path` already ends in a slash.
    package static func appending(_ component: String, to path: String) -> String {
        if component.isEmpty { return path }
        if path.isEmpty { return component }
        return path.hasSuffix("/") ? path + component : path + "/" + component
    }

    /// `path` with every run of slashes made one and a trailing slash dropped (`/` stays).
    private static func fixingSlashes(_ path: String) -> String {
        if path == "/" { return path }
        var result = ""
        var afterSlash = false
        for character in path {
            if character == "/" {
                if !afterSlash { result.append(character) }
                afterSlash = true
            } else {
                result.append(character)
                afterSlash = false
            }
        }
        if result.hasSuffix("/") { result.removeLast() }
        return result
    }

    /// Where the part after the last slash begins.
    private static func startOfLastComponent(_ path: String) -> String.Index {
        guard let slash = path.lastIndex(of: "/") else { return path.startIndex }
        return path.index(after: slash)
    }
}
