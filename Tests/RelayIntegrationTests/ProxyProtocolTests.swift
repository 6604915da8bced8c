import Foundation
import Glibc
import NIOCore
import NIOPosix
import RelayProtocol
import Synchronization
import Testing

/// The client's address at the target (issue 11, item 2): the agent's `proxyProtocol` header
/// read by real HAProxy and by raw targets, and the relay's `acceptProxyProtocol` fed by a
/// hand-made header and by HAProxy's `send-proxy-v2`, on both data planes.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ProxyProtocolTests {
    static let agents = [RelayFixture.Agent(id: "office", secret: "0123456789abcdef-office")]
    static let services = [RelayFixture.Service(name: "web", agent: "office")]
    static let haproxy = "/usr/sbin/haproxy"

    /// The agent's options for one service `web` leading to `port` with `proxyProtocol`.
    static func agentOptions(port: Int, version: String?, plane: String) -> [String: Any] {
        var service: [String: Any] = ["name": "web", "target": "127.0.0.1:\(port)"]
        if let version { service["proxyProtocol"] = version }
        return ["services": [service], "dataPlane": plane]
    }

    // MARK: - Real consumer: HAProxy with accept-proxy

    /// HAProxy (`bind … accept-proxy`, mode http) answers every request with the client
    /// address it parsed from the agent's header: the test client's own address and port.
    @Test(arguments: ["v1", "v2"], ["splice", "userspace"])
    func haproxyReadsTheClientsAddress(version: String, plane: String) async throws {
        guard let consumer = try await HAProxy.start(consumerOnly: true) else { return }
        defer { Task { await consumer.stop() } }
        try await withFixture(agents: Self.agents, services: Self.services) { relay in
            try await relay.startProxy()
            try await relay.startAgent(
                id: "office", services: [:],
                options: Self.agentOptions(port: consumer.consumerPort, version: version, plane: plane))
            let (answer, local) = try await Self.httpGet(port: relay.servicePort("web"))
            print("figure: HAProxy (\(version), \(plane)) saw the client as \(answer); the client is \(local)")
            #expect(answer == local)
        }
    }

    // MARK: - Raw targets: server speaks first, v2 TLVs

    /// A target that writes its banner at once and reads: the client, sending nothing, gets
    /// the banner, and the target got a correct header (v2: with the agent's and service's
    /// TLVs) first, then the client's bytes.
    @Test(arguments: ["v1", "v2"], ["splice", "userspace"])
    func serverSpeaksFirstAndGetsTheHeaderFirst(version: String, plane: String) async throws {
        let target = try await RecordingTarget.start(banner: "220 target ready\r\n")
        defer { Task { await target.close() } }
        try await withFixture(agents: Self.agents, services: Self.services) { relay in
            try await relay.startProxy()
            try await relay.startAgent(
                id: "office", services: [:],
                options: Self.agentOptions(port: target.port, version: version, plane: plane))
            let port = relay.servicePort("web")
            let client = try await TestClient.connect(port: port)
            let local = "127.0.0.1:\(client.channel.localAddress!.port!)"
            try await client.executeThenClose { inbound, outbound in
                var replies = inbound.makeAsyncIterator()
                var banner = ""
                while !banner.hasSuffix("\r\n"), let chunk = try await replies.next() {
                    banner += String(buffer: chunk)
                }
                #expect(banner == "220 target ready\r\n", "the client got the banner without sending a byte")
                let received = try await target.waitForBytes(atLeast: 16)
                let (header, length) = try #require(try ProxyHeader.parse(received))
                #expect(header.source?.description == local)
                #expect(header.destination?.description == "127.0.0.1:\(port)")
                #expect(length == received.count, "nothing but the header before the client spoke")
                if version == "v2" {
                    #expect(header.tlv(ProxyHeader.agentIDType) == Array("office".utf8))
                    #expect(header.tlv(ProxyHeader.serviceType) == Array("web".utf8))
                    #expect(received.count == length, "TLVs are inside the announced length")
                } else {
                    let clientPort = client.channel.localAddress!.port!
                    #expect(received == Array("PROXY TCP4 127.0.0.1 127.0.0.1 \(clientPort) \(port)\r\n".utf8))
                }
                print(
                    "figure: \(version) header at the target (\(plane)): \(length) bytes, source \(header.source.map { "\($0)" } ?? "?")"
                )
                try await outbound.write(ByteBuffer(string: "EHLO client\r\n"))
                let all = try await target.waitForBytes(atLeast: length + 13)
                #expect(Array(all[length...]) == Array("EHLO client\r\n".utf8))
            }
        }
    }

    /// Without `proxyProtocol` the target gets the client's bytes only (the default).
    @Test func noHeaderWithoutTheKey() async throws {
        let target = try await RecordingTarget.start(banner: nil)
        defer { Task { await target.close() } }
        try await withFixture(agents: Self.agents, services: Self.services) { relay in
            try await relay.startProxy()
            try await relay.startAgent(id: "office", services: ["web": target.port])
            let client = try await TestClient.connect(port: relay.servicePort("web"))
            try await client.executeThenClose { _, outbound in
                try await outbound.write(ByteBuffer(string: "hello"))
                #expect(try await target.waitForBytes(atLeast: 5) == Array("hello".utf8))
            }
        }
    }

    // MARK: - acceptProxyProtocol

    /// A service without `acceptProxyProtocol` is transparent: a client's PROXY header is
    /// data like any other and reaches the target as sent.
    @Test func withoutTheKeyAHeaderPassesThrough() async throws {
        let target = try await RecordingTarget.start(banner: nil)
        defer { Task { await target.close() } }
        try await withFixture(agents: Self.agents, services: Self.services) { relay in
            try await relay.startProxy()
            try await relay.startAgent(
                id: "office", services: [:],
                options: Self.agentOptions(port: target.port, version: nil, plane: "splice"))
            let client = try RawClient(from: "127.0.0.2", port: relay.servicePort("web"))
            let sent = "PROXY TCP4 203.0.113.7 198.51.100.1 4242 80\r\npassed"
            try client.send(sent)
            #expect(try await target.waitForText(sent))
            #expect(relay.proxy.lines(containing: "not in acceptProxyProtocol").isEmpty)
            client.close()
        }
    }

    /// From a listed source, a v1 header names the client: the session's `client` in
    /// `relayctl sessions` and the agent's header at the target carry it. The same header
    /// from another source is closed and never reaches the target; a bad header from a
    /// listed source is closed; a reload swaps the list for new clients.
    @Test(arguments: ["splice", "userspace"])
    func acceptedHeadersNameTheClientOthersAreClosed(plane: String) async throws {
        let target = try await RecordingTarget.start(banner: nil)
        defer { Task { await target.close() } }
        try await withFixture(agents: Self.agents, services: Self.services, proxyOptions: ["dataPlane": plane]) {
            relay in
            relay.serviceOptions["web"] = ["acceptProxyProtocol": ["127.0.0.1/32"]]
            try await relay.startProxy()
            let agent = try await relay.startAgent(
                id: "office", services: [:], options: Self.agentOptions(port: target.port, version: "v1", plane: plane))
            let port = relay.servicePort("web")
            let header = "PROXY TCP4 203.0.113.7 198.51.100.1 4242 80\r\n"

            // Listed: the header is read and replaced by the agent's, naming the same client.
            let trusted = try RawClient(from: "127.0.0.1", port: port)
            try trusted.send(header + "hello")
            let expected = "PROXY TCP4 203.0.113.7 127.0.0.1 4242 \(port)\r\nhello"
            let received: [UInt8]
            do {
                received = try await target.waitForBytes(atLeast: expected.utf8.count, timeout: .seconds(10))
            } catch {
                // The daemons' last lines say where the session stopped.
                let relayLog = relay.proxy.lines(containing: "").suffix(12).joined(separator: "\n")
                let agentLog = agent.lines(containing: "").suffix(12).joined(separator: "\n")
                throw HarnessError("\(error)\nrelay:\n\(relayLog)\nagent:\n\(agentLog)")
            }
            #expect(String(decoding: received, as: UTF8.self) == expected)
            let sessions = try await Relayctl.json(["--socket", relay.proxySocket, "sessions"]) as? [[String: Any]]
            let client = sessions?.first?["client"] as? String
            print("figure: relayctl sessions client with a v1 header from 127.0.0.1: \(client ?? "?")")
            #expect(client == "203.0.113.7:4242")
            try await relay.proxy.waitForLine(containing: "session open", "client=203.0.113.7:4242")
            trusted.close()

            // Not listed: closed, one log line, nothing reaches the target.
            let before = target.connections
            let stranger = try RawClient(from: "127.0.0.2", port: port)
            try stranger.send(header + "sneaky")
            #expect(stranger.closed(within: 3), "a header from an unlisted source was not closed")
            try await relay.proxy.waitForLine(containing: "not in acceptProxyProtocol", "client=127.0.0.2:")
            #expect(!target.everything(after: before).contains("sneaky"))
            let joined = !relay.proxy.lines(containing: "session open", "client=127.0.0.2:").isEmpty
            print("figure: the unlisted source's header was refused \(joined ? "at the join" : "at accept")")
            #expect(!target.everything(after: before).contains("203.0.113.7"))

            // Listed but malformed: closed with its reason.
            let broken = try RawClient(from: "127.0.0.1", port: port)
            try broken.send("PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\nbad")
            #expect(broken.closed(within: 3))
            try await relay.proxy.waitForLine(containing: "bad PROXY header: v1 header: unknown protocol")
            #expect(!target.everything(after: before).contains("bad"))

            // A reload lists 127.0.0.2 only: its header is read now, 127.0.0.1's refused.
            relay.serviceOptions["web"] = ["acceptProxyProtocol": ["127.0.0.2/32"]]
            try relay.writeProxyConfig()
            _ = try await Relayctl.ok(["--socket", relay.proxySocket, "reload"])
            try await relay.proxy.waitForLine(containing: "acceptProxyProtocol now [127.0.0.2/32]")
            let nowTrusted = try RawClient(from: "127.0.0.2", port: port)
            try nowTrusted.send("PROXY TCP4 203.0.113.8 198.51.100.1 4343 80\r\nagain")
            let again = "PROXY TCP4 203.0.113.8 127.0.0.1 4343 \(port)\r\nagain"
            #expect(try await target.waitForText(again))
            nowTrusted.close()
            let nowStranger = try RawClient(from: "127.0.0.1", port: port)
            try nowStranger.send(header + "late")
            #expect(nowStranger.closed(within: 3))
            stranger.close()
            broken.close()
            nowStranger.close()
            #expect(!target.everything(after: before).contains("late"))
            let status = try await Relayctl.json(["--socket", relay.proxySocket, "status"]) as? [String: Any]
            let limits = status?["limits"] as? [String: Any]
            let hits = (limits?["proxyProtocol"] as? [String: Any])?["hits"] as? Int
            print("figure: proxyProtocol limit hits: \(hits.map(String.init) ?? "?")")
            #expect(hits == 3)
        }
    }

    // MARK: - Real producer and consumer: HAProxy on both sides

    /// client → HAProxy (`send-proxy-v2`) → relay (`acceptProxyProtocol`) → agent
    /// (`proxyProtocol` v1) → HAProxy (`accept-proxy`): the answer names the test client.
    @Test(arguments: ["splice", "userspace"])
    func haproxyInFrontAndBehind(plane: String) async throws {
        try await withFixture(agents: Self.agents, services: Self.services, proxyOptions: ["dataPlane": plane]) {
            relay in
            relay.serviceOptions["web"] = ["acceptProxyProtocol": ["127.0.0.0/8"]]
            try await relay.startProxy()
            guard let haproxy = try await HAProxy.start(consumerOnly: false, relayPort: relay.servicePort("web"))
            else { return }
            defer { Task { await haproxy.stop() } }
            try await relay.startAgent(
                id: "office", services: [:],
                options: Self.agentOptions(port: haproxy.consumerPort, version: "v1", plane: plane))
            let (answer, local) = try await Self.httpGet(port: haproxy.balancerPort)
            print(
                "figure: through HAProxy send-proxy-v2 and the relay (\(plane)), the target saw \(answer); the client is \(local)"
            )
            #expect(answer == local)
            try await relay.proxy.waitForLine(containing: "session open", "client=\(local)")
        }
    }

    /// `GET /` on `port`: the body of the answer, and the client's own `ip:port`.
    static func httpGet(port: Int) async throws -> (body: String, local: String) {
        let client = try await TestClient.connect(port: port)
        let local = "127.0.0.1:\(client.channel.localAddress!.port!)"
        let reply = try await client.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(string: "GET / HTTP/1.0\r\nHost: test\r\n\r\n"))
            var reply = ""
            for try await chunk in inbound { reply += String(buffer: chunk) }
            return reply
        }
        guard let split = reply.range(of: "\r\n\r\n") else {
            throw HarnessError("no HTTP answer: \(reply.debugDescription)")
        }
        return (String(reply[split.upperBound...]), local)
    }
}

