import Foundation
import NIOCore
import RelayCore
import Testing

/// The real daemons under systemd's own `systemd-socket-activate` (named descriptors), with
/// the test's own NOTIFY_SOCKET and WATCHDOG_USEC: readiness, watchdog, socket activation,
/// reload and stop as systemd sees them, without a systemd as PID 1.
@Suite("systemd on the host")
struct SystemdHostTests {
    /// READY=1 comes only once every listener works: the one the proxy binds itself accepts
    /// at once, and a tunnel session works.
    @Test func readyOnlyOnceTheListenersWork() async throws {
        try await withSystemdScope { scope in
            let echo = try await scope.target(.echo)
            let webPort = try await TargetServer.closedPort()
            let proxy = try await scope.activateProxy(names: ["agents"]) { ports in
                scope.proxyConfig(agentPort: ports["agents"]!, services: ["web": webPort])
            }
            #expect(scope.notify.messages.isEmpty, "systemd-socket-activate starts the proxy on the first connection")
            // The agent's first dial is the first connection: it starts the proxy.
            let agent = try scope.startAgent(relayPort: proxy.ports["agents"]!, services: ["web": echo.port])
            let ready = try await scope.notify.waitFor("READY=1")
            let probe = try await TestClient.connect(port: webPort)
            try await probe.channel.close()
            #expect(ready.index == scope.notify.messages.firstIndex { $0.has("READY=1") })
            try await agent.waitForLine(containing: "registered with relay")
            let message = TestData.random(100_000)
            #expect(try await TestClient.exchange(port: webPort, request: message) == message)
            try await scope.notify.waitForStatus(containing: "1/1 agents connected, 1 services")
            #expect(proxy.process.lines(containing: "listening", "role=agents", "adopted=systemd").count == 1)
        }
    }

    /// WATCHDOG=1 comes at half of WATCHDOG_USEC from both daemons, never near the limit.
    @Test func watchdogPingsOnTime() async throws {
        try await withSystemdScope { scope in
            let echo = try await scope.target(.echo)
            let proxy = try await scope.activateProxy(names: ["agents", "web"], watchdogUSec: 1_000_000) { ports in
                scope.proxyConfig(agentPort: ports["agents"]!, services: ["web": ports["web"]!])
            }
            let agentNotify = try scope.listener()
            _ = try scope.startAgent(
                relayPort: proxy.ports["agents"]!, services: ["web": echo.port], notify: agentNotify,
                watchdogUSec: 600_000)
            for (notify, interval) in [(scope.notify, 1.0), (agentNotify, 0.6)] {
                let ready = try await notify.waitFor("READY=1")
                try await notify.waitFor("the 6th WATCHDOG=1", timeout: .seconds(10)) { _ in
                    notify.messages(with: "WATCHDOG=1").count >= 6
                }
                let pings = notify.messages(with: "WATCHDOG=1").prefix(6).map(\.at)
                let gaps = zip(pings.dropFirst(), pings).map { ($0 - $1).inSeconds }
                let first = (pings[0] - ready.message.at).inSeconds
                // Every ping proves every event loop answered; systemd needs one per interval.
                #expect(first < interval * 0.75, "first ping \(first) s after READY=1")
                #expect(gaps.allSatisfy { $0 < interval * 0.75 }, "gaps \(gaps) for WATCHDOG_USEC=\(interval) s")
                let mean = gaps.reduce(0, +) / Double(gaps.count)
                #expect(mean > interval * 0.4 && mean < interval * 0.6, "mean gap \(mean) s, expected about half")
            }
        }
    }

