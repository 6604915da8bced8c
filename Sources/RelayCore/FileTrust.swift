import Glibc
import RelayControl

/// Who may change a config file and who may read a secret file, checked on the open
/// descriptor the daemon then reads from (`fstat`), so the file checked is the file read.
///
/// - A config file must not be writable by group or others, and must be owned by root or by
///   the daemon's own user: whoever can write it decides which agents exist and what their
///   secrets are. (The Debian packages install configs `root:relay 0640`.)
/// - A secret file must give others no access at all, must not be group-writable, may be
///   group-readable only by the daemon's own group (the packaged layout is `root:relay
///   0640`: root writes it, the daemon reads it), and must be owned by root or the daemon's user.
public enum FileTrust {
    /// What a file holds, which decides the rule.
    public enum Kind: Sendable {
        case config
        case secret
    }

    /// Why `path` (of `kind`, with `mode`, `owner` and `group`) must not be trusted by a process
    /// running as `uid`/`gid`, as one line with the fix; `nil` when it may be.
    public static func problem(
        _ kind: Kind, path: String, mode: mode_t, owner: uid_t, group: gid_t, uid: uid_t, gid: gid_t
    ) -> String? {
        let what = kind == .config ? "config file" : "secret file"
        let bits = SocketTrust.octal(mode & 0o7777)
        if owner != 0 && owner != uid {
            return "\(what) \(path) is owned by uid \(owner), neither root nor the daemon's user (uid \(uid)): "
                + "that user could change it; run: chown root \(path)"
        }
        switch kind {
        case .config:
            if mode & 0o022 != 0 {
                return "\(what) \(path) is writable by group or others (mode \(bits)); run: chmod 640 \(path)"
            }
        case .secret:
            if mode & 0o007 != 0 {
                return "\(what) \(path) is accessible by others (mode \(bits)); run: chmod 600 \(path)"
            }
            if mode & 0o020 != 0 {
                return "\(what) \(path) is writable by its group (mode \(bits)); run: chmod 600 \(path)"
            }
            if mode & 0o040 != 0 && group != gid {
                return "\(what) \(path) is readable by group \(group), not the daemon's group \(gid) (mode \(bits)); "
                    + "run: chmod 600 \(path)"
            }
        }
        return nil
    }

    /// ``problem(_:path:mode:owner:group:uid:gid:)`` for the file open on `descriptor`, as
    /// this process (effective ids) sees it; `nil` also when `fstat` fails (the read will say why).
    public static func problem(_ kind: Kind, path: String, descriptor: Int32) -> String? {
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { return nil }
        return Self.problem(
            kind, path: path, mode: info.st_mode, owner: info.st_uid, group: info.st_gid, uid: geteuid(),
            gid: getegid())
    }
}
