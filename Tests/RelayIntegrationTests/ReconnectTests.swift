import Foundation
import NIOCore
import Testing

/// A live session outlives its control channel. (The agent or relay killed with SIGKILL,
/// and coming back: `FaultTests`.)
@Suite(.serialized, .timeLimit(.minutes(2)))
struct ReconnectTests {
    /// Sessions are independent connections: losing the control channel does not end them.
    @Test func liveSessionSurvivesTheLossOfTheControlChannel() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "web", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let first = try await relay.startAgent(id: "office", services: ["web": echo.port])
            let connection = try await TestClient.connect(port: relay.servicePort("web"))
            try await connection.executeThenClose { inbound, outbound in
                var replies = inbound.makeAsyncIterator()
                try await outbound.write(ByteBuffer(string: "one"))
                #expect(try await replies.next().map { String(buffer: $0) } == "one")
                // A second agent process with the same id takes over the control channel.
                try await relay.startAgent(id: "office", services: ["web": echo.port])
                try await relay.proxy.waitForLine(containing: "closing its previous control channel")
                try await first.waitForLine(containing: "relay connection lost", "replaced")
                try await outbound.write(ByteBuffer(string: "two"))
                #expect(try await replies.next().map { String(buffer: $0) } == "two")
            }
            await first.stop()
        }
    }
}