    /// A service's listener passed by systemd replaces its configured `listen`: clients reach
    /// it through the adopted socket and nothing listens on the configured port.
    @Test func serviceThroughAnAdoptedSocket() async throws {
        try await withSystemdScope { scope in
            let echo = try await scope.target(.echo)
            let configuredPort = try await TargetServer.closedPort()
            let proxy = try await scope.activateProxy(names: ["agents", "web"]) { ports in
                scope.proxyConfig(agentPort: ports["agents"]!, services: ["web": configuredPort])
            }
            let agent = try scope.startAgent(relayPort: proxy.ports["agents"]!, services: ["web": echo.port])
            try await scope.notify.waitFor("READY=1")
            try await agent.waitForLine(containing: "registered with relay")
            let message = TestData.random(200_000)
            #expect(try await TestClient.exchange(port: proxy.ports["web"]!, request: message) == message)
            let line = try await proxy.process.waitForLine(containing: "listening", "service=web")
            #expect(line.contains("adopted=systemd") && line.contains("address=127.0.0.1:\(proxy.ports["web"]!)"))
            await #expect(throws: (any Error).self, "nothing may listen on the configured port") {
                let connection = try await TestClient.connect(port: configuredPort)
                try await connection.channel.close()
            }
        }
    }

    /// Several sockets may share a name (IPv4 and IPv6): every one of them serves.
    @Test func severalSocketsOfOneNameAllServe() async throws {
        try await withSystemdScope { scope in
            let echo = try await scope.target(.echo)
            let configuredPort = try await TargetServer.closedPort()
            let proxy = try await scope.activateProxy(names: ["agents", "web"], alsoIPv6: ["agents", "web"]) { ports in
                scope.proxyConfig(agentPort: ports["agents"]!, services: ["web": configuredPort])
            }
            let agent = try scope.startAgent(
                relayPort: proxy.ports["agents@v6"]!, relayHost: "::1", services: ["web": echo.port])
            try await scope.notify.waitFor("READY=1")
            try await agent.waitForLine(containing: "registered with relay")
            let message = TestData.random(10_000)
            #expect(try await TestClient.exchange(port: proxy.ports["web"]!, request: message) == message)
            #expect(
                try await TestClient.exchange(port: proxy.ports["web@v6"]!, request: message, host: "::1") == message)
            #expect(proxy.process.lines(containing: "listening", "adopted=systemd").count == 4)
        }
    }

    /// SIGHUP with a transfer in flight: RELOADING=1 (with MONOTONIC_USEC) then READY=1, the
    /// transfer completes intact, and a service added by the reload works.
    @Test func reloadWithATransferInFlight() async throws {
        try await withSystemdScope { scope in
            let total = 48 << 20
            let source = try await scope.target(.source(bytes: total))
            let echo = try await scope.target(.echo)
            let newPort = try await TargetServer.closedPort()
            let proxy = try await scope.activateProxy(names: ["agents", "blob"]) { ports in
                scope.proxyConfig(agentPort: ports["agents"]!, services: ["blob": ports["blob"]!])
            }
            let agent = try scope.startAgent(
                relayPort: proxy.ports["agents"]!, services: ["blob": source.port, "new": echo.port])
            try await scope.notify.waitFor("READY=1")
            try await agent.waitForLine(containing: "registered with relay")

            let connection = try await TestClient.connect(port: proxy.ports["blob"]!)
            let (received, digest) = try await connection.executeThenClose { inbound, _ in
                var iterator = inbound.makeAsyncIterator()
                var digest = Digest()
                var received = 0
                while received < 1 << 20, let chunk = try await iterator.next() {
                    digest.update(chunk)
                    received += chunk.readableBytes
                }
                // Reading pauses here; the transfer is held up by backpressure, in flight.
                let from = scope.notify.messages.count
                try scope.writeProxyConfig(
                    scope.proxyConfig(
                        agentPort: proxy.ports["agents"]!,
                        services: ["blob": proxy.ports["blob"]!, "new": newPort]))
                let before = Self.monotonicMicroseconds()
                proxy.signal(SIGHUP)
                let reloading = try await scope.notify.waitFor("RELOADING=1", from: from)
                let after = Self.monotonicMicroseconds()
                let stamp = UInt64(reloading.message.value("MONOTONIC_USEC") ?? "") ?? 0
                #expect(stamp >= before && stamp <= after, "MONOTONIC_USEC=\(stamp) not within [\(before), \(after)]")
                try await scope.notify.waitFor("READY=1", from: reloading.index + 1)
                #expect(source.stats.bytesWritten.load(ordering: .relaxed) < total, "the transfer was still in flight")
                try await proxy.process.waitForLine(containing: "config reloaded", "service 'new' added")
                let message = TestData.random(50_000)
                #expect(try await TestClient.exchange(port: newPort, request: message) == message)
                while let chunk = try await iterator.next() {
                    digest.update(chunk)
                    received += chunk.readableBytes
                }
                return (received, digest.hex())
            }
            #expect(received == total)
            #expect(source.stats.sourceDigests.withLock { $0 } == [digest])
        }
    }

    /// A broken config on reload is refused: the log says why, STATUS says refused, and the
    /// old config keeps serving.
    @Test func brokenConfigOnReloadIsRefused() async throws {
        try await withSystemdScope { scope in
            let echo = try await scope.target(.echo)
            let proxy = try await scope.activateProxy(names: ["agents", "web"]) { ports in
                scope.proxyConfig(agentPort: ports["agents"]!, services: ["web": ports["web"]!])
            }
            let agent = try scope.startAgent(relayPort: proxy.ports["agents"]!, services: ["web": echo.port])
            try await scope.notify.waitFor("READY=1")
            try await agent.waitForLine(containing: "registered with relay")

            var broken = scope.proxyConfig(agentPort: proxy.ports["agents"]!, services: ["web": proxy.ports["web"]!])
            broken["listen"] = "nowhere"
            try scope.writeProxyConfig(broken)
            let from = scope.notify.messages.count
            proxy.signal(SIGHUP)
            let reloading = try await scope.notify.waitFor("RELOADING=1", from: from)
            let done = try await scope.notify.waitFor("READY=1", from: reloading.index + 1)
            let status = done.message.value("STATUS") ?? ""
            #expect(status.contains("reload refused") && status.contains("$.listen"), "STATUS=\(status)")
            let line = try await proxy.process.waitForLine(containing: "config reload refused")
            #expect(line.contains("$.listen"))
            let message = TestData.random(10_000)
            #expect(try await TestClient.exchange(port: proxy.ports["web"]!, request: message) == message)
            #expect(proxy.process.isRunning)
        }
    }

    /// SIGTERM: STOPPING=1 at once, a live session goes on until it ends, then exit 0.
    @Test func stopDrainsThenExitsZero() async throws {
        try await withSystemdScope { scope in
            let echo = try await scope.target(.echo)
            let proxy = try await scope.activateProxy(names: ["agents", "web"]) { ports in
                scope.proxyConfig(agentPort: ports["agents"]!, services: ["web": ports["web"]!], drainSeconds: 30)
            }
            let agent = try scope.startAgent(relayPort: proxy.ports["agents"]!, services: ["web": echo.port])
            try await scope.notify.waitFor("READY=1")
            try await agent.waitForLine(containing: "registered with relay")

            let connection = try await TestClient.connect(port: proxy.ports["web"]!)
            try await connection.executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                func roundTrip(_ message: [UInt8]) async throws -> [UInt8] {
                    try await outbound.write(ByteBuffer(bytes: message))
                    var reply: [UInt8] = []
                    while reply.count < message.count, let chunk = try await iterator.next() {
                        reply += chunk.readableBytesView
                    }
                    return reply
                }
                let first = TestData.random(1000)
                #expect(try await roundTrip(first) == first)
                proxy.signal(SIGTERM)
                try await scope.notify.waitFor("STOPPING=1")
                try await proxy.process.waitForLine(containing: "shutting down", "sessions=1")
                let second = TestData.random(1000)
                #expect(try await roundTrip(second) == second, "the live session still works while draining")
                #expect(proxy.process.isRunning, "the proxy waits for the live session")
                outbound.finish()
                while try await iterator.next() != nil {}
            }
            let started = ContinuousClock.now
            let status = try await proxy.process.waitForExit(timeout: .seconds(10))
            #expect(proxy.process.process.terminationReason == .exit && status == 0)
            #expect(ContinuousClock.now - started < .seconds(5), "exit follows the end of the last session")
            #expect(proxy.process.lines(containing: "all sessions drained").count == 1)
        }
    }

    /// The agent is ready (and says it is retrying) while its relay is down, so
    /// `systemctl start relay-agent` neither hangs nor fails.
    @Test func agentReadyWhileItsRelayIsDown() async throws {
        try await withSystemdScope { scope in
            let down = try await TargetServer.closedPort()
            let agent = try scope.startAgent(relayPort: down, services: ["web": down], notify: scope.notify)
            try await scope.notify.waitFor("READY=1", timeout: .seconds(5))
            let status = try await scope.notify.waitForStatus(containing: "reconnecting in")
            #expect(status.contains("127.0.0.1:\(down)"), "STATUS=\(status)")
            #expect(agent.isRunning)
            agent.signal(SIGTERM)
            try await scope.notify.waitFor("STOPPING=1")
            #expect(try await agent.waitForExit() == 0)
        }
    }

    /// A passed descriptor whose name is neither `agents` nor a service is refused with a
    /// clear message and exit status 1, before READY=1.
    @Test func unknownDescriptorNameIsRefused() async throws {
        try await withSystemdScope { scope in
            let proxy = try await scope.activateProxy(names: ["agents", "bogus"]) { ports in
                scope.proxyConfig(agentPort: ports["agents"]!, services: [:])
            }
            let trigger = try await TestClient.connect(port: proxy.ports["agents"]!)
            // The proxy may have refused and exited already, closing this connection first.
            try? await trigger.executeThenClose { _, _ in }
            let status = try await proxy.process.waitForExit()
            #expect(status == 1)
            #expect(
                proxy.process.lines(
                    containing: "systemd passed a socket named 'bogus'", "neither 'agents' nor a service"
                )
                .count == 1,
                "log: \(proxy.process.log)")
            #expect(scope.notify.messages(with: "READY=1").isEmpty)
        }
    }

    static func monotonicMicroseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
    }
}

