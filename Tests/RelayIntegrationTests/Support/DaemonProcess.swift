import Foundation
import Synchronization
import Testing

/// Where the built executables are: beside the test bundle, or `RELAY_BIN_DIR`.
enum Binaries {
    static var directory: String {
        if let dir = ProcessInfo.processInfo.environment["RELAY_BIN_DIR"] { return dir }
        var url = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.isExecutableFile(atPath: url.appendingPathComponent("relay-proxy").path) {
                return url.path
            }
        }
        return FileManager.default.currentDirectoryPath + "/.build/debug"
    }

    static func path(_ name: String) -> String { directory + "/" + name }
}

/// Errors of the harness itself, with what it was waiting for.
struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A daemon started as a real process, its stderr collected line by line so tests can
/// await log lines as readiness signals.
final class DaemonProcess: Sendable {
    /// A command that every process started in this task's scope runs through, its binary
    /// and arguments appended (`["/usr/sbin/ip", "netns", "exec", name]` starts daemons in
    /// a network namespace; `ip netns exec` execs the binary, so the pid stays the daemon's).
    @TaskLocal static var launcher: [String] = []

    let name: String
    let process: Process
    private let lines = Mutex<[String]>([])
    private let partial = Mutex<Data>(Data())
    /// Set once the stderr reader has seen end of stream (every line is in ``log``).
    private let drained = Atomic<Bool>(false)
    /// Signalled at every new log line, at the end of stderr and at exit.
    let changes = Changes()

