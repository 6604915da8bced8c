/// What a reload does with the live sessions of a service it removes
/// (`removedServiceSessions`, both daemons).
public enum RemovedServiceRule: String, Sendable, CaseIterable {
    /// They go on until their client or target ends them (the default): a reload never
    /// cuts a transfer in flight. New clients are refused at once.
    case drain
    /// They are reset at once, as by `relayctl kill`.
    case close

    /// What the rule did to `count` live sessions, for a reload's change line
    /// ("1 live session drains", "3 live sessions closed").
    public func describe(liveSessions count: Int) -> String {
        let sessions = count == 1 ? "1 live session" : "\(count) live sessions"
        switch self {
        case .drain: return "\(sessions) \(count == 1 ? "drains" : "drain")"
        case .close: return "\(sessions) closed"
        }
    }
}

extension ConfigReader {
    /// `removedServiceSessions`: "drain" (default) or "close".
    public func removedServiceRule(_ root: [String: JSONValue]) -> RemovedServiceRule {
        guard root["removedServiceSessions"] != nil else { return .drain }
        let text = self.string(root, "removedServiceSessions", at: "$") ?? RemovedServiceRule.drain.rawValue
        guard let rule = RemovedServiceRule(rawValue: text) else {
            self.problem("$.removedServiceSessions", "must be \"drain\" or \"close\", not \"\(text)\"")
            return .drain
        }
        return rule
    }
}
