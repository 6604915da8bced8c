import Foundation
import NIOCore
import Testing

/// Bulk data through the tunnel, both ways, with SHA-256 at both ends; half-close; backpressure.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct TransferTests {
    static let bulk = 256 * 1024 * 1024

    @Test func upload256MiBArrivesIntact() async throws {
        let target = try await TargetServer.start(.hashReply)
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "up", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            try await relay.startAgent(id: "office", services: ["up": target.port])
            let baseline = relay.baseline()
            let connection = try await TestClient.connect(port: relay.servicePort("up"))
            let (sent, reply) = try await connection.executeThenClose { inbound, outbound in
                var digest = Digest()
                var offset = 0
                while offset < Self.bulk {
                    let chunk = TestData.slice(offset: offset, length: min(256 * 1024, Self.bulk - offset))
                    digest.update(chunk)
                    offset += chunk.readableBytes
                    try await outbound.write(chunk)
                }
                outbound.finish()
                var reply = ""
                for try await chunk in inbound { reply += String(buffer: chunk) }
                return (digest.hex(), reply)
            }
            #expect(reply == sent + "\n")
            try await relay.proxy.waitForLine(containing: "session closed", "bytesIn=\(Self.bulk)", "bytesOut=65")
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }

    @Test func download256MiBArrivesIntact() async throws {
        let target = try await TargetServer.start(.source(bytes: Self.bulk))
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "down", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            try await relay.startAgent(id: "office", services: ["down": target.port])
            let baseline = relay.baseline()
            let connection = try await TestClient.connect(port: relay.servicePort("down"))
            let (count, received) = try await connection.executeThenClose { inbound, _ in
                var digest = Digest()
                var count = 0
                for try await chunk in inbound {
                    count += chunk.readableBytes
                    digest.update(chunk)
                }
                return (count, digest.hex())
            }
            #expect(count == Self.bulk)
            #expect(
                target.stats.sourceDigests.withLock { $0 } == [received],
                "one client, one target connection; the relay saw: \(relay.proxy.lines(containing: "session open"))")
            try await relay.proxy.waitForLine(containing: "session closed", "bytesOut=\(Self.bulk)")
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }

    /// S14–S17 in TCP terms: the client half-closes after its request and still gets the whole reply.
    @Test func halfClosedClientStillReceivesTheWholeReply() async throws {
        let target = try await TargetServer.start(.hashReply)
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")], services: [.init(name: "h", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["h": target.port])
            let proxyBaseline = relay.proxy.openDescriptors
            let agentBaseline = agent.openDescriptors
            for size in [0, 1, 70_000, 3_000_000] {
                let request = TestData.random(size)
                var expected = Digest()
                expected.update(ByteBuffer(bytes: request))
                let reply = try await TestClient.exchange(port: relay.servicePort("h"), request: request)
                #expect(String(decoding: reply, as: UTF8.self) == expected.hex() + "\n", "request of \(size) bytes")
            }
            try await relay.proxy.waitForDescriptors(atMost: proxyBaseline)
            try await agent.waitForDescriptors(atMost: agentBaseline)
            try await target.waitForClosed(4)
        }
    }

    /// The other way round: the target finishes first (a greeting, then FIN); the client
    /// sees the end of the reply but may still send, and all it sends reaches the target.
    @Test func targetHalfCloseLeavesTheClientsDirectionOpen() async throws {
        let greeting = "220 ready, send your data\n"
        let target = try await TargetServer.start(.greetThenRead(greeting: greeting))
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")], services: [.init(name: "g", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            try await relay.startAgent(id: "office", services: ["g": target.port])
            let baseline = relay.baseline()
            let upload = TestData.slice(offset: 0, length: 3_000_000)
            var expected = Digest()
            expected.update(upload)
            let connection = try await TestClient.connect(port: relay.servicePort("g"))
            let received = try await connection.executeThenClose { inbound, outbound in
                var received = ""
                for try await chunk in inbound { received += String(buffer: chunk) }
                // The relay passed the target's FIN on; the client's direction is still open.
                try await outbound.write(upload)
                // The target half-closed first: NIO would turn this FIN into a full close that drops
                // writes still queued, so wait until they reached the socket.
                try await connection.channel.writeAndFlush(ByteBuffer())
                outbound.finish()
                return received
            }
            #expect(received == greeting)
            try await target.waitForClosed(1)
            #expect(target.stats.sourceDigests.withLock { $0 } == [expected.hex()])
            try await relay.proxy.waitForLine(
                containing: "session closed", "bytesIn=\(upload.readableBytes)", "bytesOut=\(greeting.utf8.count)")
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }

    /// S18–S20: the client drops its connection; the relay closes the data channel and the
    /// agent closes the target connection, leaving nothing open.
    @Test func clientCloseClosesTheTargetConnection() async throws {
        let target = try await TargetServer.start(.echo)
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")], services: [.init(name: "e", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["e": target.port])
            let proxyBaseline = relay.proxy.openDescriptors
            let agentBaseline = agent.openDescriptors
            let connection = try await TestClient.connect(port: relay.servicePort("e"))
            try await connection.executeThenClose { inbound, outbound in
                try await outbound.write(ByteBuffer(string: "ping"))
                var iterator = inbound.makeAsyncIterator()
                let echoed = try await iterator.next()
                #expect(echoed.map { String(buffer: $0) } == "ping")
            }
            try await agent.waitForLine(containing: "session closed")
            try await target.waitForClosed(1)
            try await relay.proxy.waitForDescriptors(atMost: proxyBaseline)
            try await agent.waitForDescriptors(atMost: agentBaseline)
        }
    }

    /// A client that stops reading stalls the target: the relay and the agent buffer a
    /// bounded amount, and memory stays flat while 1 GiB is offered.
    @Test func stalledReaderStallsTheWriterWithBoundedMemory() async throws {
        let gigabyte = 1024 * 1024 * 1024
        let target = try await TargetServer.start(.source(bytes: gigabyte))
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "slow", agent: "office")]
        ) { relay in
            try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["slow": target.port])
            let baseline = relay.baseline()
            let proxyMemory = relay.proxy.residentKiB
            let agentMemory = agent.residentKiB
            let connection = try await TestClient.connect(port: relay.servicePort("slow"))
            try await connection.executeThenClose { inbound, _ in
                // Not reading: wait until the target cannot write any more (two equal readings).
                var last = -1
                var written = target.stats.bytesWritten.load(ordering: .relaxed)
                while written != last || written == 0 {
                    last = written
                    try await Task.sleep(for: .milliseconds(300))
                    written = target.stats.bytesWritten.load(ordering: .relaxed)
                }
                print(
                    "figure: stalled reader: target wrote \(written) bytes; relay-proxy +\(relay.proxy.residentKiB - proxyMemory) KiB, relay-agent +\(agent.residentKiB - agentMemory) KiB"
                )
                #expect(written < 64 * 1024 * 1024, "the target wrote \(written) bytes to a client that reads nothing")
                #expect(relay.proxy.residentKiB - proxyMemory < 32 * 1024)
                #expect(agent.residentKiB - agentMemory < 32 * 1024)
                // Now read it all, slowly at first, and check it is intact.
                var digest = Digest()
                var count = 0
                var peakProxy = 0
                var peakAgent = 0
                for try await chunk in inbound {
                    count += chunk.readableBytes
                    digest.update(chunk)
                    if count % (64 * 1024 * 1024) < chunk.readableBytes {
                        peakProxy = max(peakProxy, relay.proxy.residentKiB - proxyMemory)
                        peakAgent = max(peakAgent, agent.residentKiB - agentMemory)
                    }
                }
                print("figure: 1 GiB read: peak growth relay-proxy \(peakProxy) KiB, relay-agent \(peakAgent) KiB")
                #expect(count == gigabyte)
                #expect(target.stats.sourceDigests.withLock { $0 } == [digest.hex()])
                #expect(peakProxy < 32 * 1024, "relay-proxy grew by \(peakProxy) KiB while moving 1 GiB")
                #expect(peakAgent < 32 * 1024, "relay-agent grew by \(peakAgent) KiB while moving 1 GiB")
            }
            try await relay.expectNothingLeftOpen(since: baseline)
        }
    }
}
