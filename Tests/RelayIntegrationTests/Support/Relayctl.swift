import Foundation
import Testing

/// The built `relayctl`, run as a process the way an operator runs it.
enum Relayctl {
    /// What one run printed and how it exited.
    struct Result: CustomStringConvertible {
        let status: Int32
        let stdout: String
        let stderr: String

        var description: String { "exit \(self.status)\nstdout:\n\(self.stdout)\nstderr:\n\(self.stderr)" }

        /// The stdout, decoded as JSON.
        func json() throws -> Any {
            try JSONSerialization.jsonObject(with: Data(self.stdout.utf8))
        }

        /// Whether stderr is exactly one line starting with `relayctl: ` and stdout is empty.
        var isOneErrorLine: Bool {
            self.stdout.isEmpty && self.stderr.hasPrefix("relayctl: ") && self.stderr.hasSuffix("\n")
                && self.stderr.filter { $0 == "\n" }.count == 1
        }
    }

    /// Runs `relayctl arguments…` (or another built `binary`), optionally as another user
    /// (`setpriv` arguments first), and returns once it exited; fails the test after `limit`.
    static func run(
        _ arguments: [String], binary: String = "relayctl", asUser prefix: [String] = [],
        limit: Duration = .seconds(15)
    ) async throws -> Result {
        let process = Process()
        if prefix.isEmpty {
            process.executableURL = URL(fileURLWithPath: Binaries.path(binary))
            process.arguments = arguments
        } else {
            process.executableURL = URL(fileURLWithPath: prefix[0])
            process.arguments = Array(prefix.dropFirst()) + [Binaries.path(binary)] + arguments
        }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        var environment = ProcessInfo.processInfo.environment
        environment["NO_COLOR"] = "1"
        process.environment = environment
        let exited = Changes()
        process.terminationHandler = { _ in exited.notify() }
        try process.run()
        async let stdout = Self.readToEnd(out.fileHandleForReading)
        async let stderr = Self.readToEnd(err.fileHandleForReading)
        if await exited.wait(timeout: limit, until: { process.isRunning ? nil : true }) == nil {
            process.terminate()
            throw HarnessError("\(binary) \(arguments) did not exit within \(limit)")
        }
        return Result(
            status: process.terminationStatus,
            stdout: String(decoding: await stdout, as: UTF8.self),
            stderr: String(decoding: await stderr, as: UTF8.self)
        )
    }

    /// Runs relayctl and expects exit 0; returns stdout.
    static func ok(_ arguments: [String]) async throws -> String {
        let result = try await self.run(arguments)
        guard result.status == 0 else { throw HarnessError("relayctl \(arguments) failed: \(result)") }
        return result.stdout
    }

    /// Runs `relayctl --json arguments…` and expects exit 0; returns the decoded document.
    static func json(_ arguments: [String]) async throws -> Any {
        let result = try await self.run(["--json"] + arguments)
        guard result.status == 0 else { throw HarnessError("relayctl --json \(arguments) failed: \(result)") }
        return try result.json()
    }

    /// Reads `handle` to its end on a Dispatch thread: a blocking read on a task would hold
    /// one of the few threads of Swift's cooperative pool (two on a 2-core machine) until the
    /// process exits, and two such reads starve the timeout that is to stop a process that
    /// does not exit.
    private static func readToEnd(_ handle: FileHandle) async -> Data {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: handle.readDataToEndOfFile()) }
        }
    }
}

/// A raw Unix stream socket, for feeding a control socket bytes relayctl never sends, and
/// for sockets that misbehave (a stale file, one that never answers).
final class UnixSocket {
    let descriptor: Int32

    private init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    deinit { close(self.descriptor) }

    private static func address(_ path: String) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8)
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    /// Connects to `path`, with receive timeouts of `timeout`.
    static func connect(_ path: String, timeout: Double = 5) throws -> UnixSocket {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = self.address(path)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else {
            close(descriptor)
            throw HarnessError("cannot connect to \(path): errno \(errno)")
        }
        var limit = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        return UnixSocket(descriptor: descriptor)
    }

    /// Binds (and, if `listening`, listens on) `path`; the socket never accepts.
    static func bind(_ path: String, listening: Bool) throws -> UnixSocket {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = self.address(path)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0, !listening || listen(descriptor, 16) == 0 else {
            close(descriptor)
            throw HarnessError("cannot bind \(path): errno \(errno)")
        }
        return UnixSocket(descriptor: descriptor)
    }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes {
                Glibc.send(self.descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            guard sent > 0 else { throw HarnessError("send failed: errno \(errno)") }
            offset += sent
        }
    }

    /// Reads one line (without the newline), or nil at end of stream.
    func readLine() throws -> String? {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            let count = recv(self.descriptor, &byte, 1, 0)
            if count == 0 { return line.isEmpty ? nil : String(decoding: line, as: UTF8.self) }
            guard count > 0 else { throw HarnessError("recv failed: errno \(errno)") }
            if byte == UInt8(ascii: "\n") { return String(decoding: line, as: UTF8.self) }
            line.append(byte)
        }
    }
}

/// Fetches `http://host:port/path` with a bare HTTP/1.0 request; returns the status line and body.
func httpGet(host: String = "127.0.0.1", port: Int, path: String) async throws -> (status: String, body: String) {
    let connection = try await TestClient.connect(port: port, host: host)
    let raw: String = try await connection.executeThenClose { inbound, outbound in
        try await outbound.write(.init(string: "GET \(path) HTTP/1.0\r\nHost: \(host)\r\n\r\n"))
        var text = ""
        for try await chunk in inbound { text += String(buffer: chunk) }
        return text
    }
    let parts = raw.components(separatedBy: "\r\n\r\n")
    return (parts.first?.components(separatedBy: "\r\n").first ?? "", parts.dropFirst().joined(separator: "\r\n\r\n"))
}

/// The value of the sample `name{labels}` in a Prometheus text, with the labels given in
/// any order; nil if absent.
func metricValue(_ text: String, _ name: String, _ labels: [String: String]) -> Double? {
    for line in text.split(separator: "\n") where line.hasPrefix(name + "{") {
        guard let close = line.firstIndex(of: "}") else { continue }
        let labelText = line[line.index(line.startIndex, offsetBy: name.count + 1)..<close]
        var found: [String: String] = [:]
        for pair in labelText.split(separator: ",") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard kv.count == 2 else { continue }
            found[String(kv[0])] = String(kv[1]).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        }
        if labels.allSatisfy({ found[$0.key] == $0.value }) {
            return Double(line[line.index(after: close)...].trimmingCharacters(in: .whitespaces))
        }
    }
    return nil

}
