import Foundation
import Glibc
import RelayDataPlane
import Synchronization

/// Real TCP connections on 127.0.0.1 as plain descriptors, no NIO: a listener on port 0
/// accepts one dialled connection and closes. Both ends are close-on-exec and TCP_NODELAY
/// (as the daemons' connections are).
enum Loopback {
    struct Failure: Error, CustomStringConvertible {
        let call: String
        let code: Int32
        var description: String { "\(self.call): \(SystemError.describe(self.code))" }
    }

    /// A fresh connection: the dialled end, then the accepted one. `smallBuffers`: the
    /// dialled end's send buffer and the accepted end's receive buffer are cut to the
    /// kernel's minimum (set before the connection, so the window is small from the start):
    /// a writer on the dialled end blocks after a few KiB that the accepted end does not read.
    static func connection(smallBuffers: Bool = false) throws -> (dialled: Int32, accepted: Int32) {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard listener >= 0 else { throw Failure(call: "socket", code: errno) }
        defer { close(listener) }
        if smallBuffers { Self.setBuffer(listener, SO_RCVBUF, 1) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withSocketAddress(&address) {
            guard bind(listener, $0, length) == 0 else { throw Failure(call: "bind", code: errno) }
        }
        guard listen(listener, 1) == 0 else { throw Failure(call: "listen", code: errno) }
        try withSocketAddress(&address) {
            guard getsockname(listener, $0, &length) == 0 else { throw Failure(call: "getsockname", code: errno) }
        }
        let dialled = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard dialled >= 0 else { throw Failure(call: "socket", code: errno) }
        if smallBuffers { Self.setBuffer(dialled, SO_SNDBUF, 1) }
        do {
            try withSocketAddress(&address) {
                guard connect(dialled, $0, length) == 0 else { throw Failure(call: "connect", code: errno) }
            }
            let accepted = accept(listener, nil, nil)
            guard accepted >= 0 else { throw Failure(call: "accept", code: errno) }
            try Descriptor(rawValue: accepted).setCloseOnExec()
            for fd in [dialled, accepted] { try Descriptor(rawValue: fd).setNoDelay() }
            return (dialled, accepted)
        } catch {
            close(dialled)
            throw error
        }
    }

    /// Sets a socket's SO_RCVBUF or SO_SNDBUF (the kernel raises it to its minimum).
    private static func setBuffer(_ fd: Int32, _ option: Int32, _ bytes: Int32) {
        var bytes = bytes
        _ = setsockopt(fd, SOL_SOCKET, option, &bytes, socklen_t(MemoryLayout<Int32>.size))
    }

    /// The local and remote ports of a connected socket.
    static func ports(_ fd: Int32) -> (local: Int, remote: Int) {
        var local = sockaddr_in()
        var remote = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let gotLocal = (try? withSocketAddress(&local) { getsockname(fd, $0, &length) == 0 }) ?? false
        length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let gotRemote = (try? withSocketAddress(&remote) { getpeername(fd, $0, &length) == 0 }) ?? false
        return (
            gotLocal ? Int(UInt16(bigEndian: local.sin_port)) : -1,
            gotRemote ? Int(UInt16(bigEndian: remote.sin_port)) : -1
        )
    }

    /// The inode that names a socket in /proc/self/fd ("socket:[inode]").
    static func inode(_ fd: Int32) -> UInt64 {
        var status = stat()
        return fstat(fd, &status) == 0 ? UInt64(status.st_ino) : 0
    }

    private static func withSocketAddress<R>(
        _ address: inout sockaddr_in, _ body: (UnsafeMutablePointer<sockaddr>) throws -> R
    ) throws -> R {
        try withUnsafeMutablePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0) }
        }
    }
}

/// One outer end of a spliced session (the client or the target), on a plain descriptor.
/// Every call blocks on a thread of its own (``Blocking``), never on the cooperative pool,
/// and gives up at its deadline.
final class Peer: Sendable {
    enum Failure: Error, Equatable {
        case timedOut
        case failed(String)
    }

    let fd: Int32
    let ports: (local: Int, remote: Int)
    private let closed = Atomic<Bool>(false)

    init(fd: Int32) {
        self.fd = fd
        self.ports = Loopback.ports(fd)
        _ = try? Descriptor(rawValue: fd).setNonBlocking()
    }

