import Glibc
import NIOCore
import RelayDataPlane
import Synchronization

/// A connected TCP socket the daemon made or accepted itself, owned by exactly one party
/// at a time: the handshake, then the session, then the data plane that pumps it.
///
/// ``take()`` hands the descriptor on for good (to a data plane, or to NIO). ``reset()`` may
/// come from any thread at any moment (a kill, a failure of the other side): it aborts the
/// connection at once (the peer sees a reset, a task waiting on it wakes and finds it
/// closed) but keeps the descriptor number until ``close()`` or the end of this object, so
/// that a task still using it can never touch a reused number. Dropped while still owned,
/// the socket is reset: no path leaks a descriptor or leaves a peer half-open.
public final class OwnedSocket: Sendable, CustomStringConvertible {
    private struct State {
        /// The descriptor, until it is handed on or closed.
        var descriptor: Int32?
        /// Reset: aborted, no longer usable, closed when the owner closes or drops it.
        var aborted = false
    }

    private let state: Mutex<State>
    /// Bytes already read from this socket past a handshake line (S12): the data plane
    /// writes them to the other side before anything else it reads from this one.
    public let pending: Mutex<[UInt8]>
    /// The peer's address, as logged ("203.0.113.5:51000").
    public let remote: String
    /// The socket's own address, as logged.
    public let local: String

    /// Takes ownership of `descriptor`, a connected TCP socket.
    public init(_ descriptor: Descriptor) {
        self.state = Mutex(State(descriptor: descriptor.rawValue))
        self.pending = Mutex([])
        self.remote = SocketAddress.display(descriptor.address(peer: true))
        self.local = SocketAddress.display(descriptor.address(peer: false))
    }

    /// The descriptor while this owner may still use it (not handed on, closed or reset).
    public var descriptor: Descriptor? {
        self.state.withLock { $0.aborted ? nil : $0.descriptor.map(Descriptor.init(rawValue:)) }
    }

    /// Hands the descriptor on for good; nil if it was handed on, closed or reset already.
    public func take() -> Descriptor? {
        self.state.withLock { state in
            guard !state.aborted, let descriptor = state.descriptor else { return nil }
            state.descriptor = nil
            return Descriptor(rawValue: descriptor)
        }
    }

    /// Aborts the connection (the peer sees a reset), unless it was handed on: safe from
    /// any thread, also while another task reads or writes it (its next call fails).
    public func reset() {
        let descriptor: Int32? = self.state.withLock { state in
            guard !state.aborted, let descriptor = state.descriptor else { return nil }
            state.aborted = true
            return descriptor
        }
        guard let descriptor else { return }
        Descriptor(rawValue: descriptor).disconnect()
        SocketIO.readiness.cancelWaits(on: Descriptor(rawValue: descriptor))
    }

    /// Closes the connection (a FIN, or nothing more after a reset), unless it was handed
    /// on. Only the task that owns the socket closes it.
    public func close() {
        guard
            let descriptor = self.state.withLock({ state in
                defer { state.descriptor = nil }
                return state.descriptor
            })
        else { return }
        Descriptor(rawValue: descriptor).close()
    }

    public var description: String { "\(self.remote)" }

    deinit {
        let state = self.state.withLock { $0 }
        guard let descriptor = state.descriptor.map(Descriptor.init(rawValue:)) else { return }
        if state.aborted { descriptor.close() } else { descriptor.reset() }
    }
}

extension SocketAddress {
    /// An address from `getsockname`/`getpeername` as logs show it; "?" when unknown.
    static func display(_ storage: sockaddr_storage?) -> String {
        guard let address = storage.flatMap(SocketAddress.init(storage:)) else { return "?" }
        return address.displayString
    }

    /// The IPv4 or IPv6 address in `storage`, or nil for another family.
    init?(storage: sockaddr_storage) {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            self = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee) }
            }
        case AF_INET6:
            self = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee) }
            }
        default:
            return nil
        }
    }
}