    /// Starts `binary` (one of ours, or an absolute path) with `arguments` and `environment`
    /// added to the test's own; stdout is discarded, stderr is collected.
    init(_ binary: String, arguments: [String], name: String, environment: [String: String] = [:]) throws {
        self.name = name
        let process = Process()
        let executable = binary.hasPrefix("/") ? binary : Binaries.path(binary)
        if let launcher = Self.launcher.first {
            process.executableURL = URL(fileURLWithPath: launcher)
            process.arguments = Self.launcher.dropFirst() + [executable] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = arguments
        }
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        }
        let pipe = Pipe()
        process.standardError = pipe
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        self.process = process
        process.terminationHandler = { [changes] _ in changes.notify() }
        try process.run()
        // A thread of its own reads stderr from a duplicate of the pipe's read end, which
        // it alone closes at end of stream: no dispatch source can outlive its descriptor
        // when the Process and its Pipe go away first.
        let descriptor = dup(pipe.fileHandleForReading.fileDescriptor)
        try? pipe.fileHandleForReading.close()
        guard descriptor >= 0 else { throw HarnessError("dup of \(name)'s stderr pipe: errno \(errno)") }
        let reader = Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { break }
                self.absorb(Data(buffer[0..<count]))
            }
            close(descriptor)
            self.drained.store(true, ordering: .releasing)
            self.changes.notify()
        }
        reader.name = "stderr-\(name)"
        reader.start()
    }

    private func absorb(_ data: Data) {
        let complete: [String] = self.partial.withLock { buffer in
            buffer.append(data)
            var found: [String] = []
            while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                found.append(String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self))
                buffer.removeSubrange(buffer.startIndex...newline)
            }
            return found
        }
        if !complete.isEmpty {
            if ProcessInfo.processInfo.environment["RELAY_TEST_VERBOSE"] != nil {
                for line in complete { print("[\(self.name)] \(line)") }
            }
            self.lines.withLock { $0.append(contentsOf: complete) }
            self.changes.notify()
        }
    }

    var pid: Int32 { self.process.processIdentifier }
    var isRunning: Bool { self.process.isRunning }

    /// Every log line so far.
    var log: [String] { self.lines.withLock { $0 } }

    /// The log lines containing every one of `fragments`.
    func lines(containing fragments: String...) -> [String] {
        self.log.filter { line in fragments.allSatisfy { line.contains($0) } }
    }

    /// Waits for the `count`-th log line containing all `fragments`, and returns it.
    @discardableResult
    func waitForLine(containing fragments: String..., count: Int = 1, timeout: Duration = .seconds(10)) async throws
        -> String
    {
        var exited = false
        let found = await self.changes.wait(timeout: timeout) { () -> String? in
            let matching = self.log.filter { line in fragments.allSatisfy { line.contains($0) } }
            if matching.count >= count { return matching[count - 1] }
            // Its last lines are read before the exit counts as final.
            exited = !self.process.isRunning && self.drained.load(ordering: .acquiring)
            return exited ? "" : nil
        }
        if let found, !exited { return found }
        if exited {
            throw HarnessError(
                "\(self.name) exited (status \(self.process.terminationStatus)) before logging \(fragments); log:\n\(self.log.joined(separator: "\n"))"
            )
        }
        throw HarnessError(
            "\(self.name) did not log \(fragments) within \(timeout); log:\n\(self.log.suffix(30).joined(separator: "\n"))"
        )
    }

    /// The number of open file descriptors of the process (from /proc), pipes left out: the
    /// splice data plane keeps a bounded pool of empty pipes for the next sessions
    /// (RelayDataPlaneTests check that bound), which is no leak.
    var openDescriptors: Int { self.countDescriptors { !$0.hasPrefix("pipe:") } }

    /// The number of open sockets of the process: what a connection holds, without the
    /// event loops' epoll, eventfd and timerfd descriptors, which NIO creates lazily (a TLS
    /// handshake on a loop not used before adds three).
    var openSockets: Int { self.countDescriptors { $0.hasPrefix("socket:") } }

    private func countDescriptors(_ counted: (String) -> Bool) -> Int {
        guard let listing = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(self.pid)/fd") else {
            return -1
        }
        return listing.filter {
            let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(self.pid)/fd/\($0)")
            return target.map(counted) ?? false
        }.count
    }

    /// Resident memory in KiB (VmRSS from /proc).
    var residentKiB: Int {
        guard let status = try? String(contentsOfFile: "/proc/\(self.pid)/status", encoding: .utf8) else { return -1 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? -1
        }
        return -1
    }

    /// Waits until the descriptor count is at most `limit` (closes are asynchronous).
    /// With `socketsOnly`, counts `openSockets` instead.
    func waitForDescriptors(atMost limit: Int, socketsOnly: Bool = false, timeout: Duration = .seconds(5)) async throws
    {
        let deadline = ContinuousClock.now + timeout
        while (socketsOnly ? self.openSockets : self.openDescriptors) > limit {
            guard ContinuousClock.now < deadline else {
                let listing = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(self.pid)/fd")) ?? []
                let targets = listing.compactMap {
                    try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(self.pid)/fd/\($0)")
                }
                throw HarnessError(
                    "\(self.name) still has \(self.openDescriptors) descriptors open, expected at most \(limit): \(targets.sorted())"
                )
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Sends a signal.
    func signal(_ signal: Int32) {
        kill(self.pid, signal)
    }

    /// Waits for the process to exit and returns its status.
    @discardableResult
    func waitForExit(timeout: Duration = .seconds(10)) async throws -> Int32 {
        let exited = await self.changes.wait(timeout: timeout) { self.process.isRunning ? nil : true }
        guard exited != nil else { throw HarnessError("\(self.name) did not exit within \(timeout)") }
        // Its last lines may still be in the pipe; a child that inherited stderr may keep the
        // pipe open longer, so this wait is bounded.
        _ = await self.changes.wait(timeout: .seconds(2)) { self.drained.load(ordering: .acquiring) ? true : nil }
        return self.process.terminationStatus
    }

    /// Stops the process: SIGTERM, then SIGKILL if it lingers.
    func stop() async {
        guard self.process.isRunning else { return }
        self.signal(SIGTERM)
        if (try? await self.waitForExit(timeout: .seconds(5))) == nil {
            self.signal(SIGKILL)
            _ = try? await self.waitForExit(timeout: .seconds(5))
        }
    }
}