/// A blocking client socket bound to `source` before it connects (another loopback address
/// plays another host), for writing a hand-made header and watching the relay close it.
final class RawClient {
    let descriptor: Int32

    init(from source: String, port: Int) throws {
        self.descriptor = try sourceBoundSocket(from: source, port: port)
    }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        let sent = bytes.withUnsafeBytes { Glibc.send(self.descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == bytes.count else { throw HarnessError("send: \(sent) of \(bytes.count) bytes") }
    }

    /// Whether the peer closes or resets the connection within `seconds` (bytes it sends are
    /// read and dropped meanwhile).
    func closed(within seconds: Double) -> Bool {
        let end = ContinuousClock.now + .seconds(seconds)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while ContinuousClock.now < end {
            var entry = pollfd(fd: self.descriptor, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, 50) == 1 else { continue }
            let count = buffer.withUnsafeMutableBytes { recv(self.descriptor, $0.baseAddress, $0.count, 0) }
            if count <= 0 { return true }
        }
        return false
    }

    func close() {
        Glibc.close(self.descriptor)
    }
}

/// HAProxy as a child process (`haproxy -db`), with its config in a temporary directory: a
/// consumer (`accept-proxy`, mode http, answering the client address it parsed) and
/// optionally a balancer (mode tcp, `send-proxy-v2` to the relay).
struct HAProxy {
    let process: DaemonProcess
    let directory: String
    let consumerPort: Int
    let balancerPort: Int

