import Glibc
import RelayDataPlane

/// How a daemon hands its listeners and live plaintext sessions to the next process of its
/// unit at a restart (docs/restart.md): the supervisor is asked whether a SIGTERM is a
/// restart, and the descriptors go to systemd's file descriptor store, which passes them to
/// the next process with their names. The executables connect this to systemd
/// (`Handover.systemd()` in RelaySystemd); the default does nothing and every stop drains.
public struct Handover: Sendable {
    /// What a SIGTERM leads to.
    public enum Decision: Sendable, Equatable {
        /// A restart whose next process can take the descriptors: hand over.
        case handOver(job: String)
        /// A stop, or a restart that cannot carry anything: drain (`reason` says why).
        case drain(reason: String)
    }

    /// The name of the memfd that holds the state document (``HandoverState``).
    public static let stateName = "state"
    /// The most descriptors one store message carries (the kernel's SCM_MAX_FD is 253).
    public static let descriptorsPerMessage = 253
    /// How long the old process waits for systemd to have taken every stored descriptor
    /// (sd_notify_barrier(3)) before it exits: 5 s.
    public static let barrierTimeoutMicroseconds: UInt64 = 5_000_000
    /// How long a client of a service whose agent was registered before a handover (or that
    /// said it is restarting) waits for that agent to register again, instead of being
    /// refused at once: 10 s, counted from the new process's start (or the agent's
    /// `restarting` message).
    public static let agentGraceSeconds: Double = 10

    /// The job types systemd runs for a restart: a SIGTERM during one of these hands over.
    public static let restartJobTypes: Set<String> = [
        "restart", "try-restart", "reload-or-restart", "reload-or-try-restart",
    ]

    /// What a SIGTERM leads to when systemd runs a job of `jobType` on the unit (nil: no job,
    /// or it could not be asked, with `failure` saying why).
    /// With `storeMax` (the unit's `FileDescriptorStoreMax=`, when known), a restart that
    /// would store more than it holds (`needed` descriptors) drains too: systemd would drop
    /// the rest without telling the sender.
    public static func decide(jobType: String?, failure: String? = nil, storeMax: Int? = nil, needed: Int = 0)
        -> Decision
    {
        guard let jobType else { return .drain(reason: failure ?? "no job on the unit") }
        guard Self.restartJobTypes.contains(jobType) else { return .drain(reason: "job \(jobType)") }
        if let storeMax, storeMax < needed {
            return .drain(reason: "FileDescriptorStoreMax=\(storeMax) cannot hold \(needed) descriptors")
        }
        return .handOver(job: jobType)
    }

    /// The descriptors a handover of `sessions` sessions and `listeners` listeners stores:
    /// two per session, each listener, and the state memfd.
    public static func descriptorsNeeded(sessions: Int, listeners: Int) -> Int {
        2 * sessions + listeners + 1
    }

    /// Whether `name` is one a handover stores a descriptor under (not a listener's).
    public static func isHandoverName(_ name: String) -> Bool {
        name == Self.stateName || name.hasPrefix("s-")
    }

    /// The name a session's socket is stored under: `s-<session>-1` for the first (at the
    /// relay the client, at the agent the data channel), `s-<session>-2` for the second.
    /// Session ids are hex: the name is printable ASCII without ':', well under 255 bytes.
    public static func socketName(session: String, first: Bool) -> String {
        "s-\(session)-\(first ? 1 : 2)"
    }

    /// Asks whether this SIGTERM is a restart that can carry sessions, given how many
    /// descriptors it would store (``descriptorsNeeded(sessions:listeners:)``).
    public var decide: @Sendable (_ needed: Int) -> Decision
    /// Stores descriptors under their names; false if one could not be stored.
    public var store: @Sendable ([(name: String, descriptor: CInt)]) -> Bool
    /// Removes what is stored under a name.
    public var remove: @Sendable (String) -> Void
    /// Makes an empty memfd for the state document (-1 on failure).
    public var memfd: @Sendable (String) -> CInt
    /// The descriptors the previous process stored (sessions' sockets, the state), by name.
    public var inherited: [String: CInt]

    /// A handover over the given calls; the default never hands over.
    public init(
        decide: @escaping @Sendable (_ needed: Int) -> Decision = { _ in .drain(reason: "not run by systemd") },
        store: @escaping @Sendable ([(name: String, descriptor: CInt)]) -> Bool = { _ in false },
        remove: @escaping @Sendable (String) -> Void = { _ in },
        memfd: @escaping @Sendable (String) -> CInt = { _ in -1 },
        inherited: [String: CInt] = [:]
    ) {
        self.decide = decide
        self.store = store
        self.remove = remove
        self.memfd = memfd
        self.inherited = inherited
    }
}

/// A descriptor-backed file for the state document: a memfd written once and read back.
public enum HandoverFile {
    /// Writes `bytes` to `descriptor` from its start; false on failure.
    public static func write(_ bytes: [UInt8], to descriptor: CInt) -> Bool {
        var written = 0
        while written < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress! + written, $0.count - written) }
            if count > 0 {
                written += count
            } else if count < 0 && errno == EINTR {
                continue
            } else {
                return false
            }
        }
        return true
    }

    /// Everything in `descriptor` from its start, at most `limit` bytes; nil on failure.
    public static func read(_ descriptor: CInt, limit: Int = HandoverState.maxBytes) -> [UInt8]? {
        guard lseek(descriptor, 0, SEEK_SET) == 0 else { return nil }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while bytes.count <= limit {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress!, $0.count) }
            if count > 0 {
                bytes += chunk[..<count]
            } else if count == 0 {
                return bytes
            } else if errno != EINTR {
                return nil
            }
        }
        return nil
    }
}
