import Glibc

/// A Unix socket's path as both ends of the control socket use it: relayctl connects to the
/// address, the daemon (RelayCore's extension) prepares the path and binds it.
public enum SocketFile {
    /// The `sockaddr_un` for `path`, or `nil` if the path is too long.
    public static func address(_ path: String) -> sockaddr_un? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }
}
