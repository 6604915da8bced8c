import FoundationEssentials
import Glibc
import Logging
import NIOCore
import NIOPosix
import RelayControl
import RelayProtocol
import ServiceLifecycle
import Synchronization

/// A daemon's control socket: a Unix stream socket serving newline-delimited JSON requests
/// (``ControlRequest``), one response line each (see docs/protocol.md).
///
/// Bind it with ``bind(path:group:logger:handler:)`` before the daemon reports readiness,
/// then run it as a `Service`: it serves until graceful shutdown and removes its socket file.
/// A bad request never ends the daemon: garbage is answered with an error, an over-long
/// line with an error and a close.
public final class ControlSocketServer: Service, Sendable {
    /// Answers one request.
    public typealias Handler = @Sendable (ControlRequest) async -> ControlReply

    /// The socket's path.
    public let path: String
    private let listener: NIOAsyncChannel<AcceptedConnection, Never>
    private let logger: Logger
    private let handler: Handler
    private let admission = Mutex(ControlSocketAdmission())
    private let limits: LimitCounters

    private init(
        path: String,
        listener: NIOAsyncChannel<AcceptedConnection, Never>,
        logger: Logger,
        limits: LimitCounters,
        handler: @escaping Handler
    ) {
        self.path = path
        self.listener = listener
        self.logger = logger
        self.limits = limits
        self.handler = handler
        limits.declare([
            (ControlSocketAdmission.totalName, Double(ControlSocketLimits.maxConnections)),
            (ControlSocketAdmission.perUserName, Double(ControlSocketLimits.maxConnectionsPerUser)),
        ])
    }

