import NIOCore
import NIOPosix
import Synchronization

/// The user-space data plane: adopts both sockets into NIO (`withConnectedSocket`) and runs
/// a ``SessionPump`` over them. The portable fallback, and the path for a session whose bytes
/// must pass through user space (TLS on the agent port).
public struct UserSpaceDataPlane: DataPlane, CustomStringConvertible {
    let pump: any SessionPump
    let group: any EventLoopGroup

    /// A data plane running `pump` on `group`'s event loops.
    public init(
        pump: any SessionPump = AsyncChannelPump(), group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.pump = pump
        self.group = group
    }

    /// "user space (AsyncChannelPump)", for logs and test figures.
    public var description: String { "user space (\(type(of: self.pump)))" }

    public func start(_ first: OwnedSocket, _ second: OwnedSocket, meter: TrafficMeter, limits: PumpLimits)
        -> any PumpRunning
    {
        self.start(links: .socket(first), .socket(second), meter: meter, limits: limits)
    }

    /// Starts pumping two session links: an owned socket is adopted into NIO here; an
    /// adopted connection (TLS) is pumped through the endpoint its handshake used, and
    /// released when the pump ends.
    public func start(links first: SessionLink, _ second: SessionLink, meter: TrafficMeter, limits: PumpLimits)
        -> any PumpRunning
    {
        let run = Running()
        let task = Task {
            let outcome = Outcome()
            do {
                try await Self.withEndpoint(first, group: self.group) { firstEnd in
                    do {
                        try await Self.withEndpoint(second, group: self.group) { secondEnd in
                            outcome.value = await Self.pump(
                                firstEnd, secondEnd, pump: self.pump, meter: meter, limits: limits, run: run)
                        }
                    } catch {
                        if outcome.value == nil {
                            firstEnd.channel.abort()
                            outcome.value = .failed(endpoint: .second, reason: Network.describe(error))
                        }
                    }
                }
            } catch {
                if outcome.value == nil {
                    second.reset()
                    second.close()
                    outcome.value = .failed(endpoint: .first, reason: Network.describe(error))
                }
            }
            return outcome.value ?? .finished
        }
        run.task.withLock { $0 = task }
        return run
    }

    /// The pump's outcome, set by whichever step decides it.
    private final class Outcome: @unchecked Sendable {
        var value: PumpOutcome?
    }

    /// Runs `body` with `link`'s endpoint: a socket is adopted and closed after `body`; an
    /// adopted connection is released after it.
    private static func withEndpoint(
        _ link: SessionLink, group: any EventLoopGroup, _ body: (PumpEndpoint) async throws -> Void
    ) async throws {
        switch link {
        case .socket(let socket):
            let pending = socket.pending.withLock { $0 }
            let connection = try await Network.adopt(socket, group: group)
            try await connection.executeThenClose { inbound, outbound in
                try await body(
                    PumpEndpoint(
                        channel: connection.channel, reader: InboundReader(inbound, buffered: pending),
                        writer: outbound))
            }
        case .adopted(let connection):
            defer { connection.release() }
            try await body(try await connection.endpoint())
        }
    }

    private static func pump(
        _ firstEnd: PumpEndpoint, _ secondEnd: PumpEndpoint, pump: any SessionPump, meter: TrafficMeter,
        limits: PumpLimits, run: Running
    ) async -> PumpOutcome {
        // Pending bytes of one side are the other side's first bytes: the reader of the side
        // they were read from hands them out first.
        run.channels.withLock { $0 = [firstEnd.channel, secondEnd.channel] }
        if let reason = run.killed.withLock({ $0 }) {
            firstEnd.channel.abort()
            secondEnd.channel.abort()
            return .failed(endpoint: .first, reason: reason)
        }
        let outcome = await pump.run(firstEnd, secondEnd, meter: meter, limits: limits)
        if let reason = run.killed.withLock({ $0 }) { return .failed(endpoint: .first, reason: reason) }
        return outcome
    }

    private final class Running: PumpRunning {
        let task = Mutex<Task<PumpOutcome, Never>?>(nil)
        let channels = Mutex<[any Channel]>([])
        let killed = Mutex<String?>(nil)

        func kill(reason: String) {
            self.killed.withLock { $0 = $0 ?? reason }
            for channel in self.channels.withLock({ $0 }) { channel.abort() }
        }

        var outcome: PumpOutcome {
            get async {
                guard let task = self.task.withLock({ $0 }) else {
                    return .failed(endpoint: .first, reason: "not started")
                }
                return await task.value
            }
        }
    }
}
