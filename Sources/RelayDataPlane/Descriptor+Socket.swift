import CDataPlane
import Glibc

/// The socket calls the daemons make on descriptors they own from birth: create, bind,
/// listen, accept, connect, and the small reads and writes of a handshake line. Every
/// socket is nonblocking and close-on-exec from its first moment; a call that would block
/// says so (``IOResult/wouldBlock``) and the caller waits with a ``ReadinessLoop``.
extension Descriptor {
    /// What a nonblocking read or write did.
    public enum IOResult: Sendable, Equatable {
        /// This many bytes moved (a read of 0 is ``endOfStream``).
        case bytes(Int)
        /// The peer sent its FIN (reads only).
        case endOfStream
        /// Nothing moved: wait for readiness and try again.
        case wouldBlock
        /// The call failed with this errno.
        case failed(Int32)
    }

    /// A new nonblocking, close-on-exec TCP socket of `family` (AF_INET or AF_INET6).
    public static func tcpSocket(family: Int32) throws(SystemError) -> Descriptor {
        let descriptor = socket(
            family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw SystemError(call: "socket") }
        return Descriptor(rawValue: descriptor)
    }

    /// Binds to `address` (`length` bytes of a sockaddr) with SO_REUSEADDR, then listens.
    public func bindAndListen(_ address: UnsafePointer<sockaddr>, length: Int, backlog: Int32) throws(SystemError) {
        try self.setOption(level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
        guard Glibc.bind(self.rawValue, address, socklen_t(length)) == 0 else { throw SystemError(call: "bind") }
        guard Glibc.listen(self.rawValue, backlog) == 0 else { throw SystemError(call: "listen") }
    }

    /// Accepts one connection, nonblocking and close-on-exec; nil when none is queued.
    /// Errors that concern only the connection being accepted (it was reset while queued)
    /// are skipped.
    public func accept() throws(SystemError) -> Descriptor? {
        while true {
            let accepted = cdataplane_accept(self.rawValue)
            if accepted >= 0 { return Descriptor(rawValue: accepted) }
            switch errno {
            case EAGAIN, EWOULDBLOCK: return nil
            case EINTR, ECONNABORTED, EPROTO: continue
            default: throw SystemError(call: "accept4")
            }
        }
    }

    /// Starts connecting to `address`: true when connected at once, false when in progress
    /// (wait for ``ReadinessLoop/Interest/writable``, then ``takePendingError()``).
    public func startConnect(_ address: UnsafePointer<sockaddr>, length: Int) throws(SystemError) -> Bool {
        while true {
            if Glibc.connect(self.rawValue, address, socklen_t(length)) == 0 { return true }
            switch errno {
            case EINPROGRESS: return false
            case EINTR: continue
            default: throw SystemError(call: "connect")
            }
        }
    }

    /// Reads what is there, up to `buffer.count` bytes.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) -> IOResult {
        while true {
            let count = recv(self.rawValue, buffer.baseAddress, buffer.count, 0)
            if count > 0 { return .bytes(count) }
            if count == 0 { return .endOfStream }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            default: return .failed(errno)
            }
        }
    }

    /// Writes what the socket takes now of `bytes`, without SIGPIPE.
    public func send(_ bytes: UnsafeRawBufferPointer) -> IOResult {
        while true {
            let count = Glibc.send(self.rawValue, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
            if count >= 0 { return .bytes(count) }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            default: return .failed(errno)
            }
        }
    }

    /// The socket's own address (`getsockname`) or its peer's (`getpeername`), as raw bytes
    /// of a sockaddr; nil when the call fails (a socket that is not connected has no peer).
    public func address(peer: Bool) -> sockaddr_storage? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                peer ? getpeername(self.rawValue, address, &length) : getsockname(self.rawValue, address, &length)
            }
        }
        return result == 0 ? storage : nil
    }

    /// Aborts a connected TCP socket without closing the descriptor: `connect` with
    /// AF_UNSPEC disconnects it, which sends a reset and wakes whoever waits on it; the
    /// number stays allocated until ``close()``.
    public func disconnect() {
        var address = sockaddr()
        address.sa_family = sa_family_t(AF_UNSPEC)
        _ = Glibc.connect(self.rawValue, &address, socklen_t(MemoryLayout<sockaddr>.size))
    }

    /// Whether the socket is writable (or failed) right now, without waiting: `poll` with a
    /// zero timeout.
    public var isWritableNow: Bool {
        var entry = pollfd(fd: self.rawValue, events: Int16(POLLOUT), revents: 0)
        return poll(&entry, 1, 0) == 1
    }
}
