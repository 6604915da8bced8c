import ArgumentParser

/// relayctl's exit statuses, one per kind of failure (documented in relayctl(1)).
enum ExitStatus {
    /// The command did what was asked.
    static let success: Int32 = 0
    /// Any other failure: the daemon failed to carry the request out.
    static let failure: Int32 = 1
    /// The daemon is not running: no socket file, or nothing listens on it.
    static let notRunning: Int32 = 3
    /// The socket exists but this user may not connect to it.
    static let permissionDenied: Int32 = 4
    /// The daemon did not answer in time (`--timeout`).
    static let timeout: Int32 = 5
    /// No such session, service or agent.
    static let notFound: Int32 = 6
    /// `reload`: the daemon refused the new config and keeps the old one.
    static let reloadRefused: Int32 = 7
    /// The daemon does not know the command (e.g. `agents` asked of relay-agent) or refused the request.
    static let rejected: Int32 = 8
    /// The answer was not what relayctl expects (not a relay daemon, or a version mismatch).
    static let badAnswer: Int32 = 9
    /// A usage error on the command line (ArgumentParser's validation failure).
    static let usage: Int32 = 64
}

/// A failure relayctl reports as one line on stderr and an exit status.
struct CtlError: Error {
    let message: String
    let status: Int32

    init(_ message: String, status: Int32) {
        self.message = message
        self.status = status
    }
}
