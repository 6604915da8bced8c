import Foundation
import Glibc
import Synchronization

/// The test's own `NOTIFY_SOCKET`: a Unix datagram socket in a temporary directory that
/// collects every sd_notify(3) message a daemon sends, with the time it arrived, so tests
/// can await `READY=1` and friends and check their order and spacing.
final class NotifyListener: Sendable {
    /// One datagram: its assignments (`READY=1`, `STATUS=…`) and when it arrived.
    struct Message: Sendable, CustomStringConvertible {
        let at: ContinuousClock.Instant
        let assignments: [String]

        /// Whether the datagram carries exactly this assignment, e.g. `READY=1`.
        func has(_ assignment: String) -> Bool { self.assignments.contains(assignment) }

        /// The value of `KEY=` in this datagram, if present.
        func value(_ key: String) -> String? {
            self.assignments.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
        }

        var description: String { self.assignments.joined(separator: "\\n") }
    }

    /// The socket's path, for `NOTIFY_SOCKET`.
    let path: String
    private let directory: String
    private let descriptor: Int32
    private let received = Mutex<[Message]>([])
    private let stopped = Atomic<Bool>(false)
    private let finished = Mutex<Bool>(false)
    /// Signalled at every message received and when the receiver stops.
    private let changes = Changes()

    init() throws {
        self.directory = "/tmp/relay-notify-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        self.path = self.directory + "/notify.sock"
        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw HarnessError("socket(AF_UNIX, SOCK_DGRAM): errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(self.path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else {
            Glibc.close(descriptor)
            throw HarnessError("bind(\(self.path)): errno \(errno)")
        }
        // Wake up now and then to notice close().
        var timeout = timeval(tv_sec: 0, tv_usec: 50_000)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        self.descriptor = descriptor
        let thread = Thread { [self] in self.receiveLoop() }
        thread.name = "NotifyListener"
        thread.start()
    }

    private func receiveLoop() {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !self.stopped.load(ordering: .relaxed) {
            let count = buffer.withUnsafeMutableBytes { recv(self.descriptor, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { continue }
            let text = String(decoding: buffer[0..<count], as: UTF8.self)
            let message = Message(
                at: .now, assignments: text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init))
            if ProcessInfo.processInfo.environment["RELAY_TEST_VERBOSE"] != nil { print("[notify] \(message)") }
            self.received.withLock { $0.append(message) }
            self.changes.notify()
        }
        Glibc.close(self.descriptor)
        self.finished.withLock { $0 = true }
        self.changes.notify()
    }

    /// Every message so far, oldest first.
    var messages: [Message] { self.received.withLock { $0 } }

    /// The messages carrying `assignment` (e.g. `WATCHDOG=1`).
    func messages(with assignment: String) -> [Message] {
        self.messages.filter { $0.has(assignment) }
    }

    /// Waits for the first message at index `from` or later that satisfies `matches`;
    /// returns its index and the message.
    @discardableResult
    func waitFor(
        _ what: String,
        from: Int = 0,
        timeout: Duration = .seconds(10),
        matching matches: (Message) -> Bool
    ) async throws -> (index: Int, message: Message) {
        let found = await self.changes.wait(timeout: timeout) { () -> (Int, Message)? in
            let all = self.messages
            guard from < all.count, let index = all[from...].firstIndex(where: matches) else { return nil }
            return (index, all[index])
        }
        guard let found else {
            throw HarnessError(
                "no sd_notify message \(what) within \(timeout); received: \(self.messages.map(\.description))")
        }
        return found
    }

    /// Waits for a message carrying exactly `assignment`, e.g. `READY=1`.
    @discardableResult
    func waitFor(_ assignment: String, from: Int = 0, timeout: Duration = .seconds(10)) async throws -> (
        index: Int, message: Message
    ) {
        try await self.waitFor(assignment, from: from, timeout: timeout) { $0.has(assignment) }
    }

    /// Waits for a `STATUS=` line containing `fragment`.
    @discardableResult
    func waitForStatus(containing fragment: String, from: Int = 0, timeout: Duration = .seconds(10)) async throws
        -> String
    {
        let (_, message) = try await self.waitFor("STATUS=…\(fragment)…", from: from, timeout: timeout) {
            $0.value("STATUS")?.contains(fragment) == true
        }
        return message.value("STATUS")!
    }

    /// Stops receiving and removes the socket.
    func close() async {
        self.stopped.store(true, ordering: .relaxed)
        _ = await self.changes.wait(timeout: .seconds(10)) { self.finished.withLock { $0 } ? true : nil }
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}
