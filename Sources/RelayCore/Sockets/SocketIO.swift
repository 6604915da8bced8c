import Dispatch
import Glibc
import NIOCore
import RelayDataPlane
import RelayProtocol

/// Why a socket operation on an owned descriptor failed.
public enum SocketIOError: Error, Sendable, CustomStringConvertible {
    /// The deadline passed first.
    case timedOut
    /// The socket was closed or handed on meanwhile, or the waiting task was cancelled.
    case closed
    /// A system call failed.
    case system(SystemError)

    public var description: String {
        switch self {
        case .timedOut: "timed out"
        case .closed: "connection closed"
        case .system(let error): SystemError.describe(error.code)
        }
    }
}

/// The async calls on descriptors the daemons own from birth: accept, dial, and the
/// one-line handshakes (`hello`, `attach`, `attached`) read and written on the descriptor
/// itself with the pure ``LineFramer``. Readiness comes from one shared ``ReadinessLoop``.
public enum SocketIO {
    /// The loop every handshake, dial and accept waits on; started on first use.
    public static let readiness: ReadinessLoop = {
        do {
            return try ReadinessLoop()
        } catch {
            fatalError("cannot start the readiness loop: \(error)")
        }
    }()

    /// The largest read a handshake makes at once: a control line and what follows it.
    static let handshakeReadSize = 16 << 10

    /// Waits for `interest` on `socket` until `deadline`; throws when it passed or the task
    /// was cancelled.
    static func wait(
        _ interest: ReadinessLoop.Interest, on descriptor: Descriptor, until deadline: ContinuousClock.Instant?
    ) async throws(SocketIOError) {
        switch await self.readiness.wait(for: interest, on: descriptor, until: deadline) {
        case .ready: return
        case .timedOut: throw .timedOut
        case .cancelled: throw .closed
        }
    }

    /// Connects to `address` within `timeout`, as ``Network/dial(_:timeout:group:tuning:role:)``
    /// does for NIO: `localhost` is the loopback address (127.0.0.1, then ::1) whatever
    /// `/etc/hosts` says; other names are resolved off the async threads. The socket gets
    /// TCP_NODELAY and `tuning` for `role`.
    public static func dial(
        _ address: HostPort, timeout: Duration, tuning: TCPTuning = TCPTuning(), role: TCPTuning.Role = .data
    ) async throws -> OwnedSocket {
        let deadline = ContinuousClock.now + timeout
        let candidates: [SocketAddress]
        if address.isLocalhost {
            candidates = [
                try SocketAddress(ipAddress: "127.0.0.1", port: address.port),
                try SocketAddress(ipAddress: "::1", port: address.port),
            ]
        } else if let literal = try? SocketAddress(ipAddress: address.host, port: address.port) {
            candidates = [literal]
        } else {
            candidates = [try await self.resolve(address)]
        }
        var firstError: (any Error)?
        for candidate in candidates {
            do {
                return try await self.connect(to: candidate, until: deadline, tuning: tuning, role: role)
            } catch {
                firstError = firstError ?? error
                if case SocketIOError.timedOut = error { break }
            }
        }
        throw firstError ?? SocketIOError.closed
    }