    /// Writes `count` bytes of `pattern` from `offset` on; `progress` (if given) counts what
    /// the kernel took so far. Stops early once `limit` (if given, read as it changes) is reached.
    func send(
        _ pattern: TestPattern, from offset: Int = 0, count: Int, progress: Counter? = nil, seconds: Double = 30
    ) async throws {
        try await Blocking.call {
            let deadline = Deadline(seconds: seconds)
            var sent = 0
            while sent < count {
                let result = pattern.withBytes(at: offset + sent, count: count - sent) { bytes in
                    Glibc.send(self.fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
                }
                if result > 0 {
                    sent += result
                    progress?.set(sent)
                } else if errno == EAGAIN {
                    try self.wait(for: Int16(POLLOUT), until: deadline)
                } else if errno != EINTR {
                    throw Failure.failed(SystemError.describe(errno))
                }
            }
        }
    }

    /// Writes `pattern` until `limit` bytes (a limit that may grow meanwhile) are out, then
    /// half-closes; `progress` counts what the kernel took.
    func send(_ pattern: TestPattern, upTo limit: Counter, progress: Counter, seconds: Double = 60) async throws {
        try await Blocking.call {
            let deadline = Deadline(seconds: seconds)
            var sent = 0
            while sent < limit.current {
                let result = pattern.withBytes(at: sent, count: limit.current - sent) { bytes in
                    Glibc.send(self.fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
                }
                if result > 0 {
                    sent += result
                    progress.set(sent)
                } else if errno == EAGAIN {
                    // Look at the limit now and then: it may have grown while the send blocked.
                    try? self.wait(for: Int16(POLLOUT), until: Deadline(seconds: 0.1))
                    guard !deadline.passed else { throw Failure.timedOut }
                } else if errno != EINTR {
                    throw Failure.failed(SystemError.describe(errno))
                }
            }
            guard shutdown(self.fd, Int32(SHUT_WR)) == 0 else { throw Failure.failed(SystemError.describe(errno)) }
        }
    }

    /// Writes `text`.
    func write(_ text: String) async throws {
        let bytes = Array(text.utf8)
        try await Blocking.call {
            let deadline = Deadline(seconds: 10)
            var sent = 0
            while sent < bytes.count {
                let result = bytes.withUnsafeBytes {
                    Glibc.send(self.fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL))
                }
                if result > 0 {
                    sent += result
                } else if errno == EAGAIN {
                    try self.wait(for: Int16(POLLOUT), until: deadline)
                } else if errno != EINTR {
                    throw Failure.failed(SystemError.describe(errno))
                }
            }
        }
    }

    /// Reads until `count` bytes have arrived or the stream ends, as text.
    func read(count: Int, seconds: Double = 10) async throws -> String {
        try await Blocking.call {
            let deadline = Deadline(seconds: seconds)
            var bytes = [UInt8](repeating: 0, count: count)
            var got = 0
            while got < count {
                let result = bytes.withUnsafeMutableBytes { recv(self.fd, $0.baseAddress! + got, count - got, 0) }
                if result > 0 {
                    got += result
                } else if result == 0 {
                    break
                } else if errno == EAGAIN {
                    try self.wait(for: Int16(POLLIN), until: deadline)
                } else if errno != EINTR {
                    throw Failure.failed(SystemError.describe(errno))
                }
            }
            return String(decoding: bytes[0..<got], as: UTF8.self)
        }
    }

    /// Reads the rest of the stream (or up to `count` bytes), checking every byte against
    /// `pattern` from `offset` on. Never throws: a failed or timed-out read is the result's `end`.
    func receive(_ pattern: TestPattern, from offset: Int = 0, count: Int? = nil, seconds: Double = 30) async
        -> Received
    {
        await Blocking.run {
            let deadline = Deadline(seconds: seconds)
            var received = Received(offset: offset)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 << 10, alignment: 16)
            defer { buffer.deallocate() }
            while true {
                let want = min(buffer.count, count.map { $0 - received.count } ?? buffer.count)
                guard want > 0 else {
                    received.end = .stoppedAtCount
                    return received
                }
                let result = recv(self.fd, buffer.baseAddress, want, 0)
                if result > 0 {
                    received.take(UnsafeRawBufferPointer(rebasing: buffer[0..<result]), of: pattern)
                } else if result == 0 {
                    received.end = .endOfStream
                    return received
                } else if errno == EAGAIN {
                    do {
                        try self.wait(for: Int16(POLLIN), until: deadline)
                    } catch {
                        received.end = .timedOut
                        return received
                    }
                } else if errno != EINTR {
                    received.end = .error(SystemError.describe(errno))
                    return received
                }
            }
        }
    }

    /// Shuts down the write side (the FIN goes out after every byte written before it).
    func finishWriting() throws {
        guard shutdown(self.fd, Int32(SHUT_WR)) == 0 else { throw Failure.failed(SystemError.describe(errno)) }
    }

    /// Resets the connection (SO_LINGER 0, then close): the other end reads ECONNRESET.
    func reset() {
        guard !self.closed.exchange(true, ordering: .relaxed) else { return }
        Descriptor(rawValue: self.fd).reset()
    }

    /// Closes the connection (a FIN, or a reset if unread bytes are left).
    func close() {
        guard !self.closed.exchange(true, ordering: .relaxed) else { return }
        Descriptor(rawValue: self.fd).close()
    }

    /// Waits until `events` are possible on the socket (or it failed); throws at the deadline.
    private func wait(for events: Int16, until deadline: Deadline) throws {
        var poller = pollfd(fd: self.fd, events: events, revents: 0)
        while true {
            let remaining = deadline.remainingMilliseconds
            guard remaining > 0 else { throw Failure.timedOut }
            let result = poll(&poller, 1, remaining)
            if result > 0 || (result < 0 && errno != EINTR) { return }
        }
    }
}

/// A point in time a blocking call gives up at.
struct Deadline {
    private let end: ContinuousClock.Instant

    init(seconds: Double) {
        self.end = .now + .milliseconds(Int(seconds * 1000))
    }

    var passed: Bool { ContinuousClock.now >= self.end }

    /// Milliseconds left, rounded up; 0 when passed.
    var remainingMilliseconds: Int32 {
        let left = self.end - .now
        guard left > .zero else { return 0 }
        return Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
    }
}

/// Runs blocking calls on a thread of their own, so that a test's blocked reads and writes
/// never hold the cooperative pool (two threads on this machine) the test's other tasks need.
enum Blocking {
    static func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            Thread { continuation.resume(returning: body()) }.start()
        }
    }

    /// `run` for a body that throws.
    static func call<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await self.run { () -> Result<T, any Error> in Result { try body() } }.get()
    }
}

/// A byte count that one thread updates and others read.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)

    var current: Int { self.value.load(ordering: .relaxed) }

    func set(_ value: Int) {
        self.value.store(value, ordering: .relaxed)
    }
}
