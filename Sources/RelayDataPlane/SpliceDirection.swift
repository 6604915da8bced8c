import CDataPlane
import Glibc

/// One direction of a spliced session: source socket → pipe → destination socket, all in
/// the kernel, preceded by the bytes that were already read from the source (S12).
///
/// Backpressure is the pipe: the source is read only while the pipe is empty, and the pipe
/// is emptied only as fast as the destination takes it, so a direction holds at most one
/// pipe of bytes; the rest waits in the source socket's receive queue and TCP stalls the
/// sender. The two readiness flags say what the loop has to wait for: EPOLLIN on the source
/// when the pipe is empty and the source would block, EPOLLOUT on the destination when bytes
/// are waiting and the destination would block. They start true (try first, wait after).
///
/// The pipe is borrowed from the loop's ``PipePool`` only while bytes are in flight: taken
/// when the source is to be read and the direction has none, given back empty as soon as
/// the source would block (or has ended) with the pipe empty. A direction that keeps moving
/// bytes keeps its pipe; an idle one holds none. When no pipe can be had (`pipe2` failed),
/// the direction waits for one (``waitsForPipe``) and its loop retries it later.
struct SpliceDirection {
    /// The most bytes one direction moves in one turn before the loop serves its other
    /// sessions (then comes back without waiting for epoll): one busy session must not
    /// starve the rest of its loop.
    static let turnBytes = 1 << 20

    /// What a turn did.
    enum Turn: Equatable {
        /// Nothing moved: the direction waits for epoll (or has ended).
        case idle
        /// Bytes moved or the direction ended, and now it waits for epoll.
        case moved
        /// It used up ``turnBytes`` and could go on: the loop must come back to it.
        case unfinished
    }

    /// Where a failed call failed.
    enum Failure: Error {
        /// Reading the source socket.
        case source(Int32)
        /// Writing, or shutting down, the destination socket.
        case destination(Int32)
    }

    let source: Descriptor
    let destination: Descriptor
    /// First → second.
    let forward: Bool
    /// The borrowed pipe, while bytes are in flight (or about to be read); nil while idle.
    private(set) var pipe: Pipe?
    /// Bytes in the pipe (spliced in, not yet out).
    private(set) var inPipe = 0
    /// The source is to be read but no pipe could be had: the loop must come back (when a
    /// pipe is given back to the pool, or the pool's retry pause is over).
    private(set) var waitsForPipe = false
    /// Bytes read from the source before the session started, written out before anything else.
    private var pending: [UInt8]
    private var pendingSent = 0
    /// The source may have bytes (or its end of stream) to read: cleared by EAGAIN, set by EPOLLIN.
    var sourceReadable = true
    /// The destination may take bytes: cleared by EAGAIN, set by EPOLLOUT.
    var destinationWritable = true
    /// The source's end of stream was read.
    private(set) var sourceEnded = false
    /// The end of stream was passed on: the destination's write side is shut down.
    private(set) var finished = false

    init(source: Descriptor, destination: Descriptor, forward: Bool, pending: [UInt8]) {
        self.source = source
        self.destination = destination
        self.forward = forward
        self.pending = pending
    }

    /// A direction taken over from a frozen session (``FrozenSplice``): its unsent bytes go
    /// first, and an end of stream already read or passed on is not read again.
    init(source: Descriptor, destination: Descriptor, forward: Bool, resuming state: FrozenDirection) {
        self.init(source: source, destination: destination, forward: forward, pending: state.pending)
        self.sourceEnded = state.sourceEnded || state.finished
        self.finished = state.finished
    }

    /// Stops the direction for a handover: the bytes not yet written (pending, then what the
    /// pipe holds, read out of it) and its end-of-stream flags. The pipe goes back to `pool`
    /// empty; the sockets are not touched.
    mutating func freeze(pool: PipePool) -> FrozenDirection {
        var unsent = Array(self.pending[self.pendingSent...])
        if let pipe = self.pipe, self.inPipe > 0 {
            var buffer = [UInt8](repeating: 0, count: self.inPipe)
            var filled = 0
            while filled < buffer.count {
                let count = buffer.withUnsafeMutableBytes { bytes in
                    read(pipe.read.rawValue, bytes.baseAddress! + filled, bytes.count - filled)
                }
                if count > 0 {
                    filled += count
                } else if count < 0 && errno == EINTR {
                    continue
                } else {
                    break
                }
            }
            unsent += buffer[..<filled]
            self.inPipe -= filled
        }
        self.release(to: pool)
        self.pending = []
        self.pendingSent = 0
        return FrozenDirection(pending: unsent, sourceEnded: self.sourceEnded, finished: self.finished)
    }

    /// Waiting for the source to become readable.
    var awaitsSource: Bool {
        !self.finished && !self.sourceEnded && !self.sourceReadable && self.inPipe == 0
            && self.pendingSent == self.pending.count
    }