    /// Resolves a host name with getaddrinfo on a Dispatch thread (it blocks).
    static func resolve(_ address: HostPort) async throws -> SocketAddress {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(
                    with: Result { try SocketAddress.makeAddressResolvingHost(address.host, port: address.port) })
            }
        }
    }

    private static func connect(
        to address: SocketAddress, until deadline: ContinuousClock.Instant, tuning: TCPTuning, role: TCPTuning.Role
    ) async throws -> OwnedSocket {
        let family = address.protocol.rawValue
        let descriptor: Descriptor
        do {
            descriptor = try Descriptor.tcpSocket(family: family)
        } catch {
            throw SocketIOError.system(error)
        }
        do {
            try descriptor.setNoDelay()
            try tuning.apply(to: descriptor, role: role)
            let connected = try address.withSockAddr { pointer, length in
                try descriptor.startConnect(pointer, length: length)
            }
            // A loopback connect is often done by the time the call returns: look before
            // waiting, which costs two thread hops.
            if !connected && !descriptor.isWritableNow {
                try await self.wait(.writable, on: descriptor, until: deadline)
            }
            if !connected {
                let error = descriptor.takePendingError()
                if error != 0 { throw SocketIOError.system(SystemError(call: "connect", code: error)) }
            }
            return OwnedSocket(descriptor)
        } catch let error as SystemError {
            descriptor.close()
            throw SocketIOError.system(error)
        } catch {
            descriptor.close()
            throw error
        }
    }

    /// Writes all of `bytes` to `socket` before `deadline`.
    public static func write(
        _ bytes: ByteBuffer, to socket: OwnedSocket, until deadline: ContinuousClock.Instant?
    ) async throws(SocketIOError) {
        var offset = 0
        let count = bytes.readableBytes
        while offset < count {
            guard let descriptor = socket.descriptor else { throw .closed }
            let result = bytes.withUnsafeReadableBytes { raw in
                descriptor.send(UnsafeRawBufferPointer(rebasing: raw[offset...]))
            }
            switch result {
            case .bytes(let written): offset += written
            case .wouldBlock: try await self.wait(.writable, on: descriptor, until: deadline)
            case .endOfStream: throw .closed
            case .failed(let code): throw .system(SystemError(call: "send", code: code))
            }
        }
    }
}

/// Reads control lines from an owned socket during its handshake, then hands over what
/// arrived past the last line (S12), so that the data plane sends it first.
public struct HandshakeReader: Sendable {
    private var framer: LineFramer
    /// Whether bytes came already (the first ones are checked for a TLS record).
    private var started = false

    /// A reader that refuses lines longer than `maxLineBytes`.
    public init(maxLineBytes: Int = ProtocolLimits.maxLineBytes) {
        self.framer = LineFramer(maxLineBytes: maxLineBytes)
    }

    /// The next line decoded as a message, or nil at end of stream. Throws
    /// ``ProtocolError`` for a bad or over-long line, ``SocketIOError`` for the socket.
    public mutating func readMessage(
        from socket: OwnedSocket, until deadline: ContinuousClock.Instant?
    ) async throws -> ControlMessage? {
        guard let line = try await self.readLine(from: socket, until: deadline) else { return nil }
        return try ControlCodec.decode(line)
    }

    /// The next complete line, or nil at end of stream (a partial last line is dropped).
    public mutating func readLine(
        from socket: OwnedSocket, until deadline: ContinuousClock.Instant?
    ) async throws -> ByteBuffer? {
        while true {
            if let line = try self.framer.nextLine() { return line }
            guard let descriptor = socket.descriptor else { throw SocketIOError.closed }
            var chunk = ByteBuffer()
            var outcome = Descriptor.IOResult.wouldBlock
            chunk.writeWithUnsafeMutableBytes(minimumWritableBytes: SocketIO.handshakeReadSize) { raw in
                outcome = descriptor.receive(into: raw)
                if case .bytes(let count) = outcome { return count }
                return 0
            }
            switch outcome {
            case .bytes:
                if !self.started {
                    self.started = true
                    if TLSFailure.looksLikeTLS(chunk) { throw TLSFailure.plaintextSide }
                }
                self.framer.append(chunk)
            case .endOfStream: return nil
            case .wouldBlock: try await SocketIO.wait(.readable, on: descriptor, until: deadline)
            case .failed(let code): throw SocketIOError.system(SystemError(call: "recv", code: code))
            }
        }
    }

    /// What arrived past the last line taken, leaving the reader empty.
    public mutating func takeRemainder() -> [UInt8] {
        guard let remainder = self.framer.takeRemainder() else { return [] }
        return Array(remainder.readableBytesView)
    }
}
