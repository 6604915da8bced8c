import Glibc

/// A TCP socket bound to `source` before it connects to 127.0.0.1:`port` (another loopback
/// address plays another host): blocking, returned once connected, or nonblocking, returned
/// with its connect in progress. Throws with errno when either step fails.
func sourceBoundSocket(from source: String, port: Int, nonblocking: Bool = false) throws -> Int32 {
    let flags = Int32(SOCK_CLOEXEC.rawValue) | (nonblocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | flags, 0)
    guard descriptor >= 0 else { throw HarnessError("socket: errno \(errno)") }
    var local = sockaddr_in()
    local.sin_family = sa_family_t(AF_INET)
    inet_pton(AF_INET, source, &local.sin_addr)
    var remote = sockaddr_in()
    remote.sin_family = sa_family_t(AF_INET)
    remote.sin_port = in_port_t(UInt16(port).bigEndian)
    inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr)
    let length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &local) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) }
    }
    let connected = withUnsafePointer(to: &remote) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, length) }
    }
    guard bound == 0, connected == 0 || (nonblocking && errno == EINPROGRESS) else {
        let error = errno
        close(descriptor)
        throw HarnessError("cannot connect from \(source) to port \(port): errno \(error)")
    }
    return descriptor
}
