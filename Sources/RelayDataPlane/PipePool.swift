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

/// The pipes of one loop's ended sessions, kept for the next sessions so that `pipe2` and
/// `F_SETPIPE_SZ` stay off the set-up path (passt keeps such a pool too). Only empty pipes
/// come back: a session reset with bytes still in a pipe closes it. Owned by one loop
/// thread; not thread-safe.
struct PipePool {
    /// The size asked of every new pipe.
    let pipeSize: Int
    /// The most idle pipes kept; more are closed.
    let limit: Int
    private var idle: [Pipe] = []
    /// Pipes made and not yet closed, idle or in use.
    private(set) var open = 0

    init(pipeSize: Int, limit: Int) {
        self.pipeSize = pipeSize
        self.limit = limit
    }

    /// Idle pipes held.
    var idleCount: Int { self.idle.count }

    /// An empty pipe, from the pool or new.
    mutating func take() throws(SystemError) -> Pipe {
        if let pipe = self.idle.popLast() { return pipe }
        let pipe = try Pipe.make(size: self.pipeSize)
        self.open += 1
        return pipe
    }

    /// Takes back a pipe a session is done with: kept if empty and the pool has room, else closed.
    mutating func give(_ pipe: Pipe, empty: Bool) {
        if empty && self.idle.count < self.limit {
            self.idle.append(pipe)
        } else {
            pipe.close()
            self.open -= 1
        }
    }

    /// Closes every idle pipe.
    mutating func closeIdle() {
        for pipe in self.idle { pipe.close() }
        self.open -= self.idle.count
        self.idle = []
    }
}
