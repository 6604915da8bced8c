import Foundation
import NIOCore
import RelayControl
import Synchronization
import Testing

/// relayctl against the real daemons, run as a process: a live slow download is seen,
/// grows, is shown in detail, and is killed; reloads; every error's exit status; bad input.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct RelayctlTests {
    /// A client reading a trickle download through the relay until the relay closes it.
    final class SlowDownload: Sendable {
        let received = Atomic<Int>(0)
        let closedAt = Mutex<ContinuousClock.Instant?>(nil)
        let clientAddress: String
        private let connection: TestClient.Connection

        init(port: Int) async throws {
            self.connection = try await TestClient.connect(port: port)
            self.clientAddress = self.connection.channel.localAddress!.displayText
        }

        func run() async {
            try? await self.connection.executeThenClose { inbound, _ in
                do {
                    for try await chunk in inbound { self.received.add(chunk.readableBytes, ordering: .relaxed) }
                } catch {}
            }
            self.closedAt.withLock { $0 = .now }
        }
    }

    static let trickle = TargetServer.Behaviour.trickle(bytesPerTick: 2048, interval: .milliseconds(20))

    @Test func liveSessionIsShownGrowsAndIsKilled() async throws {
        let target = try await TargetServer.start(Self.trickle)
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "slow", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["slow": target.port])
            let proxySocket = relay.directory + "/proxy.sock"
            let agentSocket = relay.directory + "/agent-office.sock"
            let download = try await SlowDownload(port: relay.servicePort("slow"))
            let reader = Task { await download.run() }
            defer { reader.cancel() }
            try await relay.proxy.waitForLine(containing: "session attached")

            // status, both daemons, both formats.
            let status = try await Relayctl.json(["--socket", proxySocket, "status"]) as! [String: Any]
            #expect(status["role"] as? String == "proxy")
            #expect(status["version"] as? String != nil)
            #expect(status["uptimeSeconds"] as? Double != nil)
            #expect(status["sessions"] as? Int == 1)
            #expect((status["agents"] as? [[String: Any]])?.first?["connected"] as? Bool == true)
            #expect((status["services"] as? [[String: Any]])?.first?["name"] as? String == "slow")
            let statusText = try await Relayctl.ok(["status", "--socket", proxySocket])
            #expect(statusText.contains("relay-proxy"))
            #expect(statusText.contains("1/1 connected"))
            #expect(statusText.contains("slow"))
            let agentStatus = try await Relayctl.json(["--socket", agentSocket, "status"]) as! [String: Any]
            #expect(agentStatus["role"] as? String == "agent")
            #expect((agentStatus["relay"] as? [String: Any])?["state"] as? String == "connected")
            #expect(agentStatus["sessions"] as? Int == 1)

            // sessions: the session with its service and client, bytes growing between two calls.
            let first = try await Self.onlySession(proxySocket)
            let id = try #require(first["id"] as? String)
            #expect(first["service"] as? String == "slow")
            #expect(first["client"] as? String == download.clientAddress)
            #expect(first["state"] as? String == "open")
            #expect(first["startedAt"] as? String != nil)
            #expect(first["bytesIn"] as? Int == 0)
            let before = try #require(first["bytesOut"] as? Int)
            var after = before
            let deadline = ContinuousClock.now + .seconds(10)
            while after <= before && ContinuousClock.now < deadline {
                after = try await Self.onlySession(proxySocket)["bytesOut"] as? Int ?? before
            }
            #expect(after > before, "bytesOut did not grow from \(before)")
            let atAgent = try await Self.onlySession(agentSocket)
            #expect(atAgent["id"] as? String == id)
            #expect(atAgent["client"] as? String == download.clientAddress)
            let sessionsText = try await Relayctl.ok(["--socket", proxySocket, "sessions", "--service", "slow"])
            #expect(sessionsText.contains(id))
            #expect(sessionsText.contains(download.clientAddress))
            #expect(sessionsText.contains("slow"))
            #expect(sessionsText.contains("KiB") || sessionsText.contains("MiB"))

            // session ID: everything, including the data channel and (at the agent) the target.
            let detail = try await Relayctl.ok(["--socket", proxySocket, "session", id])
            #expect(detail.contains(id))
            #expect(detail.contains("data channel"))
            #expect(detail.contains(download.clientAddress))
            let agentDetail = try await Relayctl.ok(["--socket", agentSocket, "session", id])
            #expect(agentDetail.contains("127.0.0.1:\(target.port)"))

            // kill: both sides end within a second, and both logs say so.
            let killedAt = ContinuousClock.now
            let killed = try await Relayctl.run(["--socket", proxySocket, "kill", id])
            #expect(killed.status == 0, "\(killed)")
            #expect(killed.stdout.contains("killed"))
            await reader.value
            let clientClosed = try #require(download.closedAt.withLock { $0 })
            #expect(clientClosed - killedAt < .seconds(1))
            try await relay.proxy.waitForLine(
                containing: "session=\(id)", "session closed", "killed by operator", timeout: .seconds(10))
            try await agent.waitForLine(containing: "session=\(id)", "session closed", timeout: .seconds(10))
            #expect(relay.proxy.lines(containing: "session=\(id)", "session killed by operator").count == 1)
            try await target.waitForClosed(1, timeout: .seconds(10))

            // The session is gone: unknown session, its own exit status and one line.
            let again = try await Relayctl.run(["--socket", proxySocket, "kill", id])
            #expect(again.status == 6, "\(again)")
            #expect(again.isOneErrorLine, "\(again)")
            #expect(again.stderr.contains(id))
            let detailAgain = try await Relayctl.run(["--socket", agentSocket, "session", id])
            #expect(detailAgain.status == 6, "\(detailAgain)")
            let empty = try await Relayctl.json(["--socket", proxySocket, "sessions"]) as? [Any]
            #expect(empty?.isEmpty == true)
        }
    }

    @Test func reloadAppliesANewServiceAndRefusesABrokenConfig() async throws {
        let target = try await TargetServer.start(.echo)
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")], services: [.init(name: "a", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            // The agent offers "b" from the start; the relay takes it once its config has it.
            try await relay.startAgent(id: "office", services: ["a": target.port, "b": target.port])
            let socket = relay.directory + "/proxy.sock"
            let path = relay.directory + "/proxy.json"
            var config =
                try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
            var services = config["services"] as! [[String: Any]]
            services.append(["name": "b", "agent": "office", "listen": "127.0.0.1:0"])
            config["services"] = services
            _ = try relay.write(config, to: "proxy.json")

            let applied = try await Relayctl.run(["--socket", socket, "reload"])
            #expect(applied.status == 0, "\(applied)")
            #expect(applied.stdout.contains("service 'b' added on 127.0.0.1:"))
            let line = try await relay.proxy.waitForLine(containing: "listening", "service=b")
            let port = RelayFixture.port(in: line)
            let reply = try await TestClient.exchange(port: port, request: Array("ping".utf8))
            #expect(reply == Array("ping".utf8))
            let listed = try await Relayctl.json(["--socket", socket, "services"]) as! [[String: Any]]
            #expect(listed.map { $0["name"] as? String } == ["a", "b"])

            config["bogusKey"] = true
            _ = try relay.write(config, to: "proxy.json")
            let refused = try await Relayctl.run(["--socket", socket, "reload"])
            #expect(refused.status == 7, "\(refused)")
            #expect(refused.isOneErrorLine, "\(refused)")
            #expect(refused.stderr.contains("$.bogusKey"))
            #expect(refused.stderr.contains("unknown key"))
            let refusedJSON = try await Relayctl.run(["--socket", socket, "--json", "reload"])
            #expect(refusedJSON.status == 7)
            let outcome = try refusedJSON.json() as? [String: Any]
            #expect(outcome?["applied"] as? Bool == false)
            // The old config stays: both services still work.
            #expect(try await TestClient.exchange(port: port, request: Array("pong".utf8)) == Array("pong".utf8))
        }
    }

    @Test func everyErrorHasItsExitStatusAndOneLine() async throws {
        let directory = NSTemporaryDirectory() + "relayctl-errors-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }

        let missing = try await Relayctl.run(["--socket", directory + "/proxy.sock", "status"])
        #expect(missing.status == 3, "\(missing)")
        #expect(missing.isOneErrorLine, "\(missing)")
        #expect(missing.stderr.contains("no such file (is relay-proxy running?)"))

        let stalePath = directory + "/agent.sock"
        _ = try UnixSocket.bind(stalePath, listening: false)
        let stale = try await Relayctl.run(["--socket", stalePath, "sessions"])
        #expect(stale.status == 3, "\(stale)")
        #expect(stale.isOneErrorLine, "\(stale)")
        #expect(stale.stderr.contains("connection refused"))

        let silentPath = directory + "/silent.sock"
        let silent = try UnixSocket.bind(silentPath, listening: true)
        let slow = try await Relayctl.run(["--socket", silentPath, "--timeout", "0.3", "status"])
        #expect(slow.status == 5, "\(slow)")
        #expect(slow.isOneErrorLine, "\(slow)")
        #expect(slow.stderr.contains("no answer"))

        chmod(silentPath, 0)
        let asNobody = getuid() == 0 ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : []
        if getuid() != 0 || FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") {
            chmod(directory, 0o755)
            let denied = try await Relayctl.run(["--socket", silentPath, "status"], asUser: asNobody)
            #expect(denied.status == 4, "\(denied)")
            #expect(denied.isOneErrorLine, "\(denied)")
            #expect(denied.stderr.contains("permission denied"))
        }
        withExtendedLifetime(silent) {}

        let usage = try await Relayctl.run(["frobnicate"])
        #expect(usage.status == 64, "\(usage)")
        let noID = try await Relayctl.run(["--socket", silentPath, "kill"])
        #expect(noID.status == 64, "\(noID)")
    }

    @Test func garbageOnTheControlSocketLeavesTheDaemonServing() async throws {
        let target = try await TargetServer.start(.echo)
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")], services: [.init(name: "e", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            try await relay.startAgent(id: "office", services: ["e": target.port])
            let socket = relay.directory + "/proxy.sock"
            let agentSocket = relay.directory + "/agent-office.sock"

            let connection = try UnixSocket.connect(socket)
            try connection.send("garbage\n")
            #expect(try connection.readLine()?.contains("\"bad_json\"") == true)
            try connection.send("{\"id\":7}\n")
            let badRequest = try connection.readLine() ?? ""
            #expect(badRequest.contains("\"bad_request\"") && badRequest.contains("\"id\":7"))
            try connection.send("{\"id\":8,\"command\":\"selfdestruct\"}\n")
            let unknown = try connection.readLine() ?? ""
            #expect(unknown.contains("\"unknown_command\"") && unknown.contains("\"id\":8"))
            try connection.send("{\"id\":9,\"command\":\"status\"}\n")
            let answer = try connection.readLine() ?? ""
            #expect(answer.contains("\"ok\":true") && answer.contains("\"id\":9"))
            try connection.send(String(repeating: "x", count: 200_000))
            #expect(try connection.readLine()?.contains("\"line_too_long\"") == true)
            #expect(try connection.readLine() == nil, "the connection is closed after an over-long line")

            let rejected = try await Relayctl.run(["--socket", agentSocket, "agents"])
            #expect(rejected.status == 8, "\(rejected)")
            #expect(rejected.isOneErrorLine, "\(rejected)")
            let unknownService = try await Relayctl.run(["--socket", socket, "sessions", "--service", "nope"])
            #expect(unknownService.status == 6, "\(unknownService)")

            // Still serving, both the control socket and clients.
            let status = try await Relayctl.json(["--socket", socket, "status"]) as? [String: Any]
            #expect(status?["role"] as? String == "proxy")
            #expect(try await TestClient.exchange(port: relay.servicePort("e"), request: [1, 2, 3]) == [1, 2, 3])
            #expect(relay.proxy.isRunning)
        }
    }

    /// Connections past `ControlSocketLimits.maxConnections` are closed at once; the
    /// daemon goes on serving the others and its clients.
    @Test func controlConnectionsPastTheLimitAreClosedAndTheDaemonServesOn() async throws {
        let target = try await TargetServer.start(.echo)
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")], services: [.init(name: "e", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            try await relay.startAgent(id: "office", services: ["e": target.port])
            let socket = relay.directory + "/proxy.sock"
            // Each held connection is known to be served once it has answered a request.
            var held: [UnixSocket] = []
            for id in 0..<ControlSocketLimits.maxConnections {
                let connection = try UnixSocket.connect(socket)
                try connection.send("{\"id\":\(id),\"command\":\"status\"}\n")
                #expect(try connection.readLine()?.contains("\"ok\":true") == true)
                held.append(connection)
            }
            for _ in 0..<3 {
                let extra = try UnixSocket.connect(socket)
                #expect(try extra.readLine() == nil, "a connection past the limit is closed at once")
            }
            // Logged once per interval (the limit's hits count all three).
            try await relay.proxy.waitForLine(containing: "control connection refused: 64 connections are open")
            held.removeAll()
            let status = try await Relayctl.run(["--socket", socket, "status"])
            #expect(status.status == 0, "\(status)")
            #expect(try await TestClient.exchange(port: relay.servicePort("e"), request: [1, 2, 3]) == [1, 2, 3])
            #expect(relay.proxy.isRunning)
        }
    }

    @Test func aLiveSocketIsNotTakenOverAndAStaleOneIsReplaced() async throws {
        try await withFixture(agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")], services: []) { relay in
            let proxy = try await relay.startProxy()
            let socket = relay.directory + "/proxy.sock"
            var mode = stat()
            #expect(stat(socket, &mode) == 0 && mode.st_mode & 0o777 == 0o660)

            let second = try DaemonProcess(
                "relay-proxy", arguments: ["--config", relay.directory + "/proxy.json"], name: "second")
            #expect(try await second.waitForExit() == 1)
            #expect(second.lines(containing: "in use by a running daemon").count == 1, "\(second.log)")
            #expect(try await Relayctl.json(["--socket", socket, "status"]) is [String: Any])

            proxy.signal(SIGKILL)
            try await proxy.waitForExit()
            #expect(FileManager.default.fileExists(atPath: socket), "a killed daemon leaves its socket file")
            try await relay.startProxy()
            #expect(try await Relayctl.json(["--socket", socket, "status"]) is [String: Any])

            await relay.proxy.stop()
            #expect(!FileManager.default.fileExists(atPath: socket), "a clean shutdown removes the socket file")
        }
    }

    static func onlySession(_ socket: String) async throws -> [String: Any] {
        let sessions = try await Relayctl.json(["--socket", socket, "sessions"]) as? [[String: Any]] ?? []
        guard sessions.count == 1 else { throw HarnessError("expected one session on \(socket), got \(sessions)") }
        return sessions[0]
    }
}

extension SocketAddress {
    /// `ip:port` as the daemons print it.
    var displayText: String {
        guard let ip = self.ipAddress, let port = self.port else { return "\(self)" }
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}
