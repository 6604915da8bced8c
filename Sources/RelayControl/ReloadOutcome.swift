import RelaySupport

/// What a reload did: the changes applied, or the problems that made it keep the old config.
///
/// SIGHUP, `systemctl reload` and `relayctl reload` all produce one of these.
public struct ReloadOutcome: Sendable, Codable, Equatable {
    /// Whether the new config is now in force.
    public var applied: Bool
    /// What changed, one short line each ("service 'web' added on 0.0.0.0:8080").
    public var changes: [String]
    /// Why the new config was refused (each `path: message`); empty when applied.
    public var problems: [String]

    /// Creates an outcome.
    public init(applied: Bool, changes: [String] = [], problems: [String] = []) {
        self.applied = applied
        self.changes = changes
        self.problems = problems
    }
}

extension ReloadOutcome {
    /// A number of seconds in a change line: "2s", "0.5s".
    public static func seconds(_ value: Double) -> String {
        String(cFormat: "%gs", value)
    }

    /// One change line per setting whose value differs: "halfCloseTimeoutSeconds 120s -> 30s".
    public static func changedSeconds(_ settings: [(key: String, old: Double, new: Double)]) -> [String] {
        settings.filter { $0.old != $0.new }.map { "\($0.key) \(Self.seconds($0.old)) -> \(Self.seconds($0.new))" }
    }
}
