import RelayProtocol

/// Keys that name one thing or a list of them (`agent` or `agents`, `relay` or `relays`).
extension ConfigReader {
    /// The value of exactly one of `single` (a string) and `list` (a non-empty array of
    /// distinct strings, at most `maxCount`), each with its JSON path; nil (with the problem
    /// noted) when both, neither or a bad list is given. `item` reads one string found at a
    /// path (nil: it noted a problem there).
    public func oneOrList<Item: Hashable>(
        _ object: [String: JSONValue], single: String, list: String, at path: String, maxCount: Int,
        item: (_ text: String, _ path: String) -> Item?
    ) -> [(path: String, value: Item)]? {
        switch (object[single], object[list]) {
        case (nil, nil):
            self.problem("\(path).\(single)", "required key is missing (give '\(single)' or '\(list)')")
            return nil
        case (.some, .some):
            self.problem("\(path).\(list)", "give only one of '\(single)' and '\(list)', not both")
            return nil
        case (.some, nil):
            guard let text = self.string(object, single, at: path) else { return nil }
            return item(text, "\(path).\(single)").map { [("\(path).\(single)", $0)] }
        case (nil, .array(let items)?):
            guard !items.isEmpty else {
                self.problem("\(path).\(list)", "must name at least one")
                return nil
            }
            guard items.count <= maxCount else {
                self.problem("\(path).\(list)", "at most \(maxCount) entries, not \(items.count)")
                return nil
            }
            var result: [(path: String, value: Item)] = []
            var firstPaths: [Item: String] = [:]
            var bad = false
            for (index, value) in items.enumerated() {
                let itemPath = "\(path).\(list)[\(index)]"
                guard case .string(let text) = value else {
                    self.problem(itemPath, "must be a string, not \(value.kindDescription)")
                    bad = true
                    continue
                }
                guard let read = item(text, itemPath) else {
                    bad = true
                    continue
                }
                if let first = firstPaths[read] {
                    self.problem(itemPath, "duplicate entry '\(read)' (first at \(first))")
                    bad = true
                    continue
                }
                firstPaths[read] = itemPath
                result.append((itemPath, read))
            }
            return bad ? nil : result
        case (nil, let other?):
            self.problem("\(path).\(list)", "must be an array of strings, not \(other.kindDescription)")
            return nil
        }
    }
}

extension ConfigReader {
    /// An agent id or service name found at `path` (in a list); nil, with the problem noted,
    /// when it is not a valid name.
    public func name(_ text: String, at path: String) -> String? {
        guard Names.isValid(text) else {
            self.problem(path, "'\(text)' is not a valid name: use \(Names.rule)")
            return nil
        }
        return text
    }

    /// A `host:port` address found at `path` (in a list); nil, with the problem noted, when bad.
    public func address(_ text: String, at path: String, allowPortZero: Bool = true) -> HostPort? {
        do {
            return try HostPort(parsing: text, allowPortZero: allowPortZero)
        } catch {
            self.problem(path, "bad address '\(text)': \(error.description)")
            return nil
        }
    }
}