    /// Started and answering; nil (with the reason printed) when haproxy is not installed.
    static func start(consumerOnly: Bool, relayPort: Int = 0) async throws -> HAProxy? {
        guard FileManager.default.isExecutableFile(atPath: ProxyProtocolTests.haproxy) else {
            print("skipped: \(ProxyProtocolTests.haproxy) is not installed (apt-get install haproxy)")
            return nil
        }
        let directory = NSTemporaryDirectory() + "haproxy-test-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // HAProxy cannot report an OS-chosen port: a port is bound, closed and handed to it
        // (another process could take it in between; the start then fails loudly).
        let consumerPort = try await TargetServer.closedPort()
        let balancerPort = consumerOnly ? 0 : try await TargetServer.closedPort()
        var config = """
            global
              maxconn 256
            defaults
              timeout connect 5s
              timeout client 10s
              timeout server 10s
            frontend consumer
              mode http
              bind 127.0.0.1:\(consumerPort) accept-proxy
              http-request return status 200 content-type text/plain lf-string "%[src]:%[src_port]"

            """
        if !consumerOnly {
            config += """
                frontend balancer
                  mode tcp
                  bind 127.0.0.1:\(balancerPort)
                  default_backend relay
                backend relay
                  mode tcp
                  server relay 127.0.0.1:\(relayPort) send-proxy-v2

                """
        }
        let path = directory + "/haproxy.cfg"
        try config.write(toFile: path, atomically: true, encoding: .utf8)
        let process = try DaemonProcess(ProxyProtocolTests.haproxy, arguments: ["-db", "-f", path], name: "haproxy")
        let haproxy = HAProxy(
            process: process, directory: directory, consumerPort: consumerPort, balancerPort: balancerPort)
        // HAProxy logs nothing when ready: its consumer port answering is the signal.
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            if let channel = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: consumerPort).get()
            {
                try? await channel.close()
                break
            }
            guard process.process.isRunning, ContinuousClock.now < deadline else {
                await haproxy.stop()
                throw HarnessError("haproxy did not start: \(process.lines(containing: ""))")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        return haproxy
    }

