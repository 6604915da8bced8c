import FoundationEssentials
import Glibc
import RelayControl
import RelaySupport

/// Preparing the path of a Unix socket a daemon is about to bind: its directory must exist,
/// a live daemon there must not be disturbed, and a stale socket file is replaced.
extension SocketFile {
    /// What is at a socket path now.
    public enum Occupant: Sendable, Equatable {
        /// Nothing: the path is free.
        case none
        /// A socket something accepts connections on.
        case live
        /// A socket file nothing listens on any more (connect is refused).
        case stale
        /// A file that is not a socket: never removed.
        case notASocket
    }

    /// Who is at `path`: tries to connect when a socket file is there.
    public static func occupant(of path: String) -> Occupant {
        var info = stat()
        guard lstat(path, &info) == 0 else { return .none }
        guard (info.st_mode & S_IFMT) == S_IFSOCK else { return .notASocket }
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return .live }
        defer { close(descriptor) }
        guard var address = Self.address(path) else { return .notASocket }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if result == 0 { return .live }
        // Refused (nobody listens) or gone: stale. Anything else (EAGAIN: a full backlog) means alive.
        return errno == ECONNREFUSED || errno == ENOENT ? .stale : .live
    }

    /// Makes `path` ready for `bind`: creates its directory (mode 0755) if missing, removes a
    /// stale socket file, and throws when a live daemon or a file that is not a socket is there.
    public static func prepare(_ path: String) throws(DaemonError) {
        guard Self.address(path) != nil else {
            throw DaemonError("control socket path \(path) is too long for a Unix socket")
        }
        let directory = PathString.directory(of: path)
        if !directory.isEmpty, !FileManager.default.fileExists(atPath: directory) {
            do {
                try FileManager.default.createDirectory(
                    atPath: directory, withIntermediateDirectories: true,
                    attributes: [.posixPermissions: Int(ControlSocketLimits.directoryMode)])
            } catch {
                throw DaemonError(
                    "cannot create the directory \(directory) for the control socket: \(Self.reason(error))")
            }
        }
        switch Self.occupant(of: path) {
        case .none:
            return
        case .live:
            throw DaemonError("control socket \(path) is in use by a running daemon (another instance?)")
        case .notASocket:
            throw DaemonError("control socket path \(path) exists and is not a socket; not removing it")
        case .stale:
            if unlink(path) != 0 && errno != ENOENT {
                throw DaemonError(
                    "cannot remove the stale control socket \(path): \(String(cString: strerror(errno)).lowercased())")
            }
        }
    }

    /// Gives the bound socket its mode (0660) and the daemon's group.
    public static func restrict(_ path: String) throws(DaemonError) {
        guard chmod(path, ControlSocketLimits.socketMode) == 0 else {
            throw DaemonError("cannot set the mode of \(path): \(String(cString: strerror(errno)).lowercased())")
        }
        // The daemon's own group; failing here (EPERM) leaves the inherited group, which is ours anyway.
        _ = chown(path, uid_t.max, getegid())
    }

    /// Why `FileManager` could not create a directory, in the system's words ("not a
    /// directory"), as the other messages here say it.
    private static func reason(_ error: any Error) -> String {
        guard let posix = (error as? CocoaError)?.underlying as? POSIXError else { return "\(error)" }
        return String(cString: strerror(posix.code.rawValue)).lowercased()
    }
}
