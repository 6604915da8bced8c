import NIOCore
import NIOPosix

/// A listener on 127.0.0.1 standing in for a relay: a test accepts the agent's connections
/// from it and drives them by hand (`FakeAgent.Lines` speaks the protocol).
enum FakeRelay {
    typealias Listener = NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>

    /// A listener on a port chosen by the system, and that port.
    static func listen() async throws -> (listener: Listener, port: Int) {
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return (listener, listener.channel.localAddress!.port!)
    }
}

extension RelayFixture {
    /// Starts an agent `office` that offers `web` (at `target`) to the relay at
    /// 127.0.0.1:`port` (a ``FakeRelay``), with `secret` and any further `options`.
    func startAgent(
        relayPort port: Int, secret: String, target: String, options: [String: Any] = [:]
    ) throws -> DaemonProcess {
        var config: [String: Any] = [
            "relay": "127.0.0.1:\(port)", "id": "office", "secret": secret,
            "control": self.directory + "/agent.sock",
            "services": [["name": "web", "target": target]],
        ]
        config.merge(options) { _, new in new }
        return try DaemonProcess(
            "relay-agent", arguments: ["--config", try self.write(config, to: "agent.json")], name: "agent")
    }
}