    /// Waiting for the destination to become writable.
    var awaitsDestination: Bool {
        !self.finished && !self.destinationWritable && (self.inPipe > 0 || self.pendingSent < self.pending.count)
    }

    /// Moves every byte it can without blocking (at most about ``turnBytes``), and passes
    /// the end of stream on once the pipe is empty; borrows a pipe from `pool` to read the
    /// source and gives it back once the source would block (or has ended) with the pipe
    /// empty. Returns what the turn did, or the failure.
    mutating func run(meter: any SpliceMeter, pool: PipePool) -> Result<Turn, Failure> {
        var turn = Turn.idle
        var movedBytes = 0
        while true {
            var moved = false
            // S12: the bytes read before the session started go first.
            while self.pendingSent < self.pending.count && self.destinationWritable {
                let (destination, offset) = (self.destination.rawValue, self.pendingSent)
                let sent = self.pending.withUnsafeBytes { bytes in
                    send(
                        destination, bytes.baseAddress! + offset, bytes.count - offset,
                        Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
                }
                if sent > 0 {
                    self.pendingSent += sent
                    movedBytes += sent
                    meter.add(sent, forward: self.forward)
                    moved = true
                } else if errno == EAGAIN {
                    self.destinationWritable = false
                } else if errno != EINTR {
                    return .failure(.destination(errno))
                }
            }
            if self.pendingSent < self.pending.count { break }
            if !self.pending.isEmpty {
                self.pending = []
                self.pendingSent = 0
            }
            // Empty the pipe into the destination.
            if self.inPipe > 0 && self.destinationWritable, let pipe = self.pipe {
                let spliced = cdataplane_splice(
                    pipe.read.rawValue, self.destination.rawValue, self.inPipe, cdataplane_splice_flags)
                if spliced > 0 {
                    self.inPipe -= spliced
                    movedBytes += spliced
                    meter.add(spliced, forward: self.forward)
                    moved = true
                } else if spliced < 0 && errno == EAGAIN {
                    self.destinationWritable = false
                } else if spliced < 0 && errno == EINTR {
                    moved = true  // Try again: in edge-triggered mode no new event would come.
                } else if spliced < 0 {
                    return .failure(.destination(errno))
                }
            }
            // Refill it from the source, only once it is empty: then EAGAIN can only mean
            // the source has nothing (with bytes in the pipe it may mean a full pipe).
            if self.inPipe == 0 && !self.sourceEnded && self.sourceReadable, let pipe = self.borrow(from: pool) {
                let spliced = cdataplane_splice(
                    self.source.rawValue, pipe.write.rawValue, pipe.capacity, cdataplane_splice_flags)
                if spliced > 0 {
                    self.inPipe = spliced
                    moved = true
                } else if spliced == 0 {
                    self.sourceEnded = true
                    self.returnPipe(to: pool)
                    moved = true
                } else if errno == EAGAIN {
                    // Empty, and the source has nothing: no bytes in flight, no pipe held.
                    self.sourceReadable = false
                    self.returnPipe(to: pool)
                } else if errno == EINTR {
                    moved = true
                } else {
                    return .failure(.source(errno))
                }
            }
            guard moved else { break }
            turn = .moved
            if movedBytes >= Self.turnBytes {
                turn = .unfinished
                break
            }
        }
        // End of stream, and every byte before it is in the destination's socket: pass it on.
        // The kernel sends the queued bytes before the FIN, so the tail is never lost.
        if self.sourceEnded && self.inPipe == 0 && !self.finished {
            guard shutdown(self.destination.rawValue, Int32(SHUT_WR)) == 0 else {
                return .failure(.destination(errno))
            }
            self.finished = true
            meter.finish(forward: self.forward)
            if turn == .idle { turn = .moved }
        }
        return .success(turn)
    }

    /// The pipe held, or one taken from `pool`; nil (and ``waitsForPipe``) when none can be had.
    private mutating func borrow(from pool: PipePool) -> Pipe? {
        if let pipe = self.pipe { return pipe }
        do {
            let pipe = try pool.take()
            self.pipe = pipe
            self.waitsForPipe = false
            return pipe
        } catch {
            self.waitsForPipe = true
            return nil
        }
    }

    /// Gives the empty pipe back to `pool`.
    private mutating func returnPipe(to pool: PipePool) {
        guard let pipe = self.pipe else { return }
        pool.give(pipe, empty: true)
        self.pipe = nil
    }

    /// Gives the pipe back when the session ends: pooled if empty, closed if it still holds
    /// bytes (a session reset mid-transfer).
    mutating func release(to pool: PipePool) {
        guard let pipe = self.pipe else { return }
        pool.give(pipe, empty: self.inPipe == 0)
        self.pipe = nil
        self.inPipe = 0
    }
}
