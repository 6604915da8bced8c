import Foundation
import NIOCore
import NIOPosix
import RelayProtocol
import Testing

/// Every line buffer holds at most one line plus one read: a peer that keeps a partial line
/// pending at every read (writes of a line's length, shifted by half a line) cannot grow a
/// daemon's memory. Before the fix, the framer kept every consumed byte: 256 MiB sent this
/// way took the relay to 287 MB. Each test streams ``volume`` through one connection and
/// checks the daemon's resident memory stays within ``allowance`` of what it was before.
@Suite(.serialized) struct LineBufferMemoryTests {
    static let volume = 64 << 20
    static let allowance = 32 << 20
    static let secret = "line-buffer-test-secret"

    /// The relay's end of an authenticated control channel (a hand-driven agent streams).
    @Test func relayControlChannel() async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret"), .init(id: "fake", secret: Self.secret)],
            services: [.init(name: "web", agent: "office"), .init(name: "fk", agent: "fake")]
        ) { relay in
            try await relay.startProxy()
            try await relay.startAgent(id: "office", services: ["web": echo.port])
            let pid = relay.proxy.process.processIdentifier
            let fake = try await FakeAgent.connect(port: relay.agentPort)
            try await fake.session { lines in
                guard case .registered? = try await lines.handshake(id: "fake", secret: Self.secret, services: ["fk"])
                else { throw HarnessError("the fake agent did not register") }
                let growth = try await Self.stream(pid: pid, name: "relay (control channel)", lineBytes: 16_000) {
                    try await lines.sendRaw($0)
                } line: {
                    #"{"type":"pong","seq":1,"pad":""# + $0 + #""}"#
                }
                #expect(growth < Self.allowance)
            }
            // It still serves everyone else.
            let message = TestData.random(1000)
            #expect(try await TestClient.exchange(port: relay.servicePort("web"), request: message) == message)
        }
    }

    /// The agent's end of its control channel, fed by a relay (a fake one here; it knows the
    /// agent's secret, as a relay that misbehaves after authenticating would).
    @Test func agentControlChannel() async throws {
        let (listener, port) = try await FakeRelay.listen()
        try await withFixture(agents: [], services: []) { fixture in
            let agent = try fixture.startAgent(
                relayPort: port, secret: Self.secret, target: "127.0.0.1:9")
            do {
                let growth = try await listener.executeThenClose { connections in
                    var accepted = connections.makeAsyncIterator()
                    guard let control = try await accepted.next() else { throw HarnessError("no control channel") }
                    return try await control.executeThenClose { inbound, outbound in
                        let lines = FakeAgent.Lines(iterator: inbound.makeAsyncIterator(), outbound: outbound)
                        guard try await lines.serveAgent(secret: Self.secret) != nil else {
                            throw HarnessError("the agent did not register")
                        }
                        try await agent.waitForLine(containing: "registered with relay")
                        return try await Self.stream(
                            pid: agent.process.processIdentifier, name: "agent (control channel)", lineBytes: 16_000
                        ) {
                            try await lines.sendRaw($0)
                        } line: {
                            #"{"type":"pong","seq":1,"pad":""# + $0 + #""}"#
                        }
                    }
                }
                #expect(growth < Self.allowance)
                #expect(agent.process.isRunning)
                await agent.stop()
            } catch {
                await agent.stop()
                throw error
            }
        }
    }

    /// Both daemons' control sockets, fed by a member of the socket's group.
    @Test(arguments: ["proxy", "agent"])
    func controlSocket(_ daemon: String) async throws {
        let echo = try await TargetServer.start(.echo)
        defer { Task { await echo.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "web", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["web": echo.port])
            let (path, process) =
                daemon == "proxy" ? (relay.proxySocket, relay.proxy!) : (relay.agentSocket("office"), agent)
            let connection = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(unixDomainSocketPath: path) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
            let growth = try await connection.executeThenClose { inbound, outbound in
                try await withThrowingTaskGroup(of: Int.self) { group in
                    // The answers (an error per request) are read, so the daemon never waits on us.
                    group.addTask {
                        for try await _ in inbound {}
                        return 0
                    }
                    let growth = try await Self.stream(
                        pid: process.process.processIdentifier, name: "\(daemon) (control socket)", lineBytes: 16_000
                    ) {
                        try await outbound.write(ByteBuffer(bytes: $0))
                    } line: {
                        #"{"id":1,"command":"status","args":{},"pad":""# + $0 + #""}"#
                    }
                    group.cancelAll()
                    return growth
                }
            }
            #expect(growth < Self.allowance)
            #expect(try await Relayctl.run(["--socket", path, "status"]).status == 0)
        }
    }

    /// Streams ``volume`` bytes of `lineBytes`-long lines (`line` makes one from its padding)
    /// in writes of a line's length that each end in the middle of a line; returns how much
    /// the resident memory of `pid` grew from after a warm-up to the end, and prints it.
    static func stream(
        pid: Int32, name: String, lineBytes: Int, send: ([UInt8]) async throws -> Void,
        line: (String) -> String
    ) async throws -> Int {
        let frame = line("")
        let text = line(String(repeating: "x", count: lineBytes - frame.utf8.count - 1)) + "\n"
        let bytes = Array(text.utf8)
        precondition(bytes.count == lineBytes)
        // The stream is the line repeated; a write starts half a line in.
        let half = lineBytes / 2
        let shifted = Array(bytes[half...] + bytes[..<half])
        try await send(Array(bytes[..<half]))
        var sent = half
        // Warm up: the daemon's steady-state buffers are allocated before the baseline.
        while sent < 4 << 20 {
            try await send(shifted)
            sent += shifted.count
        }
        try await Task.sleep(for: .milliseconds(200))
        let baseline = try Self.residentBytes(pid)
        while sent < Self.volume {
            try await send(shifted)
            sent += shifted.count
        }
        // What was sent has been read (and answered) once a last, whole line gets through:
        // the memory is measured with the connection still open, holding what it holds.
        try await Task.sleep(for: .milliseconds(500))
        let after = try Self.residentBytes(pid)
        let growth = after - baseline
        print(
            "figure: \(name): \(sent >> 20) MiB of mid-line writes; resident \(baseline >> 20) MiB before, "
                + "\(after >> 20) MiB after (growth \(growth >> 20) MiB, allowed \(Self.allowance >> 20) MiB)")
        return growth
    }

    /// The resident memory of process `pid` (`VmRSS` of /proc/PID/status), in bytes.
    static func residentBytes(_ pid: Int32) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let digits = line.dropFirst("VmRSS:".count).trimmingCharacters(in: .whitespaces).split(separator: " ")
            if let kilobytes = digits.first.flatMap({ Int($0) }) { return kilobytes * 1024 }
        }
        throw HarnessError("no VmRSS in /proc/\(pid)/status")
    }
}