/// Processes, targets and notification sockets of one test, always cleaned up.
final class SystemdScope {
    /// A relay-proxy under systemd-socket-activate, and the ports of its passed sockets by name.
    ///
    /// `process` is a `sh` that runs systemd-socket-activate as its child and exits with
    /// its status: systemd-socket-activate closes every inherited descriptor before it execs
    /// the daemon, among them the socket Foundation's `Process` watches for the child's end,
    /// which makes Foundation wait (blocking) for that child and miss every other child's exit
    /// until then. Signals go to the daemon itself, the child of that `sh`.
    struct ActivatedProxy {
        let process: DaemonProcess
        let ports: [String: Int]

        /// The pid of systemd-socket-activate, and of relay-proxy once it is exec'd.
        var daemonPID: Int32? {
            let path = "/proc/\(self.process.pid)/task/\(self.process.pid)/children"
            guard let children = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
            return children.split(separator: " ").first.flatMap { Int32($0) }
        }

        func signal(_ signal: Int32) {
            if let pid = self.daemonPID { kill(pid, signal) }
        }

        func stop() async {
            guard self.process.isRunning else { return }
            self.signal(SIGTERM)
            if (try? await self.process.waitForExit(timeout: .seconds(10))) == nil {
                self.signal(SIGKILL)
                await self.process.stop()
            }
        }
    }

