import Foundation
import Logging
import NIOCore
import NIOPosix
import RelayCore
import RelayProtocol
import ServiceLifecycle
import Synchronization

/// The relay daemon: binds the agent port and every service's listener, serves them until
/// a graceful shutdown, then stops accepting and lets live sessions drain.
public final class ProxyServer: Service, Sendable {
    /// Why the relay could not start.
    public struct StartError: Error, CustomStringConvertible {
        public let description: String
    }

    private let state: ProxyState
    private let group: any EventLoopGroup
    private let logger: Logger
    private let pump: any SessionPump
    private let onReady: @Sendable () -> Void
    private let listeners = Mutex<[TCPListener]>([])

    /// Creates the relay; `onReady` runs once every listener is bound.
    public init(
        config: ProxyConfig,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger,
        pump: any SessionPump = AsyncChannelPump(),
        onReady: @escaping @Sendable () -> Void = {}
    ) {
        self.state = ProxyState(config: config)
        self.group = group
        self.logger = logger
        self.pump = pump
        self.onReady = onReady
    }

    public func run() async throws {
        let config = self.state.config
        let agentListener = try await self.bind(config.listen, what: "agent port", metadata: ["role": "agents"])
        var serviceListeners: [(String, TCPListener)] = []
        for service in config.services {
            let listener = try await self.bind(
                service.listen, what: "service '\(service.name)'", metadata: ["service": "\(service.name)"])
            serviceListeners.append((service.name, listener))
        }
        self.logger.info(
            "relay-proxy ready",
            metadata: [
                "version": "\(RelayVersion.current)", "agents": "\(config.agents.count)",
                "services": "\(config.services.count)",
            ])
        self.onReady()

        let agentPort = AgentPort(state: self.state, logger: self.logger)
        let clients = ClientHandler(state: self.state, pump: self.pump, logger: self.logger)
        await withDiscardingTaskGroup { group in
            group.addTask {
                await Self.acceptLoop(agentListener, logger: self.logger) { await agentPort.handle($0) }
            }
            for (name, listener) in serviceListeners {
                group.addTask {
                    await Self.acceptLoop(listener, logger: self.logger) { await clients.handle($0, service: name) }
                }
            }
            group.addTask { await self.shutdownWhenAsked(drainTimeout: config.drainTimeout) }
        }
        self.logger.info("relay-proxy stopped")
    }

    /// Waits for graceful shutdown (SIGTERM), then stops accepting, drops the control
    /// channels and gives live sessions `drainTimeout` to finish before closing them.
    private func shutdownWhenAsked(drainTimeout: Double) async {
        let graceful = (try? await gracefulShutdown()) != nil
        let live = self.state.sessions.count
        self.logger.info(
            "shutting down: no longer accepting",
            metadata: ["sessions": "\(live)", "drainTimeoutSeconds": "\(drainTimeout)"])
        for listener in self.listeners.withLock({ $0 }) { listener.channel.close(promise: nil) }
        for agent in self.state.agents { agent.close(.shuttingDown, "the relay is shutting down") }
        for session in self.state.sessions where { if case .pending = $0.phase { true } else { false } }(session) {
            session.fail(.shuttingDown)
        }
        if graceful, live > 0, await self.state.waitForNoSessions(timeout: .seconds(drainTimeout)) {
            self.logger.info("all sessions drained")
        }
        for session in self.state.sessions {
            self.logger.warning("closing a session still live at shutdown", metadata: ["session": "\(session.id)"])
            session.terminate(.shuttingDown)
        }
    }

    private func bind(_ address: HostPort, what: String, metadata: Logger.Metadata) async throws -> TCPListener {
        let listener: TCPListener
        do {
            listener = try await Network.listen(on: try address.resolve(), group: self.group)
        } catch {
            throw StartError(description: "cannot listen on \(address) for the \(what): \(Network.describe(error))")
        }
        self.listeners.withLock { $0.append(listener) }
        var metadata = metadata
        metadata["address"] = "\(listener.channel.localAddress?.displayString ?? "\(address)")"
        self.logger.info("listening", metadata: metadata)
        return listener
    }

    private static func acceptLoop(
        _ listener: TCPListener,
        logger: Logger,
        handler: @escaping @Sendable (TCPConnection) async -> Void
    ) async {
        do {
            try await listener.executeThenClose { inbound in
                try await withThrowingDiscardingTaskGroup { group in
                    for try await connection in inbound {
                        group.addTask { await handler(connection) }
                    }
                }
            }
        } catch {
            logger.error("listener failed: \(error)")
        }
    }
}
