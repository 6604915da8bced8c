import Foundation
import Logging
import NIOCore
import NIOPosix
import RelayCore
import RelayProtocol
import ServiceLifecycle

/// The agent daemon: keeps one control channel to the relay (reconnecting with backoff),
/// serves `connect` requests as independent sessions, and drains them at shutdown.
public final class AgentServer: Service, Sendable {
    /// A connection that lasted this long, registered, resets the reconnect backoff.
    public static let stableConnectionSeconds = 5.0

    private let state: AgentState
    private let group: any EventLoopGroup
    private let logger: Logger
    private let pump: any SessionPump
    private let onReady: @Sendable () -> Void
    private let requests: AsyncStream<(ControlMessage.Connect, AgentControlChannel)>
    private let requestInput: AsyncStream<(ControlMessage.Connect, AgentControlChannel)>.Continuation

    /// Creates the agent; `onReady` runs once the first connection attempt is under way.
    public init(
        config: AgentConfig,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger,
        pump: any SessionPump = AsyncChannelPump(),
        onReady: @escaping @Sendable () -> Void = {}
    ) {
        self.state = AgentState(config: config)
        self.group = group
        self.logger = logger
        self.pump = pump
        self.onReady = onReady
        (self.requests, self.requestInput) = AsyncStream.makeStream()
    }

    public func run() async throws {
        let config = self.state.config
        self.logger.info(
            "relay-agent starting",
            metadata: [
                "version": "\(RelayVersion.current)", "agent": "\(config.id)", "relay": "\(config.relay)",
                "services": "\(config.services.count)",
            ]
        )
        let runner = SessionRunner(state: self.state, group: self.group, pump: self.pump, logger: self.logger)
        await withDiscardingTaskGroup { group in
            group.addTask {
                // Sessions are independent of the control channel that asked for them.
                await withDiscardingTaskGroup { sessions in
                    for await (connect, control) in self.requests {
                        sessions.addTask { await runner.run(connect, control: control) }
                    }
                }
            }
            group.addTask { await self.connectLoop() }
            group.addTask { await self.shutdownWhenAsked(drainTimeout: config.drainTimeout) }
            self.onReady()
        }
        self.logger.info("relay-agent stopped")
    }

    /// Keeps a control channel to the relay until shutdown (S1–S4, again after every loss).
    private func connectLoop() async {
        let config = self.state.config
        var backoff = Backoff(
            initial: .seconds(config.reconnectInitialDelay), maximum: .seconds(config.reconnectMaxDelay))
        var attempt = 0
        while !self.state.isShuttingDown {
            attempt += 1
            self.state.connection = .connecting(attempt: attempt)
            let started = ContinuousClock.now
            let reason: String
            do {
                let connection = try await Network.dial(
                    config.relay, timeout: .fromSeconds(config.connectTimeout), group: self.group)
                guard self.state.setControlChannel(connection.channel) else {
                    connection.channel.close(promise: nil)
                    break
                }
                let control = AgentControlChannel(
                    config: config,
                    logger: self.logger,
                    channel: connection.channel,
                    onRegistered: { [state] in state.connection = .connected(since: Date()) },
                    onConnect: { [requestInput] in requestInput.yield(($0, $1)) }
                )
                let outcome = await control.run(connection)
                _ = self.state.setControlChannel(nil)
                reason = outcome.reason
                if outcome.registered {
                    attempt = 0
                    if ContinuousClock.now - started >= .seconds(Self.stableConnectionSeconds) { backoff.reset() }
                }
            } catch {
                reason = "cannot connect to \(config.relay): \(Network.describe(error))"
            }
            guard !self.state.isShuttingDown else { break }
            let delay = backoff.next()
            self.state.connection = .waiting(until: Date() + delay.inSeconds, lastError: reason)
            self.logger.warning(
                "relay connection lost: \(reason)",
                metadata: ["retryInSeconds": "\(String(format: "%.1f", delay.inSeconds))"]
            )
            guard (try? await Task.sleep(for: delay)) != nil else { break }
        }
    }

    /// Waits for graceful shutdown (SIGTERM), then closes the control channel and gives
    /// live sessions `drainTimeout` to finish before closing them.
    private func shutdownWhenAsked(drainTimeout: Double) async {
        let graceful = (try? await gracefulShutdown()) != nil
        self.state.beginShutdown()?.close(promise: nil)
        let live = self.state.sessions.count
        self.logger.info("shutting down", metadata: ["sessions": "\(live)", "drainTimeoutSeconds": "\(drainTimeout)"])
        if graceful, live > 0, await self.state.waitForNoSessions(timeout: .seconds(drainTimeout)) {
            self.logger.info("all sessions drained")
        }
        for session in self.state.sessions {
            self.logger.warning("closing a session still live at shutdown", metadata: ["session": "\(session.id)"])
            session.terminate()
        }
        self.requestInput.finish()
    }
}
