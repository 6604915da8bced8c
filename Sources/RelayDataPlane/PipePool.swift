import CDataPlane
import Glibc

/// A kernel pipe, the buffer one direction of a spliced session moves its bytes through
/// (socket → pipe → socket): both ends nonblocking and close-on-exec.
struct Pipe {
    /// The end bytes are spliced out of.
    let read: Descriptor
    /// The end bytes are spliced into.
    let write: Descriptor
    /// What the pipe holds at most, in bytes (F_GETPIPE_SZ).
    let capacity: Int

    /// A new pipe, resized to `size` bytes when the kernel allows it. Over the per-user
    /// limit (`/proc/sys/fs/pipe-user-pages-soft`, for a process without CAP_SYS_RESOURCE)
    /// or above `/proc/sys/fs/pipe-max-size` the resize fails and the pipe keeps the size
    /// it was given: slower, but it works.
    static func make(size: Int) throws(SystemError) -> Pipe {
        var fds: [Int32] = [-1, -1]
        guard cdataplane_pipe(&fds) == 0 else { throw SystemError(call: "pipe2") }
        _ = cdataplane_set_pipe_size(fds[1], Int32(clamping: size))
        let capacity = cdataplane_pipe_size(fds[1])
        return Pipe(
            read: Descriptor(rawValue: fds[0]), write: Descriptor(rawValue: fds[1]),
            capacity: capacity > 0 ? Int(capacity) : 4096)
    }

    /// Closes both ends.
    func close() {
        self.read.close()
        self.write.close()
    }
}

/// One loop's pipes. A direction borrows a pipe only while it holds bytes in flight and
/// gives it back, empty, as soon as it waits for its source again (``SpliceDirection``), so
/// an idle session holds none; the pool keeps up to `limit` of the empty pipes given back
/// for the next borrower, so that `pipe2` and `F_SETPIPE_SZ` stay off the busy path (passt
/// keeps such a pool too), and closes the rest. A pipe that still holds bytes (a session
/// reset mid-transfer) is closed, never pooled.
///
/// When `pipe2` fails (EMFILE, ENFILE, ENOMEM), the pool tries no new pipe for
/// ``retryNanoseconds``: the borrowers wait (their loop retries them when a pipe comes back
/// or the pause is over) instead of each failing the call again. Owned by one loop thread;
/// not thread-safe.
final class PipePool {
    /// How long the pool tries no new pipe after `pipe2` failed: 100 ms.
    static let retryNanoseconds: UInt64 = 100_000_000

    /// The size asked of every new pipe.
    let pipeSize: Int
    /// The most idle pipes kept; more are closed.
    let limit: Int
    private var idle: [Pipe] = []
    /// Pipes made and not yet closed, idle or lent.
    private(set) var open = 0
    /// After a failed `pipe2`: when the next may be tried (monotonic nanoseconds); 0: now.
    private(set) var retryAt: UInt64 = 0
    /// Why the last `pipe2` failed, while ``retryAt`` holds.
    private var failure: SystemError?

    init(pipeSize: Int, limit: Int) {
        self.pipeSize = pipeSize
        self.limit = max(0, limit)
    }

    /// Idle pipes held.
    var idleCount: Int { self.idle.count }

    /// Whether ``take()`` would succeed now without a failed `pipe2` in the last
    /// ``retryNanoseconds``: an idle pipe, or a new one may be tried.
    func mayLend(now: UInt64) -> Bool {
        !self.idle.isEmpty || now >= self.retryAt
    }

    /// An empty pipe, from the pool or new. Throws why `pipe2` failed, at once (without
    /// trying again) within ``retryNanoseconds`` of the failure.
    func take() throws(SystemError) -> Pipe {
        if let pipe = self.idle.popLast() { return pipe }
        if self.retryAt != 0 {
            let now = MonotonicClock.now()
            if now < self.retryAt, let failure = self.failure { throw failure }
            self.retryAt = 0
            self.failure = nil
        }
        do {
            let pipe = try Pipe.make(size: self.pipeSize)
            self.open += 1
            return pipe
        } catch {
            self.retryAt = MonotonicClock.now() + Self.retryNanoseconds
            self.failure = error
            throw error
        }
    }

    /// Takes back a pipe: kept if empty and the pool has room, else closed.
    func give(_ pipe: Pipe, empty: Bool) {
        if empty && self.idle.count < self.limit {
            self.idle.append(pipe)
        } else {
            pipe.close()
            self.open -= 1
        }
    }

    /// Closes every idle pipe.
    func closeIdle() {
        for pipe in self.idle { pipe.close() }
        self.open -= self.idle.count
        self.idle = []
    }
}
