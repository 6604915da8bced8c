import Glibc

/// Who may own the control socket and the directories above it.
///
/// - The daemon (``directoryProblem(_:mode:owner:uid:)``) puts its socket only in a directory
///   owned by its own user or root that others cannot write to (or that is sticky, as /tmp,
///   where nobody can remove or replace a file of another user): anyone else who could write
///   there could replace the socket with their own. A directory of its own that is group- or
///   world-writable is repaired (``repairableDirectory(mode:owner:uid:)``).
/// - relayctl run as root (``clientProblem(_:)``) talks only to a socket owned by root or a
///   system account (uid below ``firstRegularUID``), in directories, from `/` down, owned by such
///   a user and not writable by others unless sticky: otherwise a local user could have planted
///   an impostor socket that root would trust (and send `kill` or `reload` to, or believe).
public enum SocketTrust {
    /// The first uid of a regular (login) account on Debian (`FIRST_UID` in adduser.conf);
    /// system accounts, such as the packages' `relay`, are below it.
    public static let firstRegularUID: uid_t = 1000

    /// Why a daemon running as `uid` must not bind its socket in `directory` (`mode`, `owner`);
    /// `nil` when it may, or when the daemon repairs it (see ``repairableDirectory(mode:owner:uid:)``).
    public static func directoryProblem(_ directory: String, mode: mode_t, owner: uid_t, uid: uid_t) -> String? {
        if owner != uid && owner != 0 {
            return "control socket directory \(directory) is owned by uid \(owner), neither root nor the daemon's "
                + "user (uid \(uid)): that user could replace the socket; run: chown \(uid) \(directory)"
        }
        if Self.othersCanReplace(mode: mode) && !Self.repairableDirectory(mode: mode, owner: owner, uid: uid) {
            return "control socket directory \(directory) is writable by group or others (mode "
                + "\(Self.octal(mode & 0o7777))): they could replace the socket; run: chmod go-w \(directory)"
        }
        return nil
    }

    /// Whether the daemon running as `uid` removes the group and other write bits of the
    /// directory itself: it owns it, and others could replace the socket in it.
    public static func repairableDirectory(mode: mode_t, owner: uid_t, uid: uid_t) -> Bool {
        owner == uid && Self.othersCanReplace(mode: mode)
    }

    /// Group or others may write and the sticky bit does not keep them off files not theirs.
    static func othersCanReplace(mode: mode_t) -> Bool {
        mode & 0o022 != 0 && mode & 0o1000 == 0  // 0o1000: the sticky bit
    }

    /// Whether relayctl run as root may believe a file or directory owned by `owner`.
    public static func trustedOwner(_ owner: uid_t) -> Bool {
        owner < Self.firstRegularUID
    }

    /// Why relayctl, run as root, must not talk to the socket at `path`; `nil` when it may
    /// (or when nothing is there: connecting will say so).
    public static func clientProblem(_ path: String) -> String? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        if !Self.trustedOwner(info.st_uid) {
            return "refusing the control socket \(path): it is owned by uid \(info.st_uid), not root or a system "
                + "account, so it may be an impostor planted by a local user"
        }
        var directory = path
        while let slash = directory.lastIndex(of: "/") {
            directory = slash == directory.startIndex ? "/" : String(directory[..<slash])
            var dirInfo = stat()
            guard stat(directory, &dirInfo) == 0 else { return nil }
            if !Self.trustedOwner(dirInfo.st_uid) {
                return "refusing the control socket \(path): its directory \(directory) is owned by uid "
                    + "\(dirInfo.st_uid), not root or a system account, so the socket may be an impostor"
            }
            if Self.othersCanReplace(mode: dirInfo.st_mode) {
                return "refusing the control socket \(path): its directory \(directory) is writable by group or "
                    + "others (mode \(Self.octal(dirInfo.st_mode & 0o7777))), so the socket may be an impostor"
            }
            if directory == "/" { break }
        }
        return nil
    }

    /// `0755`: a mode as chmod takes it.
    public static func octal(_ mode: mode_t) -> String {
        let digits = String(mode, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }
}
