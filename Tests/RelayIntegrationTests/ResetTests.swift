import NIOCore
import Testing

/// A reset (or any error) on one connection tears the whole session down at once, at every
/// hop: a half-open session never lingers behind a connection that was reset.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct ResetTests {
    /// The silent target ignores a FIN and never writes, so only a reset passed on by the
    /// relay and the agent closes its connection.
    @Test func clientResetClosesTheTargetConnection() async throws {
        let target = try await TargetServer.start(.silent)
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")], services: [.init(name: "t", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["t": target.port])
            let baseline = relay.baseline()
            let connection = try await TestClient.connect(port: relay.servicePort("t"))
            try await connection.executeThenClose { _, outbound in
                try await outbound.write(ByteBuffer(string: "hello"))
                try await agent.waitForLine(containing: "session attached")
                TestClient.reset(connection.channel)
                try await target.waitForClosed(1, timeout: .seconds(10))
            }
            try await relay.proxy.waitForLine(containing: "session closed", "reason=\"client:")
            try await agent.waitForLine(containing: "session closed", "reason=\"relay side:")
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }

    /// The client keeps its own side open: only a reset passed on by the relay ends the
    /// session there (a FIN would leave it half-open, waiting for the client).
    @Test func targetResetResetsTheClient() async throws {
        let target = try await TargetServer.start(.resetOnRead)
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")], services: [.init(name: "r", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["r": target.port])
            let baseline = relay.baseline()
            let connection = try await TestClient.connect(port: relay.servicePort("r"))
            try await connection.executeThenClose { inbound, outbound in
                try await outbound.write(ByteBuffer(string: "hello"))
                try await agent.waitForLine(containing: "session closed", "reason=\"target:")
                try await relay.proxy.waitForLine(containing: "session closed", "reason=\"agent side:")
                await #expect(throws: (any Error).self, "the client sees a reset, not a clean end of stream") {
                    for try await _ in inbound {}
                }
            }
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }
}