    let directory: String
    /// The NOTIFY_SOCKET of the proxy (and of the agent, unless it gets its own).
    let notify: NotifyListener
    private var listeners: [NotifyListener] = []
    private var processes: [DaemonProcess] = []
    private var proxies: [ActivatedProxy] = []
    private var targets: [TargetServer] = []

    init() throws {
        self.directory = NSTemporaryDirectory() + "relay-sd-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        self.notify = try NotifyListener()
        self.listeners.append(self.notify)
    }

    /// Another NOTIFY_SOCKET, e.g. for a second daemon.
    func listener() throws -> NotifyListener {
        let listener = try NotifyListener()
        self.listeners.append(listener)
        return listener
    }

    func target(_ behaviour: TargetServer.Behaviour) async throws -> TargetServer {
        let target = try await TargetServer.start(behaviour)
        self.targets.append(target)
        return target
    }

    func proxyConfig(agentPort: Int, services: [String: Int], drainSeconds: Double = 5) -> [String: Any] {
        [
            "listen": "127.0.0.1:\(agentPort)",
            "control": self.directory + "/proxy.sock",
            "agents": [["id": "office", "secret": "systemd test secret"]],
            "services": services.keys.sorted().map {
                ["name": $0, "agent": "office", "listen": "127.0.0.1:\(services[$0]!)"]
            },
            "drainTimeoutSeconds": drainSeconds,
        ]
    }

    var proxyConfigPath: String { self.directory + "/proxy.json" }

    func writeProxyConfig(_ config: [String: Any]) throws {
        try self.write(config, to: self.proxyConfigPath)
    }

