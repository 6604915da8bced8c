import Foundation

/// The bytes Linux holds for TCP sockets, from `/proc/net/tcp`: per socket `tx_queue`
/// (written, not yet acknowledged by the peer) and `rx_queue` (received, not yet read).
enum KernelQueues {
    enum Failure: Error {
        case noSuchSocket(local: Int, remote: Int)
    }

    /// The queued bytes of each socket, given as its (local, remote) ports on 127.0.0.1: so
    /// sockets the test holds no handle on (a data plane's) are measured too.
    static func bytes(of sockets: [(local: Int, remote: Int)]) throws -> [Int] {
        // Read to the end: the kernel hands this file out a page per read.
        let data = FileHandle(forReadingAtPath: "/proc/net/tcp")?.readDataToEndOfFile() ?? Data()
        var queued: [String: Int] = [:]
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ")
            guard fields.count > 4, fields[1].hasPrefix(Self.loopback), fields[2].hasPrefix(Self.loopback) else {
                continue
            }
            let queues = fields[4].split(separator: ":").compactMap { Int($0, radix: 16) }
            guard queues.count == 2 else { continue }
            queued["\(Self.port(fields[1])):\(Self.port(fields[2]))"] = queues[0] + queues[1]
        }
        return try sockets.map { socket in
            guard let bytes = queued["\(socket.local):\(socket.remote)"] else {
                throw Failure.noSuchSocket(local: socket.local, remote: socket.remote)
            }
            return bytes
        }
    }

    /// 127.0.0.1 as `/proc/net/tcp` writes it (the address in host byte order, little-endian here).
    private static let loopback = "0100007F:"

    /// The port of an address as `/proc/net/tcp` writes it (`0100007F:1F90`).
    private static func port(_ address: Substring) -> Int {
        address.split(separator: ":").last.flatMap { Int($0, radix: 16) } ?? -1
    }
}
