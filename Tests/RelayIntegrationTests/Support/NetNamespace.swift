import Foundation
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// A network namespace of its own for one test, with only `lo` (up), so that packets of
/// the relay's connections can be dropped with nftables without touching the host's.
///
/// Everything of the test lives inside: the daemons are started through
/// `ip netns exec NAME` (``DaemonProcess/launcher``, set by ``with(_:)``, so ``RelayFixture``
/// works unchanged; `ip` execs the daemon, so the process's pid is the daemon's), and the
/// test's own targets and clients use sockets created by a short-lived thread that entered
/// the namespace with `setns(2)` (``boundSocket()``, ``connectedSocket(port:)``). A socket
/// belongs to the namespace it was created in for its whole life, whichever thread uses
/// it later, so NIO's event loops (which stay in the host's namespace) drive them as usual.
/// Only that one thread ever changes namespace, and it exits right after. The daemons'
/// Unix control sockets live in the file system, which namespaces do not separate, so
/// `relayctl` works from outside.
final class NetNamespace: Sendable {
    static let ip = "/usr/sbin/ip"
    static let nft: String? = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }
    /// The nftables table the faults are rules of; deleting it lifts every fault.
    static let table = "relayfault"

    let name: String

    private init(name: String) {
        self.name = name
    }

    /// Why namespace tests cannot run here, or nil when they can (root, `ip`, `nft`, `setns`).
    static var unavailableReason: String? {
        if geteuid() != 0 { return "not running as root (network namespaces and nftables need it)" }
        if !FileManager.default.isExecutableFile(atPath: Self.ip) {
            return "\(Self.ip) is missing (apt-get install -y iproute2)"
        }
        if Self.nft == nil { return "nft is missing (apt-get install -y nftables)" }
        if Self.setnsFunction() == nil { return "setns(2) is not available" }
        return nil
    }

    /// Whether namespace tests can run here; prints the reason when they cannot.
    static func isAvailable() -> Bool {
        guard let reason = Self.unavailableReason else { return true }
        print("skipped: network fault tests need root, ip and nft: \(reason)")
        return false
    }

    /// Runs `body` in a fresh namespace, starting every daemon of the task inside it, and
    /// deletes the namespace afterwards, also when `body` throws.
    static func with<T>(_ body: (NetNamespace) async throws -> T) async throws -> T {
        let namespace = NetNamespace(name: "relay-" + UUID().uuidString.prefix(8).lowercased())
        try await Self.run([Self.ip, "netns", "add", namespace.name])
        do {
            try await Self.run([Self.ip, "-n", namespace.name, "link", "set", "lo", "up"])
            let result = try await DaemonProcess.$launcher.withValue([Self.ip, "netns", "exec", namespace.name]) {
                try await body(namespace)
            }
            await namespace.delete()
            return result
        } catch {
            await namespace.delete()
            throw error
        }
    }

    private func delete() async {
        do {
            try await Self.run([Self.ip, "netns", "delete", self.name])
        } catch {
            print("warning: could not delete network namespace \(self.name): \(error)")
        }
    }

    // MARK: Faults

    /// Drops every packet leaving any socket of the namespace that matches one of `rules`
    /// (nftables rule bodies such as `tcp sport 4242`): on loopback every packet goes out
    /// through the output hook, so a rule on a port silences that connection both ways.
    /// Each rule counts what it dropped (``droppedPackets()``). All rules come into force
    /// at once (one nft transaction), by the time this returns.
    func drop(_ rules: [String]) async throws {
        let commands =
            [
                "add table inet \(Self.table)",
                "add chain inet \(Self.table) out { type filter hook output priority 0 ; policy accept ; }",
            ] + rules.map { "add rule inet \(Self.table) out \($0) counter drop" }
        try await self.nft(commands.joined(separator: "; "))
    }

    /// Drops every packet of the TCP connections one of whose ends has local or remote port `port`.
    func dropConnection(port: Int, also rules: [String] = []) async throws {
        try await self.drop(["tcp sport \(port)", "tcp dport \(port)"] + rules)
    }

    /// Packets dropped so far by the rules of ``drop(_:)``.
    func droppedPackets() async throws -> Int {
        let listing = try await self.nft("list table inet \(Self.table)")
        var total = 0
        for line in listing.split(separator: "\n") {
            let words = line.split(separator: " ")
            if let index = words.firstIndex(of: "packets"), index + 1 < words.count {
                total += Int(words[index + 1]) ?? 0
            }
        }
        return total
    }

    /// Lifts every fault (deletes the table).
    func heal() async throws {
        try await self.nft("delete table inet \(Self.table)")
    }

    @discardableResult
    private func nft(_ command: String) async throws -> String {
        guard let nft = Self.nft else { throw HarnessError("nft is missing") }
        return try await Self.run([Self.ip, "netns", "exec", self.name, nft, command])
    }

    /// Runs a command to completion and returns its stdout; throws with its stderr on failure.
    @discardableResult
    static func run(_ arguments: [String], limit: Duration = .seconds(10)) async throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        async let stdout = Task.detached { out.fileHandleForReading.readDataToEndOfFile() }.value
        async let stderr = Task.detached { err.fileHandleForReading.readDataToEndOfFile() }.value
        let deadline = ContinuousClock.now + limit
        while process.isRunning {
            guard ContinuousClock.now < deadline else {
                process.terminate()
                throw HarnessError("\(arguments) did not exit within \(limit)")
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        let output = String(decoding: await stdout, as: UTF8.self)
        let errors = String(decoding: await stderr, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw HarnessError("\(arguments.joined(separator: " ")) exited \(process.terminationStatus): \(errors)")
        }
        return output
    }

    // MARK: Sockets inside

    /// A TCP socket bound to 127.0.0.1 with an OS-chosen port inside the namespace, not yet
    /// listening (for ``TargetServer/start(_:boundSocket:)``).
    func boundSocket() async throws -> NIOBSDSocket.Handle {
        try await self.inside {
            let fd = try Self.tcpSocket()
            var one: CInt = 1
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
            var address = Self.loopback(port: 0)
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard result == 0 else {
                let code = errno
                close(fd)
                throw HarnessError("bind in \(self.name): errno \(code)")
            }
            return fd
        }
    }

    /// A TCP socket connected to 127.0.0.1:`port` inside the namespace (for
    /// ``TestClient/connect(socket:)``).
    func connectedSocket(port: Int) async throws -> NIOBSDSocket.Handle {
        try await self.inside {
            let fd = try Self.tcpSocket()
            var address = Self.loopback(port: port)
            var result: CInt
            repeat {
                result = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
            } while result != 0 && errno == EINTR
            guard result == 0 else {
                let code = errno
                close(fd)
                throw HarnessError("connect to 127.0.0.1:\(port) in \(self.name): errno \(code)")
            }
            return fd
        }
    }

    /// A target server listening inside the namespace.
    func startTarget(_ behaviour: TargetServer.Behaviour) async throws -> TargetServer {
        try await TargetServer.start(behaviour, boundSocket: try await self.boundSocket())
    }

    /// A client connection to 127.0.0.1:`port` inside the namespace.
    func connect(port: Int) async throws -> TestClient.Connection {
        try await TestClient.connect(socket: try await self.connectedSocket(port: port))
    }

    /// Sends `request`, half-closes, and returns everything received until the server
    /// closes, over a connection made inside the namespace.
    func exchange(port: Int, request: [UInt8]) async throws -> [UInt8] {
        let connection = try await self.connect(port: port)
        return try await connection.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(bytes: request))
            outbound.finish()
            var reply: [UInt8] = []
            for try await chunk in inbound { reply += chunk.readableBytesView }
            return reply
        }
    }

    /// Runs `body` on a new thread that first enters the namespace; the thread ends with it.
    private func inside<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        let path = "/var/run/netns/" + self.name
        return try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                continuation.resume(
                    with: Result {
                        guard let setns = Self.setnsFunction() else { throw HarnessError("setns(2) is not available") }
                        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
                        guard descriptor >= 0 else { throw HarnessError("open \(path): errno \(errno)") }
                        defer { close(descriptor) }
                        guard setns(descriptor, Self.cloneNewNet) == 0 else {
                            throw HarnessError("setns \(path): errno \(errno)")
                        }
                        return try body()
                    })
            }
            thread.name = "netns-\(self.name)"
            thread.start()
        }
    }

    /// `CLONE_NEWNET` (glibc exports it, and `setns`, only under `_GNU_SOURCE`).
    private static let cloneNewNet: CInt = 0x4000_0000

    private typealias SetnsFunction = @convention(c) (CInt, CInt) -> CInt

    private static func setnsFunction() -> SetnsFunction? {
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "setns") else { return nil }
        return unsafeBitCast(symbol, to: SetnsFunction.self)
    }

    private static func tcpSocket() throws -> CInt {
        let fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket: errno \(errno)") }
        return fd
    }

    private static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port)).bigEndian
        address.sin_addr.s_addr = in_addr_t(0x7F00_0001).bigEndian
        return address
    }
}
