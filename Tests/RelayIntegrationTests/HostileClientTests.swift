import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// A storm of hostile connections on every door the daemons open: the agent port, a service
/// port and both control sockets get random bytes, oversized and never-ending lines, wrong
/// JSON shapes, forged attaches and hellos, slow drips and half-open connections. Afterwards
/// neither daemon crashed, both are back to their descriptor baseline, their memory stayed
/// bounded, the target saw nothing of the agent-port and control-socket attacks, and an
/// honest client is served.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct HostileClientTests {
    typealias Connection = NIOAsyncChannel<ByteBuffer, ByteBuffer>

    /// Where an attacker connects.
    enum Door: CustomStringConvertible {
        case tcp(Int)
        case unix(String)

        var description: String {
            switch self {
            case .tcp(let port): "port \(port)"
            case .unix(let path): path.split(separator: "/").last.map(String.init) ?? path
            }
        }
    }

    /// What an attacker does once connected.
    enum Attack {
        /// Random bytes (with newlines here and there), then close.
        case random(Int)
        /// One line of `bytes` without its newline, then waits.
        case oversized(Int)
        /// Writes a line that never ends, for `seconds` or until the daemon stops it.
        case endless(seconds: Double)
        /// These lines, then waits for the daemon's answer and close.
        case lines([String])
        /// `text`, a byte a second.
        case drip(String)
        /// `text`, then half-closes (FIN) and waits.
        case halfOpen(String)
    }

    final class Flag: Sendable {
        /// The connection ended (the daemon closed it, or we did).
        let value = Atomic<Bool>(false)
        /// We closed it: our patience ran out first.
        let gaveUp = Atomic<Bool>(false)
    }

    /// A small deterministic generator, so a failing storm can be replayed from its seed.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            self.state &+= 0x9E37_79B9_7F4A_7C15
            var z = self.state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static func connect(_ door: Door) async throws -> Connection {
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.allowRemoteHalfClosure, value: true)
        let wrap: @Sendable (any Channel) -> EventLoopFuture<Connection> = { channel in
            channel.eventLoop.makeCompletedFuture {
                try Connection(
                    wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
            }
        }
        switch door {
        case .tcp(let port): return try await bootstrap.connect(host: "127.0.0.1", port: port, channelInitializer: wrap)
        case .unix(let path): return try await bootstrap.connect(unixDomainSocketPath: path, channelInitializer: wrap)
        }
    }

    /// Runs one attack; returns whether the daemon closed the connection (rather than us, at `patience`).
    static func attack(_ door: Door, _ attack: Attack, seed: UInt64, patience: Duration) async -> Bool {
        guard let connection = try? await Self.connect(door) else { return false }
        let channel = connection.channel
        let closedByDaemon = Flag()
        try? await connection.executeThenClose { inbound, outbound in
            await withTaskGroup(of: Void.self) { group in
                // Reads whatever the daemon says until it closes.
                group.addTask {
                    do {
                        for try await _ in inbound {}
                    } catch {}
                    closedByDaemon.value.store(true, ordering: .relaxed)
                }
                group.addTask {
                    var random = Generator(state: seed)
                    do {
                        switch attack {
                        case .random(let count):
                            var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) }
                            if count > 10 { bytes[count / 2] = UInt8(ascii: "\n") }
                            try await outbound.write(ByteBuffer(bytes: bytes))
                        case .oversized(let count):
                            try await outbound.write(ByteBuffer(repeating: UInt8(ascii: "a"), count: count))
                        case .endless(let seconds):
                            let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
                            let chunk = ByteBuffer(
                                bytes: Array(#"{"type":"hello","agent":""#.utf8)
                                    + [UInt8](repeating: 0x61, count: 16 * 1024))
                            while ContinuousClock.now < end, !closedByDaemon.value.load(ordering: .relaxed) {
                                try await outbound.write(chunk)
                            }
                        case .lines(let lines):
                            try await outbound.write(ByteBuffer(string: lines.map { $0 + "\n" }.joined()))
                        case .drip(let text):
                            for byte in text.utf8 where !closedByDaemon.value.load(ordering: .relaxed) {
                                try await outbound.write(ByteBuffer(bytes: [byte]))
                                try await Task.sleep(for: .seconds(1))
                            }
                        case .halfOpen(let text):
                            try await outbound.write(ByteBuffer(string: text))
                            outbound.finish()
                        }
                    } catch {}
                }
                // Our patience: after it, we close.
                group.addTask {
                    guard (try? await Task.sleep(for: patience)) != nil else { return }
                    closedByDaemon.gaveUp.store(true, ordering: .relaxed)
                    channel.close(promise: nil)
                }
                await group.next()
                await group.next()
                group.cancelAll()
            }
        }
        return closedByDaemon.value.load(ordering: .relaxed) && !closedByDaemon.gaveUp.load(ordering: .relaxed)
    }

    /// The attacks on one door; `forged` adds attaches and hellos for the agent port.
    static func storm(_ door: Door, agentPort: Bool, seed: UInt64) -> [(Door, Attack, UInt64)] {
        var random = Generator(state: seed)
        var attacks: [Attack] = []
        for _ in 0..<24 { attacks.append(.random(Int.random(in: 1...8192, using: &random))) }
        for _ in 0..<4 { attacks.append(.oversized(256 * 1024)) }
        for _ in 0..<3 { attacks.append(.endless(seconds: 3)) }
        attacks += [
            .lines(["{}"]), .lines(["[]"]), .lines(["null"]), .lines(["\"hello\""]), .lines([#"{"type":5}"#]),
            .lines([#"{"type":"hello"}"#]), .lines([#"{"type":"hello","version":"1","agent":["office"]}"#]),
            .lines([#"{"type":"attach","version":1,"session":5,"token":null}"#]),
            .lines([#"{"id":1,"command":"status","args":{"x":1}}"#]), .lines([#"{"id":1e999,"command":"kill"}"#]),
            .lines([#"{"id":1,"command":"kill","args":{"id":"\#(String(repeating: "9", count: 4000))"}}"#]),
            .lines(["\u{0}\u{1B}[2J", String(repeating: "{", count: 5000)]),
        ]
        if agentPort {
            for _ in 0..<40 {
                let session = (0..<8).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &random)) }
                    .joined()
                let token = (0..<43).map { _ in
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".randomElement(using: &random)!
                }
                let forged = (0..<64).map { _ in "0123456789abcdef".randomElement(using: &random)! }
                attacks.append(
                    .lines([
                        #"{"type":"attach","version":2,"session":"\#(session)","token":"\#(String(token))","proof":"\#(String(forged))"}"#
                    ]))
            }
            let proof = (0..<64).map { _ in "0123456789abcdef".randomElement(using: &random)! }
            attacks += [
                .lines([
                    #"{"type":"hello","version":2,"agent":"office","nonce":"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="}"#,
                    #"{"type":"auth","proof":"\#(String(proof))"}"#,
                ]),
                .lines([
                    #"{"type":"hello","version":2,"agent":"stranger","nonce":"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="}"#,
                    #"{"type":"auth","proof":"00"}"#,
                ]),
                .lines([
                    #"{"type":"hello","version":2,"agent":"office","nonce":"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="}"#,
                    #"{"type":"register","services":["web"]}"#,
                ]),
                .lines([#"{"type":"connect","session":"00","service":"web","token":"x","client":"1.2.3.4:5"}"#]),
            ]
        }
        for _ in 0..<4 {
            attacks.append(
                .drip(
                    #"{"type":"hello","version":2,"agent":"office","nonce":"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="}"#
                ))
        }
        for _ in 0..<6 { attacks.append(.halfOpen(#"{"type":"hel"#)) }
        return attacks.map { (door, $0, random.next()) }
    }

    @Test func aStormOfHostileConnectionsLeavesBothDaemonsServing() async throws {
        let target = try await TargetServer.start(.echo)
        defer { Task { await target.close() } }
        let seed = UInt64.random(in: 0...UInt64.max)
        print("figure: hostile storm seed \(seed)")
        try await withFixture(
            agents: [.init(id: "office", secret: "correct horse battery staple")],
            services: [.init(name: "web", agent: "office")],
            proxyOptions: ["handshakeTimeoutSeconds": 4]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["web": target.port])
            // One honest exchange first, so the baseline holds what serving opens for good.
            #expect(
                try await TestClient.exchange(port: relay.servicePort("web"), request: Array("warm".utf8))
                    == Array("warm".utf8))
            try await target.waitForClosed(1)
            let baseline = relay.baseline()
            let rss = (proxy: relay.proxy.residentKiB, agent: agent.residentKiB)
            let started = ContinuousClock.now

            // Phase 1: the agent port and both control sockets. None of it may reach the target.
            let doors: [(Door, Bool)] = [
                (.tcp(relay.agentPort), true), (.unix(relay.proxySocket), false),
                (.unix(relay.agentSocket("office")), false),
            ]
            var attacks: [(Door, Attack, UInt64)] = []
            for (index, (door, agentPort)) in doors.enumerated() {
                attacks += Self.storm(door, agentPort: agentPort, seed: seed &+ UInt64(index))
            }
            let closed = await Self.run(attacks)
            print(
                "figure: phase 1: \(attacks.count) hostile connections, \(closed) closed by a daemon, in \(ContinuousClock.now - started)"
            )
            #expect(relay.proxy.isRunning && agent.isRunning, "a daemon died")
            #expect(
                target.stats.accepted.load(ordering: .relaxed) == 1,
                "the agent-port and control-socket storm reached the target")

            // Phase 2: a service port. Each connection is a session the agent dials (that is
            // the service); every one must end.
            var clients: [(Door, Attack, UInt64)] = []
            var random = Generator(state: seed ^ 0xFF)
            let web = Door.tcp(relay.servicePort("web"))
            for _ in 0..<30 { clients.append((web, .random(Int.random(in: 1...65536, using: &random)), random.next())) }
            for _ in 0..<10 { clients.append((web, .halfOpen("GET / HTTP/1.0\r\n"), 0)) }
            for _ in 0..<3 { clients.append((web, .endless(seconds: 2), 0)) }
            let phase2 = await Self.run(clients, patience: .seconds(4))
            print(
                "figure: phase 2: \(clients.count) hostile clients of the service port, \(phase2) closed by the relay")
            #expect(relay.proxy.isRunning && agent.isRunning, "a daemon died")

            try await relay.expectNothingLeftOpen(since: baseline, timeout: .seconds(15))
            let after = (proxy: relay.proxy.residentKiB, agent: agent.residentKiB)
            print(
                "figure: RSS proxy \(rss.proxy / 1024) -> \(after.proxy / 1024) MiB, agent \(rss.agent / 1024) -> \(after.agent / 1024) MiB; descriptors back to \(baseline.descriptors)"
            )
            #expect(after.proxy - rss.proxy < 96 * 1024, "the proxy grew by \((after.proxy - rss.proxy) / 1024) MiB")
            #expect(after.agent - rss.agent < 96 * 1024, "the agent grew by \((after.agent - rss.agent) / 1024) MiB")

            // An honest client and relayctl are still served.
            let reply = try await TestClient.exchange(port: relay.servicePort("web"), request: Array("still here".utf8))
            #expect(reply == Array("still here".utf8))
            for socket in [relay.proxySocket, relay.agentSocket("office")] {
                let status = try await Relayctl.run(["--socket", socket, "status"])
                #expect(status.status == 0, "\(status)")
            }
            print("figure: storm and checks took \(ContinuousClock.now - started)")
        }
    }

    /// Runs every attack at once; returns how many the daemons closed.
    static func run(_ attacks: [(Door, Attack, UInt64)], patience: Duration = .seconds(8)) async -> Int {
        await withTaskGroup(of: Bool.self) { group in
            for (door, attack, seed) in attacks {
                group.addTask { await Self.attack(door, attack, seed: seed, patience: patience) }
            }
            var closed = 0
            for await byDaemon in group where byDaemon { closed += 1 }
            return closed
        }
    }
}
