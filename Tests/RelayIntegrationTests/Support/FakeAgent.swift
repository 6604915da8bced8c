import NIOCore
import RelayProtocol

/// A hand-driven agent speaking the wire protocol line by line, for tests of the relay's
/// handling of good and bad peers on the agent port.
struct FakeAgent {
    let connection: TestClient.Connection

    static func connect(port: Int) async throws -> FakeAgent {
        FakeAgent(connection: try await TestClient.connect(port: port))
    }

    /// Runs `body` with a line-oriented view of the connection, then closes it.
    func session<T: Sendable>(_ body: (Lines) async throws -> T) async throws -> T {
        try await self.connection.executeThenClose { inbound, outbound in
            try await body(Lines(iterator: inbound.makeAsyncIterator(), outbound: outbound))
        }
    }

    final class Lines {
        var iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
        let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
        var framer = LineFramer(maxLineBytes: 1 << 20)

        init(
            iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator,
            outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
        ) {
            self.iterator = iterator
            self.outbound = outbound
        }

        func send(_ message: ControlMessage) async throws {
            try await self.outbound.write(ControlCodec.encode(message))
        }

        func sendRaw(_ text: String) async throws {
            try await self.outbound.write(ByteBuffer(string: text))
        }

        func sendRaw(_ bytes: [UInt8]) async throws {
            try await self.outbound.write(ByteBuffer(bytes: bytes))
        }

        /// The next message, or nil when the relay closed the connection.
        func receive() async throws -> ControlMessage? {
            while true {
                if let line = try self.framer.nextLine() { return try ControlCodec.decode(line) }
                guard let chunk = try await self.iterator.next() else { return nil }
                self.framer.append(chunk)
            }
        }

        /// Raw bytes after the handshake (what a data channel carries).
        func receiveBytes() async throws -> ByteBuffer? {
            if let rest = self.framer.takeRemainder() { return rest }
            return try await self.iterator.next()
        }

        /// Whether the relay closes the connection (reads until end of stream, ignoring data).
        func expectClosed() async -> Bool {
            do {
                while try await self.iterator.next() != nil {}
                return true
            } catch {
                return true
            }
        }

        /// Authenticates as `id` with `secret` and registers `services`; returns the relay's answer.
        func handshake(id: String, secret: String, services: [String]) async throws -> ControlMessage? {
            try await self.send(.hello(.init(agent: id)))
            guard case .challenge(let challenge)? = try await self.receive() else { throw HarnessError("no challenge") }
            let proof = Authenticator.proof(secret: Secret(secret), nonce: challenge.nonce, agentID: id)
            try await self.send(.auth(.init(proof: proof)))
            let welcome = try await self.receive()
            guard case .welcome? = welcome else { return welcome }
            try await self.send(.register(.init(services: services)))
            return try await self.receive()
        }
    }
}
