import Foundation
import Synchronization

/// A Unix socket at `path` that answers every request line with one fixed line, as a daemon's
/// control socket would: an impostor planted by a local user, or a daemon saying odd things.
final class FakeControlSocket: Sendable {
    let path: String
    private let descriptor: Int32
    /// How many connections it accepted.
    let stats = Stats()

    final class Stats: Sendable {
        let accepted = Atomic<Int>(0)
    }

    init(path: String, answer: String) throws {
        self.path = path
        unlink(path)
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw HarnessError("socket: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0, listen(descriptor, 8) == 0 else {
            Glibc.close(descriptor)
            throw HarnessError("bind/listen \(path): errno \(errno)")
        }
        self.descriptor = descriptor
        let line = Array((answer + "\n").utf8)
        let stats = self.stats
        Thread.detachNewThread {
            while true {
                let connection = accept(descriptor, nil, nil)
                if connection < 0 { return }
                stats.accepted.add(1, ordering: .relaxed)
                var buffer = [UInt8](repeating: 0, count: 4096)
                var received: [UInt8] = []
                while !received.contains(UInt8(ascii: "\n")) {
                    let count = recv(connection, &buffer, buffer.count, 0)
                    if count <= 0 { break }
                    received += buffer[0..<count]
                }
                _ = line.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                Glibc.close(connection)
            }
        }
    }

    /// Stops accepting (the accept loop ends) and removes the socket file.
    func close() {
        shutdown(self.descriptor, Int32(SHUT_RDWR))
        Glibc.close(self.descriptor)
        unlink(self.path)
    }
}
