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
        let run = Running()
        let task = Task {
            let firstConnection: TCPConnection
            let secondConnection: TCPConnection
            do {
                firstConnection = try await Network.adopt(first, group: self.group)
            } catch {
                second.reset()
                return PumpOutcome.failed(endpoint: .first, reason: Network.describe(error))
            }
            do {
                secondConnection = try await Network.adopt(second, group: self.group)
            } catch {
                firstConnection.channel.abort()
                try? await firstConnection.executeThenClose { _, _ in }
                return PumpOutcome.failed(endpoint: .second, reason: Network.describe(error))
            }
            return await Self.pump(
                firstConnection, first.pending.withLock { $0 }, secondConnection, second.pending.withLock { $0 },
                pump: self.pump, meter: meter, limits: limits, run: run)
        }
        run.task.withLock { $0 = task }
        return run
    }

    private static func pump(
        _ first: TCPConnection, _ firstPending: [UInt8], _ second: TCPConnection, _ secondPending: [UInt8],
        pump: any SessionPump, meter: TrafficMeter, limits: PumpLimits, run: Running
    ) async -> PumpOutcome {
        var outcome = PumpOutcome.finished
        do {
            try await first.executeThenClose { firstIn, firstOut in
                try await second.executeThenClose { secondIn, secondOut in
                    let firstEnd = PumpEndpoint(
                        channel: first.channel, reader: InboundReader(firstIn, buffered: firstPending), writer: firstOut
                    )
                    let secondEnd = PumpEndpoint(
                        channel: second.channel, reader: InboundReader(secondIn, buffered: secondPending),
                        writer: secondOut)
                    // Pending bytes of one side are the other side's first bytes: the reader of
                    // the side they were read from hands them out first.
                    run.channels.withLock { $0 = [first.channel, second.channel] }
                    if let reason = run.killed.withLock({ $0 }) {
                        first.channel.abort()
                        second.channel.abort()
                        outcome = .failed(endpoint: .first, reason: reason)
                        return
                    }
                    outcome = await pump.run(firstEnd, secondEnd, meter: meter, limits: limits)
                    if let reason = run.killed.withLock({ $0 }) { outcome = .failed(endpoint: .first, reason: reason) }
                }
            }
        } catch {
            if outcome == .finished { outcome = .failed(endpoint: .first, reason: Network.describe(error)) }
        }
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
