import Glibc
import NIOCore
import RelayDataPlane
import Synchronization

/// A connected TCP socket the daemon made or accepted itself, owned by exactly one party
/// at a time: the handshake, then the session, then the data plane that pumps it.
///
/// Whoever holds it last closes it: ``take()`` hands the descriptor on for good (to a data
/// plane); ``reset()`` and ``close()`` end it while it is still here; dropped while still
/// owned, it is reset, so no path leaks a descriptor or leaves a peer half-open.
public final class OwnedSocket: Sendable, CustomStringConvertible {
    private let state: Mutex<Int32?>
    /// Bytes already read from this socket past a handshake line (S12): the data plane
    /// writes them to the other side before anything else it reads from this one.
    public let pending: Mutex<[UInt8]>
    /// The peer's address, as logged ("203.0.113.5:51000").
    public let remote: String
    /// The socket's own address, as logged.
    public let local: String

    /// Takes ownership of `descriptor`, a connected TCP socket.
    public init(_ descriptor: Descriptor) {
        self.state = Mutex(descriptor.rawValue)
        self.pending = Mutex([])
        self.remote = SocketAddress.display(descriptor.address(peer: true))
        self.local = SocketAddress.display(descriptor.address(peer: false))
    }

    /// The descriptor while this owner still holds it, for a handshake's reads and writes.
    public var descriptor: Descriptor? {
        self.state.withLock { $0.map(Descriptor.init(rawValue:)) }
    }

    /// Hands the descriptor on for good; nil if it was taken or closed already.
    public func take() -> Descriptor? {
        self.state.withLock { state in
            defer { state = nil }
            return state.map(Descriptor.init(rawValue:))
        }
    }

    /// Ends the connection abortively (the peer sees a reset), unless it was handed on.
    public func reset() {
        self.take()?.reset()
    }

    /// Closes the connection (a FIN), unless it was handed on.
    public func close() {
        self.take()?.close()
    }

    public var description: String { "\(self.remote)" }

    deinit {
        if let descriptor = self.state.withLock({ $0 }) { Descriptor(rawValue: descriptor).reset() }
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
