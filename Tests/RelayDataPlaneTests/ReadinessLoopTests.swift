import Glibc
import RelayDataPlane
import Testing

/// The loop that wakes async code when an owned descriptor is ready: readiness, deadlines,
/// cancellation, and a socket aborted under a waiting task, on real loopback sockets.
@Suite(.timeLimit(.minutes(1)))
struct ReadinessLoopTests {
    /// Runs `body` with a fresh loop and both ends of a fresh loopback connection, all closed after.
    static func withConnection(
        _ body: (ReadinessLoop, Int32, Int32) async throws -> Void
    ) async throws {
        let readiness = try ReadinessLoop()
        let (dialled, accepted) = try Loopback.connection()
        defer {
            close(dialled)
            close(accepted)
            readiness.shutdown()
        }
        try await body(readiness, dialled, accepted)
    }

    @Test func aWaitEndsWhenBytesArrive() async throws {
        try await Self.withConnection { readiness, dialled, accepted in
            let waiting = Task { await readiness.wait(for: .readable, on: Descriptor(rawValue: accepted)) }
            // The byte is sent once the wait has most likely registered; either order must end it.
            try await Task.sleep(for: .milliseconds(100))
            var byte: UInt8 = 7
            #expect(send(dialled, &byte, 1, 0) == 1)
            #expect(await waiting.value == .ready)
        }
    }

    @Test func aWritableSocketIsReadyAtOnce() async throws {
        try await Self.withConnection { readiness, dialled, accepted in
            #expect(await readiness.wait(for: .writable, on: Descriptor(rawValue: dialled)) == .ready)
        }
    }

    @Test func aDeadlineEndsAWaitNeverEarly() async throws {
        try await Self.withConnection { readiness, dialled, accepted in
            let start = ContinuousClock.now
            let wakeup = await readiness.wait(
                for: .readable, on: Descriptor(rawValue: accepted), until: start + .milliseconds(200))
            let elapsed = ContinuousClock.now - start
            #expect(wakeup == .timedOut)
            #expect(elapsed >= .milliseconds(200), "\(elapsed)")
            #expect(elapsed < .seconds(5), "\(elapsed)")
            // The descriptor can be waited on again afterwards (its registration was removed).
            var byte: UInt8 = 1
            #expect(send(dialled, &byte, 1, 0) == 1)
            #expect(await readiness.wait(for: .readable, on: Descriptor(rawValue: accepted)) == .ready)
        }
    }

    @Test func aCancelledTaskStopsWaiting() async throws {
        try await Self.withConnection { readiness, dialled, accepted in
            let waiting = Task { await readiness.wait(for: .readable, on: Descriptor(rawValue: accepted)) }
            try await Task.sleep(for: .milliseconds(50))
            waiting.cancel()
            #expect(await waiting.value == .cancelled)
        }
    }

    @Test func anAbortedSocketWakesItsWaiterAndThePeerSeesAReset() async throws {
        try await Self.withConnection { readiness, dialled, accepted in
            let socket = Descriptor(rawValue: accepted)
            let waiting = Task { await readiness.wait(for: .readable, on: socket) }
            try await Task.sleep(for: .milliseconds(50))
            socket.disconnect()
            readiness.cancelWaits(on: socket)
            // Woken either by the disconnect itself (epoll reports the hang-up) or by the cancel,
            // whichever comes first; never left waiting (the suite's time limit would catch it).
            let wakeup = await waiting.value
            #expect(wakeup == .ready || wakeup == .cancelled, "\(wakeup)")
            // The peer sees a reset, not a clean end of stream.
            var buffer = [UInt8](repeating: 0, count: 16)
            let result = buffer.withUnsafeMutableBytes { Descriptor(rawValue: dialled).receive(into: $0) }
            #expect(result == .failed(ECONNRESET), "\(result)")
        }
    }

    @Test func manyWaitsAtOnceEachEndOnItsOwnSocket() async throws {
        let readiness = try ReadinessLoop()
        defer { readiness.shutdown() }
        let pairs = try (0..<50).map { _ in try Loopback.connection() }
        defer {
            for (dialled, accepted) in pairs {
                close(dialled)
                close(accepted)
            }
        }
        let wakeups = await withTaskGroup(of: ReadinessLoop.Wakeup.self) { group in
            for (index, (dialled, accepted)) in pairs.enumerated() {
                group.addTask {
                    // The even ones get a byte; the odd ones time out.
                    if index % 2 == 0 {
                        var byte: UInt8 = 1
                        _ = send(dialled, &byte, 1, 0)
                    }
                    return await readiness.wait(
                        for: .readable, on: Descriptor(rawValue: accepted), until: .now + .milliseconds(300))
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(wakeups.filter { $0 == .ready }.count == 25)
        #expect(wakeups.filter { $0 == .timedOut }.count == 25)
    }
}
