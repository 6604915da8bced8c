import CDataPlane
import Glibc

/// An epoll instance with an eventfd registered in it, under a token of the owner's
/// choosing: how other threads wake a loop that sleeps in `epoll_wait`. The loops of the
/// splice plane and the readiness loop are built on one each.
struct EpollWakeup: Sendable {
    let epoll: Descriptor
    let wakeup: Descriptor

    /// Creates both (close-on-exec, the eventfd nonblocking) and registers the eventfd for
    /// EPOLLIN with `token` as its epoll data; nothing stays open when it throws.
    init(token: UInt64) throws(SystemError) {
        let epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw SystemError(call: "epoll_create1") }
        let wakeup = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard wakeup >= 0 else {
            let error = SystemError(call: "eventfd")
            _ = Glibc.close(epoll)
            throw error
        }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = token
        guard epoll_ctl(epoll, EPOLL_CTL_ADD, wakeup, &event) == 0 else {
            let error = SystemError(call: "epoll_ctl(eventfd)")
            _ = Glibc.close(epoll)
            _ = Glibc.close(wakeup)
            throw error
        }
        self.epoll = Descriptor(rawValue: epoll)
        self.wakeup = Descriptor(rawValue: wakeup)
    }

    /// Wakes the loop (its next or current `epoll_wait` returns).
    func signal() {
        var one: UInt64 = 1
        _ = write(self.wakeup.rawValue, &one, MemoryLayout<UInt64>.size)
    }

    /// Takes the eventfd's count, after epoll reported it.
    func drain() {
        var value: UInt64 = 0
        _ = read(self.wakeup.rawValue, &value, MemoryLayout<UInt64>.size)
    }

    /// Closes both.
    func close() {
        self.epoll.close()
        self.wakeup.close()
    }
}

/// Starts a thread that runs `body` with `object`, which the thread keeps alive until
/// `body` returns.
func startThread<Object: AnyObject>(running object: Object, _ body: @escaping (Object) -> Void) throws(SystemError)
    -> pthread_t
{
    var thread = pthread_t()
    let context = Unmanaged.passRetained(ThreadStart { body(object) }).toOpaque()
    let result = pthread_create(
        &thread, nil,
        { context in
            Unmanaged<ThreadStart>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
    guard result == 0 else {
        Unmanaged<ThreadStart>.fromOpaque(context).release()
        throw SystemError(call: "pthread_create", code: result)
    }
    return thread
}

/// What ``startThread(running:_:)`` hands the new thread.
private final class ThreadStart {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
