import Glibc
import RelayDataPlane

/// Bulk traffic on many sockets at once from a few threads, with poll(2): each end sends
/// its pattern then half-closes, and reads until end of stream, checking every byte (or
/// sends without half-closing and reads a given count, leaving the connection open). What
/// 200 sessions need without 800 blocked threads.
enum Exchange {
    /// One socket's part: what it sends, and what it expects to read.
    struct End: Sendable {
        let fd: Int32
        let sends: TestPattern
        let sendCount: Int
        let expects: TestPattern
        /// Where in `sends` the bytes to send start, and where in `expects` the first byte
        /// read is: a later round of the same streams.
        var sendFrom = 0
        var expectFrom = 0
        /// Half-closes once everything is sent; else leaves the socket open.
        var halfCloses = true
        /// Stops reading after this many bytes (``Received/End/stoppedAtCount``) instead of
        /// at the end of stream.
        var readCount: Int?
    }

    /// Runs every end to completion (or until `seconds` pass) on `threads` threads, and
    /// returns what each end read, in order.
    static func run(_ ends: [End], threads: Int = 1, seconds: Double = 60) async -> [Received] {
        let shares = (0..<threads).map { thread in Array(stride(from: thread, to: ends.count, by: threads)) }
        let results = await withTaskGroup(of: [(Int, Received)].self) { group in
            for share in shares where !share.isEmpty {
                group.addTask {
                    await Blocking.run {
                        Array(zip(share, self.drive(share.map { ends[$0] }, seconds: seconds)))
                    }
                }
            }
            var all: [(Int, Received)] = []
            for await part in group { all += part }
            return all
        }
        return results.sorted { $0.0 < $1.0 }.map(\.1)
    }

    /// The poll loop over `ends`, on the calling thread.
    private static func drive(_ ends: [End], seconds: Double) -> [Received] {
        let deadline = Deadline(seconds: seconds)
        var sent = [Int](repeating: 0, count: ends.count)
        var finished = [Bool](repeating: false, count: ends.count)
        var received = ends.map { end in
            var received = Received(offset: end.expectFrom)
            if end.readCount == 0 { received.end = .stoppedAtCount }
            return received
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 << 10, alignment: 16)
        defer { buffer.deallocate() }
        for end in ends { _ = try? Descriptor(rawValue: end.fd).setNonBlocking() }
        while true {
            var polls: [pollfd] = []
            var which: [Int] = []
            for (index, end) in ends.enumerated() where !finished[index] || received[index].end == nil {
                var events: Int16 = 0
                if !finished[index] { events |= Int16(POLLOUT) }
                if received[index].end == nil { events |= Int16(POLLIN) }
                polls.append(pollfd(fd: end.fd, events: events, revents: 0))
                which.append(index)
            }
            guard !polls.isEmpty else { return received }
            let remaining = deadline.remainingMilliseconds
            guard remaining > 0 else {
                for index in which where received[index].end == nil { received[index].end = .timedOut }
                return received
            }
            guard poll(&polls, nfds_t(polls.count), min(remaining, 1000)) > 0 else { continue }
            for (slot, index) in which.enumerated() where polls[slot].revents != 0 {
                let end = ends[index]
                // Send while the socket takes bytes, then half-close.
                while !finished[index] {
                    if sent[index] == end.sendCount {
                        if end.halfCloses { shutdown(end.fd, Int32(SHUT_WR)) }
                        finished[index] = true
                        break
                    }
                    let result = end.sends.withBytes(
                        at: end.sendFrom + sent[index], count: end.sendCount - sent[index]
                    ) { bytes in
                        send(end.fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
                    }
                    if result > 0 {
                        sent[index] += result
                    } else {
                        if errno != EAGAIN && errno != EINTR {
                            finished[index] = true
                            if received[index].end == nil {
                                received[index].end = .error("send: \(SystemError.describe(errno))")
                            }
                        }
                        break
                    }
                }
                // Read what has come.
                while received[index].end == nil {
                    let wanted = end.readCount.map { min(buffer.count, $0 - received[index].count) } ?? buffer.count
                    let result = recv(end.fd, buffer.baseAddress, wanted, 0)
                    if result > 0 {
                        received[index].take(UnsafeRawBufferPointer(rebasing: buffer[0..<result]), of: end.expects)
                        if received[index].count == end.readCount { received[index].end = .stoppedAtCount }
                    } else if result == 0 {
                        received[index].end = .endOfStream
                    } else {
                        if errno != EAGAIN && errno != EINTR {
                            received[index].end = .error(SystemError.describe(errno))
                        }
                        break
                    }
                }
            }
        }
    }
}
