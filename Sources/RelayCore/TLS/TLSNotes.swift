import Logging

/// What both daemons log and report about TLS on the agent port at start and at reload.
public enum TLSNotes {
    /// The warning each daemon logs at start when its side of the agent port is plaintext.
    public static let plaintextWarning =
        "the agent port is plaintext (no 'tls' in the config): anyone on the path can read and alter its traffic, and the agent cannot tell the relay from an impostor; see docs/tls.md"

    /// Logs at start how the agent port is protected: one warning when it is plaintext.
    public static func logAtStart(_ summary: String?, logger: Logger) {
        if let summary {
            logger.info("agent port uses \(summary)")
        } else {
            logger.warning("\(Self.plaintextWarning)")
        }
    }

    /// The reload's word on TLS (summaries of the old and new `tls`, nil for plaintext): a
    /// reload always re-reads the files, and what it read serves the connections after it;
    /// open connections keep the handshake they made.
    public static func reloadChange(old: String?, new: String?) -> String? {
        switch (old, new) {
        case (nil, nil): nil
        case (_, let new?) where old == nil: "agent port TLS on for new connections: \(new)"
        case (_?, nil): "agent port plaintext for new connections (tls removed)"
        case (let old?, let new?) where old != new: "agent port TLS for new connections: \(new)"
        case (_, let new?): "TLS files re-read for new connections: \(new)"
        }
    }
}
