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

    /// Makes `path` ready for `bind`: creates its directory (mode 0755) if missing, checks
    /// that nobody but this daemon's user (or root) can replace files in it (see
    /// ``SocketTrust/directoryProblem(_:mode:owner:uid:)``; a directory of ours that is group-
    /// or world-writable loses those bits, on its descriptor), removes a stale socket file, and
    /// throws when a live daemon or a file that is not a socket is there. Returns a note for the
    /// log when it repaired the directory.
    ///
    /// The socket's mode is not set here nor after bind: ``ControlSocketServer`` binds under
    /// umask 0117, so the socket is created 0660 by bind(2) itself, with this process's group,
    /// in a directory only we (or root) can change: no moment with a wider mode, and no path
    /// operation after bind that someone could redirect.
    @discardableResult
    public static func prepare(_ path: String) throws(DaemonError) -> String? {
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
        let note = try Self.checkDirectory(directory.isEmpty ? "." : directory)
        switch Self.occupant(of: path) {
        case .none:
            return note
        case .live:
            throw DaemonError("control socket \(path) is in use by a running daemon (another instance?)")
        case .notASocket:
            throw DaemonError("control socket path \(path) exists and is not a socket; not removing it")
        case .stale:
            if unlink(path) != 0 && errno != ENOENT {
                throw DaemonError(
                    "cannot remove the stale control socket \(path): \(String(cString: strerror(errno)).lowercased())")
            }
            return note
        }
    }

    /// Checks (and, if it is ours, repairs) the socket's directory on an open descriptor.
    private static func checkDirectory(_ directory: String) throws(DaemonError) -> String? {
        let descriptor = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw DaemonError(
                "cannot open the control socket directory \(directory): \(String(cString: strerror(errno)).lowercased())"
            )
        }
        defer { close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else {
            throw DaemonError(
                "cannot inspect the control socket directory \(directory): \(String(cString: strerror(errno)).lowercased())"
            )
        }
        let uid = geteuid()
        if let problem = SocketTrust.directoryProblem(directory, mode: info.st_mode, owner: info.st_uid, uid: uid) {
            throw DaemonError(problem)
        }
        guard SocketTrust.repairableDirectory(mode: info.st_mode, owner: info.st_uid, uid: uid) else { return nil }
        let repaired = info.st_mode & 0o7777 & ~mode_t(0o022)
        guard fchmod(descriptor, repaired) == 0 else {
            throw DaemonError(
                "cannot remove group and other write access from the control socket directory \(directory): "
                    + String(cString: strerror(errno)).lowercased())
        }
        return "control socket directory \(directory) was writable by group or others (mode "
            + "\(SocketTrust.octal(info.st_mode & 0o7777))); set it to \(SocketTrust.octal(repaired))"
    }

    /// Why `FileManager` could not create a directory, in the system's words ("not a
    /// directory"), as the other messages here say it.
    private static func reason(_ error: any Error) -> String {
        guard let posix = (error as? CocoaError)?.underlying as? POSIXError else { return "\(error)" }
        return String(cString: strerror(posix.code.rawValue)).lowercased()
    }
}
