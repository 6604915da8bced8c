import NIOCore
import NIOPosix

/// A client outside the firewall: a plain TCP connection to a relay service's port.
enum TestClient {
    typealias Connection = NIOAsyncChannel<ByteBuffer, ByteBuffer>

    static func connect(port: Int, host: String = "127.0.0.1") async throws -> Connection {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try Connection(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(isOutboundHalfClosureEnabled: true)
                    )
                }
            }
    }

    /// Wraps a socket connected elsewhere, e.g. inside a network namespace
    /// (``NetNamespace/connectedSocket(port:)``); the connection owns the socket from now on.
    static func connect(socket: NIOBSDSocket.Handle) async throws -> Connection {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .withConnectedSocket(socket) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try Connection(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(isOutboundHalfClosureEnabled: true)
                    )
                }
            }
    }

    /// Sends `request`, half-closes, and returns everything received until the server closes.
    static func exchange(port: Int, request: [UInt8], host: String = "127.0.0.1") async throws -> [UInt8] {
        let connection = try await self.connect(port: port, host: host)
        return try await connection.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(bytes: request))
            outbound.finish()
            var reply: [UInt8] = []
            for try await chunk in inbound { reply += chunk.readableBytesView }
            return reply
        }
    }

    /// Closes `channel` abortively: SO_LINGER 0, so the peer gets a reset instead of a FIN.
    static func reset(_ channel: any Channel) {
        let provider = channel as! any SocketOptionProvider
        provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    /// Connects and measures how long until the relay closes the connection; fails if it
    /// stays open past `limit`. The clock starts before the connect: the relay's timers start
    /// at its accept, which can come before this task sees the connection (CI once measured
    /// 1.4996 s for a 1.5 s attach timeout with the clock started after the connect).
    static func timeUntilClosed(port: Int, limit: Duration = .seconds(5)) async throws -> Duration {
        let start = ContinuousClock.now
        let connection = try await self.connect(port: port)
        return try await connection.executeThenClose { inbound, _ in
            try await withThrowingTaskGroup(of: Duration?.self) { group in
                group.addTask {
                    do {
                        for try await _ in inbound {}
                    } catch {}
                    return ContinuousClock.now - start
                }
                group.addTask {
                    try await Task.sleep(for: limit)
                    return nil
                }
                let first = try await group.next()!
                group.cancelAll()
                guard let elapsed = first else {
                    connection.channel.close(promise: nil)
                    throw HarnessError("the relay kept the client open for over \(limit)")
                }
                return elapsed
            }
        }
    }
}
