/// The version of this build of relay, printed by `--version` and reported by `relayctl status`.
public enum RelayVersion {
    /// The release version.
    public static let current = "0.1.0"
}
