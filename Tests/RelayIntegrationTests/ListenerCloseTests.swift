import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// A listener that closes while clients are connecting (SIGTERM, a reload that removes a
/// service) never takes the daemon down: every connection accepted in that moment is
/// closed properly, however far the listener got with it.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct ListenerCloseTests {
    /// Connections opened (and at once closed again) per flood, at most.
    static let floodConnections = 20_000
    /// Concurrent connectors of a flood.
    static let floodWidth = 8
    /// The signal goes once the flood is in full swing.
    static let connectionsBeforeTheSignal = 200

    @Test func sigtermDuringAFloodOfClientsExitsZero() async throws {
        for round in 1...3 {
            try await withFixture(
                agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
                services: [.init(name: "web", agent: "office")]
            ) { relay in
                let proxy = try await relay.startProxy()
                let port = relay.servicePort("web")
                let connected = try await Self.flood(port: port) { connected in
                    if connected == Self.connectionsBeforeTheSignal { proxy.signal(SIGTERM) }
                } until: {
                    !proxy.isRunning
                }
                #expect(connected >= Self.connectionsBeforeTheSignal, "the flood never got going")
                let exit = try await proxy.waitForExit()
                #expect(
                    exit == 0,
                    "round \(round): relay-proxy exited with \(exit); log:\n\(proxy.log.suffix(5).joined(separator: "\n"))"
                )
            }
        }
    }

    @Test func aReloadRemovingAServiceDuringAFloodKeepsServing() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "kept", agent: "office"), .init(name: "gone", agent: "office")]
        ) { relay in
            let proxy = try await relay.startProxy()
            try await relay.startAgent(id: "office", services: ["kept": echo.port])
            let path = relay.directory + "/proxy.json"
            var config =
                try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
            config["services"] = (config["services"] as! [[String: Any]]).filter { $0["name"] as? String == "kept" }
            _ = try relay.write(config, to: "proxy.json")
            let connected = try await Self.flood(port: relay.servicePort("gone")) { connected in
                if connected == Self.connectionsBeforeTheSignal { proxy.signal(SIGHUP) }
            } until: {
                !proxy.lines(containing: "service 'gone' removed").isEmpty || !proxy.isRunning
            }
            #expect(connected >= Self.connectionsBeforeTheSignal, "the flood never got going")
            #expect(proxy.isRunning, "log:\n\(proxy.log.suffix(5).joined(separator: "\n"))")
            // The reload did happen, during the flood: otherwise this test shows nothing.
            try await proxy.waitForLine(containing: "config reloaded", "service 'gone' removed")
            #expect(try await TestClient.exchange(port: relay.servicePort("kept"), request: [1, 2, 3]) == [1, 2, 3])
        }
    }

    /// Connects to `port` and closes each connection again, from several tasks at once,
    /// calling `onConnect` with the running count, until `done` holds (checked between
    /// connections), the port refuses, or `floodConnections` were made. Returns the count.
    static func flood(
        port: Int,
        onConnect: @escaping @Sendable (Int) -> Void,
        until done: @escaping @Sendable () -> Bool
    ) async throws -> Int {
        let count = SilentRelay.Counter()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<Self.floodWidth {
                group.addTask {
                    while !done(), count.value.load(ordering: .relaxed) < Self.floodConnections {
                        guard let connection = try? await TestClient.connect(port: port) else { break }
                        try? await connection.executeThenClose { _, _ in }
                        onConnect(count.value.add(1, ordering: .relaxed).newValue)
                    }
                }
            }
        }
        return count.value.load(ordering: .relaxed)
    }
}