    private func write(_ object: [String: Any], to path: String) throws {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: path))
    }

    /// Starts relay-proxy under `systemd-socket-activate`, one loopback socket per name in
    /// `names` (passed with those FileDescriptorNames), NOTIFY_SOCKET and WATCHDOG_USEC set.
    /// The proxy itself starts on the first connection to any of them. The ports are
    /// free ports closed again just before; if one was taken meanwhile, it tries again.
    /// Each name in `alsoIPv6` gets a second socket of the same name on `[::1]`, its port
    /// under the key `NAME@v6`.
    func activateProxy(
        names: [String],
        alsoIPv6: [String] = [],
        watchdogUSec: Int = 1_000_000,
        config: ([String: Int]) -> [String: Any]
    ) async throws -> ActivatedProxy {
        var lastLog: [String] = []
        for attempt in 1...5 {
            var ports: [String: Int] = [:]
            for name in names { ports[name] = try await TargetServer.closedPort() }
            for name in alsoIPv6 { ports[name + "@v6"] = try await TargetServer.closedPort() }
            try self.writeProxyConfig(config(ports))
            let sockets =
                names.map { ($0, "127.0.0.1:\(ports[$0]!)") } + alsoIPv6.map { ($0, "[::1]:\(ports[$0 + "@v6"]!)") }
            let arguments =
                sockets.flatMap { ["-l", $0.1] } + [
                    "--fdname=" + sockets.map(\.0).joined(separator: ":"),
                    "-E", "NOTIFY_SOCKET=" + self.notify.path,
                    "-E", "WATCHDOG_USEC=\(watchdogUSec)",
                    Binaries.path("relay-proxy"), "--config", self.proxyConfigPath,
                ]
            let process = try DaemonProcess(
                "/bin/sh", arguments: ["-c", "\"$@\"; exit $?", "sh", try Self.socketActivate()] + arguments,
                name: "proxy-activated-\(attempt)")
            let proxy = ActivatedProxy(process: process, ports: ports)
            self.proxies.append(proxy)
            do {
                try await process.waitForLine(containing: "Listening on", count: sockets.count, timeout: .seconds(5))
                return proxy
            } catch  where !process.isRunning {
                lastLog = process.log  // a port was taken meanwhile: try others
            }
        }
        throw HarnessError("systemd-socket-activate could not listen: \(lastLog)")
    }

    /// Starts relay-agent directly (no activation) with the given NOTIFY_SOCKET, if any.
    func startAgent(
        relayPort: Int,
        relayHost: String = "127.0.0.1",
        services: [String: Int],
        notify: NotifyListener? = nil,
        watchdogUSec: Int? = nil
    ) throws -> DaemonProcess {
        let config: [String: Any] = [
            "relay": RelayFixture.address(relayHost, relayPort),
            "id": "office",
            "secret": "systemd test secret",
            "control": self.directory + "/agent.sock",
            "services": services.keys.sorted().map { ["name": $0, "target": "127.0.0.1:\(services[$0]!)"] },
            "reconnectInitialDelaySeconds": 0.2,
            "reconnectMaxDelaySeconds": 1.0,
        ]
        let path = self.directory + "/agent.json"
        try self.write(config, to: path)
        var environment: [String: String] = [:]
        if let notify { environment["NOTIFY_SOCKET"] = notify.path }
        if let watchdogUSec { environment["WATCHDOG_USEC"] = "\(watchdogUSec)" }
        let agent = try DaemonProcess(
            "relay-agent", arguments: ["--config", path], name: "agent", environment: environment)
        self.processes.append(agent)
        return agent
    }

    static func socketActivate() throws -> String {
        for candidate in ["/usr/bin/systemd-socket-activate", "/bin/systemd-socket-activate"]
        where FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
        throw HarnessError("systemd-socket-activate is missing (Debian: package systemd)")
    }

    func shutdown() async {
        for process in self.processes.reversed() { await process.stop() }
        for proxy in self.proxies { await proxy.stop() }
        for target in self.targets { await target.close() }
        for listener in self.listeners { await listener.close() }
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}

/// Runs `body` with a fresh scope and always cleans it up, also when the body throws.
func withSystemdScope(_ body: (SystemdScope) async throws -> Void) async throws {
    let scope = try SystemdScope()
    do {
        try await body(scope)
        await scope.shutdown()
    } catch {
        await scope.shutdown()
        throw error
    }
}
