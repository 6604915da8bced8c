import FoundationEssentials
import Glibc
import RelayControl
import RelaySupport

/// A blocking client of a daemon's control socket: one request, one response line.
struct ControlClient {
    /// The default sockets, tried in this order when `--socket` is not given.
    static let defaultSockets = ["/run/relay/proxy.sock", "/run/relay/agent.sock"]

    let path: String
    let timeout: Double

    /// The socket to use: the one given, else the proxy's if present, else the agent's.
    static func resolve(_ given: String?) -> String {
        if let given { return given }
        return Self.defaultSockets.first { FileManager.default.fileExists(atPath: $0) } ?? Self.defaultSockets[0]
    }

    /// Which daemon a socket path probably belongs to, for error messages.
    var daemonName: String {
        let name = PathString.lastComponent(of: self.path)
        if name.contains("agent") { return "relay-agent" }
        if name.contains("proxy") { return "relay-proxy" }
        return "relay-proxy or relay-agent"
    }

    /// Sends `command` and decodes the result as `Result`; every failure is a ``CtlError``.
    func call<Result: Decodable>(
        _ command: String, args: [String: String]? = nil, as type: Result.Type
    ) throws(CtlError) -> (ok: Bool, result: Result?, error: ControlFailure?) {
        let descriptor = try self.connect()
        defer { close(descriptor) }
        var line = (try? ControlJSON.encoder().encode(ControlRequest(id: 1, command: command, args: args))) ?? Data()
        line.append(UInt8(ascii: "\n"))
        try self.send(line, on: descriptor)
        let answer = try self.receiveLine(on: descriptor)
        let response: ControlResponse<Result>
        do {
            response = try ControlJSON.decoder().decode(ControlResponse<Result>.self, from: answer)
        } catch {
            throw CtlError(
                "unexpected answer on \(self.path) (is it a relay daemon of version \(RelayVersion.current)?)",
                status: ExitStatus.badAnswer)
        }
        if response.ok && response.result == nil {
            throw CtlError("\(self.daemonName) on \(self.path) answered without a result", status: ExitStatus.badAnswer)
        }
        return (response.ok, response.result, response.error)
    }

    private func connect() throws(CtlError) -> Int32 {
        guard var address = SocketFile.address(self.path) else {
            throw CtlError("cannot connect to \(self.path): path too long for a Unix socket", status: ExitStatus.usage)
        }
        // Root believes only a socket no local user could have planted (see SocketTrust).
        if geteuid() == 0, let problem = SocketTrust.clientProblem(self.path) {
            throw CtlError(problem, status: ExitStatus.permissionDenied)
        }
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else {
            throw CtlError("cannot create a socket: \(Self.reason(errno))", status: ExitStatus.failure)
        }
        var limit = Self.timeval(self.timeout)
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else {
            let code = errno
            close(descriptor)
            throw self.connectError(code)
        }
        return descriptor
    }

    private func connectError(_ code: Int32) -> CtlError {
        let prefix = "cannot connect to \(self.path)"
        switch code {
        case ENOENT:
            return CtlError("\(prefix): no such file (is \(self.daemonName) running?)", status: ExitStatus.notRunning)
        case ECONNREFUSED:
            return CtlError(
                "\(prefix): connection refused (a stale socket: is \(self.daemonName) running?)",
                status: ExitStatus.notRunning)
        case EACCES, EPERM:
            return CtlError(
                "\(prefix): permission denied (run as root or as a member of the socket's group)",
                status: ExitStatus.permissionDenied)
        case EAGAIN, EWOULDBLOCK, ETIMEDOUT, EINPROGRESS:
            return CtlError(
                "\(prefix): timed out after \(Self.seconds(self.timeout)) (is \(self.daemonName) overloaded?)",
                status: ExitStatus.timeout)
        case ENOTSOCK:
            return CtlError("\(prefix): not a socket (check --socket)", status: ExitStatus.notRunning)
        default:
            return CtlError("\(prefix): \(Self.reason(code))", status: ExitStatus.failure)
        }
    }

    private func send(_ data: Data, on descriptor: Int32) throws(CtlError) {
        var offset = 0
        while offset < data.count {
            let sent = data.withUnsafeBytes { raw in
                Glibc.send(descriptor, raw.baseAddress! + offset, data.count - offset, Int32(MSG_NOSIGNAL))
            }
            if sent < 0 {
                if errno == EINTR { continue }
                throw self.transferError(errno, doing: "sending to")
            }
            offset += sent
        }
    }

    private func receiveLine(on descriptor: Int32) throws(CtlError) -> Data {
        let deadline = Date() + self.timeout
        var received = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            if let newline = received.firstIndex(of: UInt8(ascii: "\n")) { return received[..<newline] }
            guard received.count <= ControlSocketLimits.maxResponseBytes else {
                throw CtlError("the answer on \(self.path) is too large", status: ExitStatus.badAnswer)
            }
            let remaining = deadline.timeIntervalSinceNow
            guard remaining > 0 else { throw self.transferError(EAGAIN, doing: "waiting for") }
            var limit = Self.timeval(remaining)
            setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            let count = recv(descriptor, &chunk, chunk.count, 0)
            if count < 0 {
                if errno == EINTR { continue }
                throw self.transferError(errno, doing: "waiting for")
            }
            if count == 0 {
                throw CtlError(
                    "\(self.daemonName) closed \(self.path) without answering (is it shutting down?)",
                    status: ExitStatus.badAnswer)
            }
            received.append(contentsOf: chunk[0..<count])
        }
    }

    private func transferError(_ code: Int32, doing what: String) -> CtlError {
        if code == EAGAIN || code == EWOULDBLOCK || code == ETIMEDOUT {
            return CtlError(
                "no answer on \(self.path) within \(Self.seconds(self.timeout)) (is \(self.daemonName) stuck or overloaded?)",
                status: ExitStatus.timeout)
        }
        return CtlError("error \(what) \(self.path): \(Self.reason(code))", status: ExitStatus.failure)
    }

    private static func timeval(_ seconds: Double) -> timeval {
        let clamped = max(seconds, 0.001)
        return Glibc.timeval(
            tv_sec: Int(clamped), tv_usec: Int((clamped - clamped.rounded(.down)) * 1_000_000))
    }

    private static func seconds(_ value: Double) -> String {
        value == value.rounded() ? "\(Int(value))s" : "\(value)s"
    }

    private static func reason(_ code: Int32) -> String {
        String(cString: strerror(code)).lowercased()
    }
}
