import Glibc
import Logging
import NIOCore
import RelayDataPlane
import Synchronization

/// A listening TCP socket the daemon bound itself or adopted from systemd, accepting
/// connections as plain descriptors (``OwnedSocket``), so that a session's sockets are
/// the daemon's from birth and a data plane can splice them.
public final class OwnedListener: Sendable {
    /// The address it listens on, as logged.
    public let localAddress: String
    private let descriptor: Mutex<Int32?>
    /// Set by ``close()``: the accept loop ends and the socket is closed.
    private let closed = Atomic<Bool>(false)

    private init(_ descriptor: Descriptor) {
        self.descriptor = Mutex(descriptor.rawValue)
        self.localAddress = SocketAddress.display(descriptor.address(peer: false))
    }

    /// Binds a listener on `address` with ``Network/listenBacklog``.
    public static func bind(_ address: SocketAddress) throws -> OwnedListener {
        let descriptor = try Descriptor.tcpSocket(family: address.protocol.rawValue)
        do {
            try address.withSockAddr { pointer, length in
                try descriptor.bindAndListen(pointer, length: length, backlog: Network.listenBacklog)
            }
        } catch {
            descriptor.close()
            throw error
        }
        return OwnedListener(descriptor)
    }

    /// Adopts a listening socket systemd passed (socket activation): made nonblocking and
    /// close-on-exec here; it must be a listening stream socket.
    public static func adopt(_ rawDescriptor: CInt) throws -> OwnedListener {
        let descriptor = Descriptor(rawValue: rawDescriptor)
        var listening: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(rawDescriptor, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) == 0 else {
            throw SystemError(call: "getsockopt(SO_ACCEPTCONN)")
        }
        guard listening != 0 else { throw SystemError(call: "listen", code: EINVAL) }
        try descriptor.setNonBlocking()
        try descriptor.setCloseOnExec()
        return OwnedListener(descriptor)
    }

    /// Accepts until ``close()``, handing each connection, with `tuning()` applied for a
    /// session connection, to `handler` in a task of its own (on the readiness loop). Ends when closed; a failing
    /// accept (out of descriptors) is logged and retried after a pause, never fatal.
    public func run(
        logger: Logger, tuning: @escaping @Sendable () -> TCPTuning,
        handler: @escaping @Sendable (OwnedSocket) async -> Void
    ) async {
        // The accept loop and every connection's handler run on the readiness loop's thread
        // (they only wait through it): accept, handshake and hand-over without a thread hop.
        await withTaskExecutorPreference(SocketIO.readiness) {
            await self.accept(logger: logger, tuning: tuning, handler: handler)
        }
    }

    private func accept(
        logger: Logger, tuning: @escaping @Sendable () -> TCPTuning,
        handler: @escaping @Sendable (OwnedSocket) async -> Void
    ) async {
        await withDiscardingTaskGroup { group in
            while !self.closed.load(ordering: .relaxed) {
                guard let raw = self.descriptor.withLock({ $0 }) else { break }
                let listening = Descriptor(rawValue: raw)
                let accepted: Descriptor?
                do {
                    accepted = try listening.accept()
                } catch {
                    if self.closed.load(ordering: .relaxed) { break }
                    logger.error("accept failed: \(error); retrying in \(Self.acceptRetryPause)")
                    try? await Task.sleep(for: Self.acceptRetryPause)
                    continue
                }
                guard let accepted else {
                    // Bounded, so that a close() between the check above and this wait (its
                    // cancel found no wait yet) is seen within closeRecheck.
                    let wakeup = await SocketIO.readiness.wait(
                        for: .readable, on: listening, until: .now + Self.closeRecheck)
                    if wakeup == .cancelled { break }
                    continue
                }
                try? accepted.setNoDelay()
                try? tuning().apply(to: accepted, role: .data)
                let socket = OwnedSocket(accepted)
                group.addTask { await handler(socket) }
            }
            self.closeDescriptor()
        }
    }

    /// After a failing accept (EMFILE, ENFILE, ENOBUFS), how long the loop waits before it
    /// tries again: the queued connection stays queued meanwhile.
    public static let acceptRetryPause = Duration.milliseconds(100)

    /// How long an idle accept loop waits before it looks again whether it was closed.
    public static let closeRecheck = Duration.seconds(1)

    /// Stops accepting: the loop ends and closes its descriptor. Connections accepted before
    /// go on. The socket itself is not shut down: one passed by systemd (socket activation)
    /// stays listening in its socket unit (a shutdown() there fails the unit with "Got
    /// POLLHUP on a listening socket", and activation with it).
    public func close() {
        guard !self.closed.exchange(true, ordering: .relaxed) else { return }
        if let raw = self.descriptor.withLock({ $0 }) {
            SocketIO.readiness.cancelWaits(on: Descriptor(rawValue: raw))
        }
    }

    /// Stops accepting without touching the socket, for a handover: the accept loop ends,
    /// connections still arriving wait in the kernel's backlog, and the returned duplicate
    /// keeps the socket listening for the next process. Nil if it was closed already (or
    /// the duplicate could not be made).
    public func detach() -> CInt? {
        guard let raw = self.descriptor.withLock({ $0 }) else { return nil }
        let duplicate = fcntl(raw, F_DUPFD_CLOEXEC, 0)
        guard duplicate >= 0, !self.closed.exchange(true, ordering: .relaxed) else {
            if duplicate >= 0 { _ = Glibc.close(duplicate) }
            return nil
        }
        SocketIO.readiness.cancelWaits(on: Descriptor(rawValue: raw))
        return duplicate
    }

    private func closeDescriptor() {
        if let raw = self.descriptor.withLock({ descriptor in
            defer { descriptor = nil }
            return descriptor
        }) {
            _ = Glibc.close(raw)
        }
    }

    deinit {
        if let raw = self.descriptor.withLock({ $0 }) { _ = Glibc.close(raw) }
    }
}
