import Glibc
import RelayDataPlane

/// A spliced session on real loopback connections, and the outer peers that drive it:
///
///     client ⇄ first ‖ splice ‖ second ⇄ target
///
/// `first` and `second` are plain descriptors handed to the plane, which owns them from
/// then on; the test writes, reads, half-closes and resets through `client` and `target`.
struct SpliceRig: Sendable {
    let client: Peer
    let target: Peer
    let session: SpliceSession
    /// The ports of (client, first, second, target), for ``KernelQueues``.
    let ports: [(local: Int, remote: Int)]
    /// The inodes of the first and second sockets, to find them in /proc/self/fd.
    let innerInodes: [UInt64]

    /// Connects a rig and starts its session on `plane`. `smallTargetBuffers`: the second
    /// socket's send buffer and the target's receive buffer are the kernel's minimum, so the
    /// forward direction blocks after a few KiB that the target does not read.
    static func start(
        on plane: SplicePlane, meter: any SpliceMeter = SpliceCounters(), limits: SpliceLimits = SpliceLimits(),
        pendingForward: [UInt8] = [], pendingBackward: [UInt8] = [], smallTargetBuffers: Bool = false
    ) throws -> SpliceRig {
        let (client, first) = try Loopback.connection()
        let (second, target) = try Loopback.connection(smallBuffers: smallTargetBuffers)
        let ports = [client, first, second, target].map(Loopback.ports)
        let inodes = [first, second].map(Loopback.inode)
        let session = plane.start(
            first: Descriptor(rawValue: first), second: Descriptor(rawValue: second), pendingForward: pendingForward,
            pendingBackward: pendingBackward, meter: meter, limits: limits)
        return SpliceRig(
            client: Peer(fd: client), target: Peer(fd: target), session: session, ports: ports, innerInodes: inodes)
    }

    /// The outer peer on `side`.
    func outer(_ side: Side) -> Peer {
        side == .client ? self.client : self.target
    }

    /// Closes the outer peers (the plane closes the inner sockets itself).
    func close() {
        self.client.close()
        self.target.close()
    }
}

/// One side of a rig.
enum Side: String, Sendable, CaseIterable {
    case client
    case target

    /// The plane's socket on this side.
    var spliceSide: SpliceSide { self == .client ? .first : .second }

    var other: Side { self == .client ? .target : .client }
}

/// Runs `body` with a plane of `loops` loops, shut down afterwards, and every rig it made closed.
func withPlane<R: Sendable>(
    loops: Int = 2, trigger: SplicePlane.Trigger = SplicePlane.Configuration().trigger, pooledPipesPerLoop: Int? = nil,
    _ body: (SplicePlane) async throws -> R
) async throws -> R {
    let plane = try SplicePlane(
        SplicePlane.Configuration(loops: loops, trigger: trigger, pooledPipesPerLoop: pooledPipesPerLoop))
    do {
        let result = try await body(plane)
        plane.shutdown()
        return result
    } catch {
        plane.shutdown()
        throw error
    }
}

enum Timing {
    /// Waits until `value` has been positive and unchanged for `quiet`, looking every 50 ms,
    /// for at most `timeout`; the settled value, or nil if it kept changing.
    static func settle(
        _ value: () -> Int, quiet: Duration = .milliseconds(500), timeout: Duration = .seconds(30)
    ) async -> Int? {
        let end = ContinuousClock.now + timeout
        var last = value()
        var since = ContinuousClock.now
        while ContinuousClock.now < end {
            try? await Task.sleep(for: .milliseconds(50))
            let now = value()
            if now != last || now == 0 {
                last = now
                since = .now
            } else if ContinuousClock.now - since >= quiet {
                return now
            }
        }
        return nil
    }

    /// Waits at most `seconds` for `condition`, looking every 5 ms; whether it held.
    static func wait(seconds: Double, until condition: () -> Bool) async -> Bool {
        let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while !condition() {
            guard ContinuousClock.now < end else { return false }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return true
    }

    /// Milliseconds since `start`, for figures.
    static func milliseconds(since start: ContinuousClock.Instant) -> Int {
        let elapsed = ContinuousClock.now - start
        return Int(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)
    }
}
