/// Reading limits from either daemon's config.
extension ConfigReader {
    /// A whole number within `range`, or `defaultValue` when missing.
    public func count(
        _ object: [String: JSONValue], _ key: String, at path: String, default defaultValue: Int,
        range: ClosedRange<Int>
    ) -> Int {
        switch object[key] {
        case nil: return defaultValue
        case .number(let value)?
        where value == value.rounded() && Double(range.lowerBound) <= value
            && value <= Double(range.upperBound):
            return Int(value)
        case .number?:
            self.problem("\(path).\(key)", "must be a whole number from \(range.lowerBound) to \(range.upperBound)")
            return defaultValue
        case let other?:
            self.problem("\(path).\(key)", "must be a number, not \(other.kindDescription)")
            return defaultValue
        }
    }

    /// A list of CIDR blocks (`allow`, `deny`); each bad entry is a problem at its index.
    public func addressRanges(_ object: [String: JSONValue], _ key: String, at path: String) -> [AddressRange] {
        switch object[key] {
        case nil: return []
        case .array(let items)?:
            var ranges: [AddressRange] = []
            for (index, item) in items.enumerated() {
                guard case .string(let text) = item else {
                    self.problem("\(path).\(key)[\(index)]", "must be a CIDR string, not \(item.kindDescription)")
                    continue
                }
                do {
                    ranges.append(try AddressRange(text))
                } catch {
                    self.problem("\(path).\(key)[\(index)]", error.description)
                }
            }
            return ranges
        case let other?:
            self.problem("\(path).\(key)", "must be an array of CIDR strings, not \(other.kindDescription)")
            return []
        }
    }

    /// `sessionIdleTimeoutSeconds` of either daemon's config (default
    /// ``PumpLimits/defaultSessionIdleTimeout``; 0: no limit).
    public func sessionIdleTimeout(_ root: [String: JSONValue]) -> Double {
        self.seconds(
            root, "sessionIdleTimeoutSeconds", at: "$", default: PumpLimits.defaultSessionIdleTimeout,
            range: 0...604800)
    }
}
