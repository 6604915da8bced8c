import NIOCore
import Synchronization

/// A time limit on one phase of a connection (a handshake, a wait for an attach): when it
/// expires first, `onExpiry` runs on the channel's event loop; ``cancel()`` disarms it.
public final class Deadline: Sendable {
    private let fired = Atomic<Bool>(false)
    private let scheduled: Mutex<Scheduled<Void>?> = Mutex(nil)

    /// Arms a deadline `timeout` from now on `eventLoop`.
    public init(on eventLoop: any EventLoop, after timeout: TimeAmount, onExpiry: @escaping @Sendable () -> Void) {
        let task = eventLoop.scheduleTask(in: timeout) { [self] in
            self.fired.store(true, ordering: .relaxed)
            onExpiry()
        }
        self.scheduled.withLock { $0 = task }
    }

    /// Whether the deadline expired (and `onExpiry` ran).
    public var expired: Bool { self.fired.load(ordering: .relaxed) }

    /// Disarms the deadline; harmless after it fired.
    public func cancel() {
        self.scheduled.withLock { $0?.cancel() }
    }
}
