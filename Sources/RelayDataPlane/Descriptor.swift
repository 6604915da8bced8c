import Glibc

/// A file descriptor number and the handful of calls the data plane makes on one: flags,
/// socket options, write shutdown, pending error, the two ways to close.
///
/// A plain value: it does not own the descriptor. Who owns it is said where it is passed
/// (``SplicePlane/start(first:second:pendingForward:pendingBackward:meter:limits:onEnd:)``
/// takes ownership of both sockets).
public struct Descriptor: Sendable, Hashable, CustomStringConvertible {
    /// The descriptor number.
    public let rawValue: Int32

    /// Wraps a descriptor number.
    public init(rawValue: Int32) {
        self.rawValue = rawValue
    }

    public var description: String { "fd \(self.rawValue)" }

    /// Sets O_NONBLOCK (a no-op when already set).
    public func setNonBlocking() throws(SystemError) {
        let flags = fcntl(self.rawValue, F_GETFL)
        guard flags >= 0 else { throw SystemError(call: "fcntl(F_GETFL)") }
        guard flags & O_NONBLOCK == 0 else { return }
        guard fcntl(self.rawValue, F_SETFL, flags | O_NONBLOCK) == 0 else { throw SystemError(call: "fcntl(F_SETFL)") }
    }

    /// Sets FD_CLOEXEC (a no-op when already set).
    public func setCloseOnExec() throws(SystemError) {
        let flags = fcntl(self.rawValue, F_GETFD)
        guard flags >= 0 else { throw SystemError(call: "fcntl(F_GETFD)") }
        guard flags & FD_CLOEXEC == 0 else { return }
        guard fcntl(self.rawValue, F_SETFD, flags | FD_CLOEXEC) == 0 else { throw SystemError(call: "fcntl(F_SETFD)") }
    }

    /// Sets an integer socket option.
    public func setOption(level: Int32, name: Int32, value: Int32) throws(SystemError) {
        var value = value
        guard setsockopt(self.rawValue, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw SystemError(call: "setsockopt(\(level), \(name))")
        }
    }

    /// TCP_NODELAY on (what every relay connection uses: a spliced hop must not hold back small writes).
    public func setNoDelay() throws(SystemError) {
        try self.setOption(level: Int32(IPPROTO_TCP), name: TCP_NODELAY, value: 1)
    }

    /// The socket's pending error (SO_ERROR), which reading it clears; 0 when none.
    public func takePendingError() -> Int32 {
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(self.rawValue, SOL_SOCKET, SO_ERROR, &error, &length) == 0 else { return errno }
        return error
    }

    /// Shuts down the write side: the peer reads end of stream once every byte queued before it.
    public func shutdownWrite() throws(SystemError) {
        guard shutdown(self.rawValue, Int32(SHUT_WR)) == 0 else { throw SystemError(call: "shutdown(SHUT_WR)") }
    }

    /// Closes the descriptor. The kernel still sends what the socket has queued, then its FIN.
    public func close() {
        _ = Glibc.close(self.rawValue)
    }

    /// Closes the socket abortively (SO_LINGER {1, 0}, then close): queued bytes are dropped
    /// and the peer reads a reset, so the next hop tears its session down too instead of
    /// lingering half-open (RelayCore's `Channel.abort()` does the same for NIO channels).
    public func reset() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(self.rawValue, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        self.close()
    }
}

/// A failed system call: which call and its errno.
public struct SystemError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The call that failed, as written in messages ("pipe2").
    public let call: String
    /// Its errno.
    public let code: Int32

    /// The failure of `call` with the current `errno` (or `code`).
    public init(call: String, code: Int32 = errno) {
        self.call = call
        self.code = code
    }

    /// What `code` means, in lowercase words ("connection reset by peer"), as RelayCore's
    /// `Network.describe` words a NIO I/O error, so session logs read the same.
    public static func describe(_ code: Int32) -> String {
        String(cString: strerror(code)).lowercased()
    }

    public var description: String { "\(self.call): \(Self.describe(self.code))" }
}