    func stop() async {
        await self.process.stop()
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}

/// A target on 127.0.0.1 that records every byte each connection sends, and optionally
/// writes a banner as soon as it accepts (a server that speaks first).
final class RecordingTarget: Sendable {
    /// What every connection received, and a signal at each read.
    final class Store: Sendable {
        let received = Mutex<[[UInt8]]>([])
        let changes = Changes()
    }

    let channel: any Channel
    let store: Store
    var port: Int { self.channel.localAddress!.port! }

    private init(channel: any Channel, store: Store) {
        self.channel = channel
        self.store = store
    }

    static func start(banner: String?) async throws -> RecordingTarget {
        let store = Store()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let index = store.received.withLock { list in
                        list.append([])
                        return list.count - 1
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        RecordingHandler(store: store, index: index, banner: banner))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return RecordingTarget(channel: channel, store: store)
    }

    /// How many connections were accepted so far.
    var connections: Int { self.store.received.withLock { $0.count } }

    /// What the connections from `index` on received, as text.
    func everything(after index: Int) -> String {
        self.store.received.withLock { list in
            list.dropFirst(index).map { String(decoding: $0, as: UTF8.self) }.joined(separator: "|")
        }
    }

    /// The bytes of the latest connection, once it received at least `count`.
    func waitForBytes(atLeast count: Int, timeout: Duration = .seconds(5)) async throws -> [UInt8] {
        let bytes = await self.store.changes.wait(timeout: timeout) {
            self.store.received.withLock { list in list.last.flatMap { $0.count >= count ? $0 : nil } }
        }
        guard let bytes else {
            throw HarnessError(
                "the target received \(self.store.received.withLock { $0.last?.count ?? 0 }) of \(count) bytes")
        }
        return bytes
    }

    /// Whether some connection received exactly `text` within `timeout`.
    func waitForText(_ text: String, timeout: Duration = .seconds(5)) async throws -> Bool {
        let found = await self.store.changes.wait(timeout: timeout) {
            self.store.received.withLock { list in list.contains { $0 == Array(text.utf8) } ? true : nil }
        }
        return found == true
    }

    func close() async {
        try? await self.channel.close()
    }
}

private final class RecordingHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let store: RecordingTarget.Store
    let index: Int
    let banner: String?

    init(store: RecordingTarget.Store, index: Int, banner: String?) {
        self.store = store
        self.index = index
        self.banner = banner
    }

    func channelActive(context: ChannelHandlerContext) {
        if let banner = self.banner {
            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: banner)), promise: nil)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = Array(self.unwrapInboundIn(data).readableBytesView)
        self.store.received.withLock { $0[self.index] += bytes }
        self.store.changes.notify()
    }
}
