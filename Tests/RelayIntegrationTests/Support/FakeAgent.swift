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

        /// Authenticates as `id` with `secret` (checking the relay's proof too) and registers
        /// `services`; returns the relay's answer.
        func handshake(id: String, secret: String, services: [String]) async throws -> ControlMessage? {
            let agentNonce = Authenticator.makeNonce()
            try await self.send(.hello(.init(agent: id, nonce: agentNonce)))
            guard case .challenge(let challenge)? = try await self.receive() else { throw HarnessError("no challenge") }
            let handshake = Authenticator.Handshake(relayNonce: challenge.nonce, agentNonce: agentNonce, agentID: id)
            try await self.send(.auth(.init(proof: Authenticator.agentProof(secret: Secret(secret), handshake))))
            let welcome = try await self.receive()
            guard case .welcome(let accepted)? = welcome else { return welcome }
            guard Authenticator.verifyRelay(proof: accepted.proof, secret: Secret(secret), handshake) else {
                throw HarnessError("the relay's welcome proof is wrong")
            }
            try await self.send(.register(.init(services: services)))
            return try await self.receive()
        }

        /// Plays the relay's side of a handshake for an agent holding `secret` (nil: a fake
        /// relay that does not know it, and sends a made-up proof); returns the agent's
        /// `register`, or nil when the agent sent something else (the message is in `last`).
        func serveAgent(secret: String?, heartbeatSeconds: Double = 10) async throws -> ControlMessage.Register? {
            guard case .hello(let hello)? = try await self.receive() else { throw HarnessError("no hello") }
            let nonce = Authenticator.makeNonce()
            try await self.send(.challenge(.init(nonce: nonce)))
            guard case .auth? = try await self.receive() else { throw HarnessError("no auth") }
            let handshake = Authenticator.Handshake(
                relayNonce: nonce, agentNonce: hello.nonce ?? "", agentID: hello.agent)
            let proof =
                secret.map { Authenticator.relayProof(secret: Secret($0), handshake) }
                ?? String(repeating: "0", count: 64)
            try await self.send(.welcome(.init(heartbeatSeconds: heartbeatSeconds, proof: proof)))
            let next = try await self.receive()
            self.last = next
            guard case .register(let register)? = next else { return nil }
            try await self.send(.registered(.init(accepted: register.services, refused: [])))
            return register
        }

        /// The last message ``serveAgent(secret:heartbeatSeconds:)`` received.
        var last: ControlMessage?
    }
}

extension ControlMessage.Attach {
    /// The `attach` an agent holding `secret` sends for `connect`.
    static func proved(_ connect: ControlMessage.Connect, secret: String) -> Self {
        self.proved(session: connect.session, token: connect.token, secret: secret)
    }

    /// The `attach` for `session` with `token`, its proof made with `secret`.
    static func proved(session: String, token: String, secret: String) -> Self {
        Self(
            session: session, token: token,
            proof: Authenticator.attachProof(secret: Secret(secret), session: session, token: token))
    }
}