    /// Prepares the path and its directory (see ``SocketFile/prepare(_:)``), binds the socket,
    /// created 0660 with the daemon's group by bind(2) itself under umask 0117, and logs it.
    /// Throws a one-line ``DaemonError``.
    public static func bind(
        path: String,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger,
        limits: LimitCounters = LimitCounters(),
        handler: @escaping Handler
    ) async throws -> ControlSocketServer {
        if let repaired = try SocketFile.prepare(path) { logger.warning("\(repaired)") }
        // No moment with a wider mode than 0660: the umask applies to bind(2) itself.
        let previous = umask(0o117)
        let listener: NIOAsyncChannel<AcceptedConnection, Never>
        do {
            listener = try await ServerBootstrap(group: group)
                .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false) { channel in
                    Network.wrapAccepted(channel, configuration: .init())
                }
            umask(previous)
        } catch {
            umask(previous)
            throw DaemonError("cannot listen on the control socket \(path): \(Network.describe(error))")
        }
        logger.info("control socket listening", metadata: ["path": "\(path)"])
        return ControlSocketServer(path: path, listener: listener, logger: logger, limits: limits, handler: handler)
    }

    /// Serves until graceful shutdown or cancellation, then closes and removes the socket.
    public func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask {
                try? await gracefulShutdown()
                self.listener.channel.close(promise: nil)
            }
            do {
                try await self.listener.executeThenClose { inbound in
                    for try await accepted in inbound {
                        guard let connection = accepted.take() else { continue }
                        // Who connects (SO_PEERCRED): an unknown peer counts as another user.
                        let uid = await Self.peerUID(connection.channel) ?? uid_t.max
                        if let refusal = self.admission.withLock({ $0.admit(uid: uid) }) {
                            let name =
                                refusal == .perUser
                                ? ControlSocketAdmission.perUserName : ControlSocketAdmission.totalName
                            self.limits.hit(
                                name, source: refusal == .perUser ? "uid \(uid)" : nil, logger: self.logger,
                                "control connection refused: \(refusal == .perUser ? "this user holds \(ControlSocketLimits.maxConnectionsPerUser) connections" : "\(ControlSocketLimits.maxConnections) connections are open (the last \(ControlSocketLimits.reservedForOperator) kept for root)")",
                                metadata: ["uid": "\(uid)"])
                            try? await connection.executeThenClose { _, _ in }
                            continue
                        }
                        group.addTask {
                            await self.serve(connection)
                            self.admission.withLock { $0.release(uid: uid) }
                        }
                    }
                }
            } catch {
                if !(error is CancellationError) { self.logger.error("control socket failed: \(error)") }
            }
            group.cancelAll()
        }
        self.close()
    }

    /// Closes the listener and removes the socket file (if it is still ours).
    public func close() {
        self.listener.channel.close(promise: nil)
        var info = stat()
        if lstat(self.path, &info) == 0, (info.st_mode & S_IFMT) == S_IFSOCK { unlink(self.path) }
    }

    /// Serves one connection: a request per line until the client closes, goes idle, or sends an over-long line.
    private func serve(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>) async {
        let channel = connection.channel
        do {
            try await connection.executeThenClose { inbound, outbound in
                let reader = InboundReader(inbound, maxLineBytes: ControlSocketLimits.maxRequestBytes)
                while true {
                    let deadline = Deadline(
                        on: channel.eventLoop,
                        after: .nanoseconds(Int64(ControlSocketLimits.idleTimeout.inSeconds * 1e9))
                    ) { channel.close(promise: nil) }
                    let line: ByteBuffer?
                    do {
                        line = try await reader.readLine()
                        deadline.cancel()
                    } catch let error as ProtocolError {
                        deadline.cancel()
                        self.logger.warning("control request refused: \(error.message)")
                        let reply = ControlReply.failure(
                            .lineTooLong, "request line longer than \(ControlSocketLimits.maxRequestBytes) bytes")
                        try await outbound.write(ByteBuffer(bytes: reply.encoded(id: nil)))
                        return
                    }
                    guard let line else { return }
                    if line.readableBytes == 0 { continue }
                    let answer: Data
                    switch Self.decode(line) {
                    case .success(let request):
                        answer = await self.handler(request).encoded(id: request.id)
                    case .failure(let failure):
                        self.logger.debug("bad control request: \(failure.message)")
                        answer = ControlReply.failure(failure.code, failure.message).encoded(id: Self.requestID(line))
                    }
                    try await outbound.write(ByteBuffer(bytes: answer))
                }
            }
        } catch {
            self.logger.debug("control connection ended: \(error)")
        }
    }

    /// The user id of the process at the other end of a Unix socket connection.
    static func peerUID(_ channel: any Channel) async -> uid_t? {
        guard let provider = channel as? any SocketOptionProvider else { return nil }
        let credentials: PeerCredentials? = try? await provider.unsafeGetSocketOption(
            level: .socket, name: NIOBSDSocket.Option(rawValue: SO_PEERCRED)
        ).get()
        return credentials?.uid
    }

    /// Linux's `struct ucred` (which Glibc's module does not export): what SO_PEERCRED gives.
    struct PeerCredentials: Sendable {
        var pid: Int32 = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
    }

    /// The integer `id` of a line that is a JSON object but not a valid request, so that
    /// even its error can be matched.
    public static func requestID(_ line: ByteBuffer) -> Int? {
        JSONSyntax.integerMember("id", of: Data(line.readableBytesView))
    }

    /// A request from one line, or why it is not one.
    public static func decode(_ line: ByteBuffer) -> Result<ControlRequest, ControlFailure> {
        let data = Data(line.readableBytesView)
        do {
            return .success(try ControlJSON.decoder().decode(ControlRequest.self, from: data))
        } catch DecodingError.dataCorrupted {
            return .failure(ControlFailure(.badJSON, "not a JSON object"))
        } catch {
            if JSONSyntax.isObject(data) {
                return .failure(
                    ControlFailure(
                        .badRequest, "expected {\"id\": INTEGER, \"command\": STRING, \"args\": {STRING: STRING}}"))
            }
            return .failure(ControlFailure(.badJSON, "not a JSON object"))
        }
    }
}
