import Foundation
import NIOCore
import RelayCore
import Testing

/// Sessions opening and closing in a loop for a bounded time (60 s, or `RELAY_SOAK_SECONDS`;
/// `scripts/soak [SECONDS]` runs this suite alone for longer): a mix of uploads, downloads,
/// echoes, clients that half-close first (some then read slowly), targets that half-close
/// first and then read slowly, and clients that reset midway, from several client loops at
/// once. Every session that was not aborted must arrive whole and right (at the client, or
/// at the target where only it can tell), both daemons must log exactly the bytes the client
/// moved for it, and afterwards no descriptor is left open and memory has not crept up.
///
/// The slow readers are what catches a tail lost behind a FIN: a relay that passes a FIN on
/// as a half-close of a connection whose input is already closed gets a full close from NIO,
/// which drops the writes still queued there; only a reader slower than the relay leaves
/// writes queued when the FIN comes. With the pump's flush barrier taken out, about one
/// session in twenty of a 60 s run comes back short; with it, none.
@Suite(.serialized, .timeLimit(.minutes(SoakDuration.seconds / 60 + 4)))
struct SoakTests {
    static var requested: String? { SoakDuration.requested }
    static var seconds: Int { SoakDuration.seconds }
    /// Client loops at once (the 2 cores are shared by clients, target and both daemons).
    static let loops = 8
    static let maximumSize = 4 << 20
    static let sampleInterval = Duration.seconds(2)
    /// Every how many samples a row of the table is printed (about every 10 s).
    static let rowEvery = 5

    init() { DaemonSupport.raiseDescriptorLimit() }

    @Test func mixedSessionsStayIntactAndLeaveNothingBehind() async throws {
        try #require(
            Self.requested == nil || Int(Self.requested!) == Self.seconds,
            "RELAY_SOAK_SECONDS=\(Self.requested!) is not a whole number of seconds above 0")
        let target = try await MixedTarget.start()
        defer { Task { await target.close() } }
        try await withFixture(
            agents: [.init(id: "office", secret: "s3cret-s3cret-s3cret")],
            services: [.init(name: "mixed", agent: "office")]
        ) { relay in
            let proxy = try await relay.startProxy()
            let agent = try await relay.startAgent(id: "office", services: ["mixed": target.port])
            let port = relay.servicePort("mixed")
            // Warm both daemons up with one session of each kind before the baseline.
            for kind in MixedLoad.Kind.allCases where !kind.isAborted {
                let warm = await MixedLoad.session(kind: kind, size: 100_000, port: port)
                #expect(warm.failure == nil, "warm-up \(kind): \(warm.failure ?? "")")
            }
            try await relay.expectNothingLeftOpen(since: relay.baseline())
            let baseline = relay.baseline()
            let warmSessions = proxy.lines(containing: "session open").count

            print(
                "figure: soak: \(Self.seconds) s, \(Self.loops) client loops, sizes 1 B to \(Self.maximumSize >> 20) MiB (slow kinds \(MixedLoad.slowSizes.lowerBound >> 20)-\(MixedLoad.slowSizes.upperBound >> 20) MiB); baseline fds proxy \(baseline.descriptors[proxy.name]!), agent \(baseline.descriptors[agent.name]!)"
            )
            print("figure: soak    t  sessions  per-s  proxy-RSS  agent-RSS  proxy-fds  agent-fds")
            let progress = MixedLoad.Progress()
            let start = ContinuousClock.now
            let sampler = Task { await Self.sample(proxy: proxy, agent: agent, progress: progress, since: start) }
            await MixedLoad.run(
                port: port, loops: Self.loops, until: start + .seconds(Self.seconds), maximumSize: Self.maximumSize,
                progress: progress)
            let elapsed = ContinuousClock.now - start
            sampler.cancel()
            let samples = await sampler.value
            var results = progress.results.withLock { $0 }
            // Where only the target can tell (it finished first, then read), ask it.
            try await target.waitForAllClosed()
            for index in results.indices where results[index].kind == .targetFinishesFirst {
                let result = results[index]
                guard result.failure == nil, let digest = result.sentDigest else { continue }
                let read = target.read(offset: result.offset)
                if read != MixedTarget.Read(count: result.size, digest: digest) {
                    results[index].failure =
                        read.map {
                            "the target read \($0.count) of \(result.size) bytes\($0.count == result.size ? ", corrupt" : "")"
                        }
                        ?? "the target recorded no read"
                }
            }

            // The clients' view: no non-aborted session short or corrupt.
            let aborted = results.filter(\.kind.isAborted)
            let failures = results.filter { $0.failure != nil }
            var byKind: [String] = []
            for kind in MixedLoad.Kind.allCases {
                let ofKind = results.filter { $0.kind == kind }
                byKind.append(
                    "\(kind.rawValue) \(ofKind.count) (\(ofKind.reduce(0) { $0 + $1.received } >> 20) MiB in)")
            }
            let moved = results.reduce(0) { $0 + $1.sent + $1.received }
            print(
                "figure: soak: \(results.count) sessions in \(Self.format(elapsed)), \(String(format: "%.1f", Double(results.count) / elapsed.inSeconds)) sessions/s, \(moved >> 20) MiB moved (\(String(format: "%.1f", Double(moved) / 1_048_576 / elapsed.inSeconds)) MiB/s); \(aborted.count) aborted on purpose; \(failures.count) failed"
            )
            print("figure: soak: by kind: \(byKind.joined(separator: ", "))")
            for failure in failures.prefix(10) {
                print(
                    "figure: soak: FAILED \(failure.kind.rawValue) of \(failure.size) B, client port \(failure.port): \(failure.failure!)"
                )
            }
            #expect(results.count >= Self.loops * 10, "the load never got going")
            #expect(
                failures.count == 0,
                "\(failures.count) of \(results.count) sessions went wrong; first: \(failures.first?.failure ?? "")")

            // Both daemons end every session, and are back to their baseline descriptors.
            try await relay.expectNothingLeftOpen(since: baseline, timeout: .seconds(20))
            print(
                "figure: soak: after the load: fds proxy \(proxy.openDescriptors) (baseline \(baseline.descriptors[proxy.name]!)), agent \(agent.openDescriptors) (baseline \(baseline.descriptors[agent.name]!))"
            )

            // The daemons' view: each session's logged bytes are what its client moved.
            var ledger = SessionLedger(proxy: proxy, agent: agent, skippingFirst: warmSessions)
            let problems = ledger.check(results)
            for problem in problems.prefix(10) { print("figure: soak: LOG MISMATCH \(problem)") }
            print("figure: soak: \(ledger.summary)")
            #expect(
                problems.count == 0,
                "\(problems.count) sessions logged other bytes than their clients moved; first: \(problems.first ?? "")"
            )

            // Memory: no upward trend between the first and the last third of the run.
            for (name, series) in [("proxy", samples.map(\.proxyKiB)), ("agent", samples.map(\.agentKiB))] {
                let third = max(1, series.count / 3)
                let first = series.prefix(third).reduce(0, +) / third
                let last = series.suffix(third).reduce(0, +) / third
                let allowed = first + max(first / 5, 4096)
                print(
                    "figure: soak: relay-\(name) RSS mean first third \(first) KiB, last third \(last) KiB (\(String(format: "%+.1f", Double(last - first) * 100 / Double(first)))%), allowed up to \(allowed) KiB; peak \(series.max() ?? 0) KiB"
                )
                #expect(series.count >= 3, "too few RSS samples")
                #expect(last <= allowed, "relay-\(name) RSS crept up from \(first) KiB to \(last) KiB")
            }
        }
    }

    struct Sample {
        var at: Duration
        var completed: Int
        var proxyKiB: Int
        var agentKiB: Int
        var proxyDescriptors: Int
        var agentDescriptors: Int
    }

    /// Samples both daemons every ``sampleInterval`` until cancelled, printing a row of the table every ``rowEvery`` samples.
    static func sample(
        proxy: DaemonProcess, agent: DaemonProcess, progress: MixedLoad.Progress, since start: ContinuousClock.Instant
    ) async -> [Sample] {
        var samples: [Sample] = []
        var lastRow = (at: Duration.zero, completed: 0)
        while (try? await Task.sleep(for: Self.sampleInterval)) != nil {
            let sample = Sample(
                at: ContinuousClock.now - start, completed: progress.completed.load(ordering: .relaxed),
                proxyKiB: proxy.residentKiB, agentKiB: agent.residentKiB, proxyDescriptors: proxy.openDescriptors,
                agentDescriptors: agent.openDescriptors)
            samples.append(sample)
            if samples.count % Self.rowEvery == 0 {
                let rate = Double(sample.completed - lastRow.completed) / (sample.at - lastRow.at).inSeconds
                lastRow = (sample.at, sample.completed)
                print(
                    "figure: soak "
                        + String(
                            format: "%4.0fs  %8d  %5.0f  %6.1f MiB  %6.1f MiB  %9d  %9d", sample.at.inSeconds,
                            sample.completed, rate, Double(sample.proxyKiB) / 1024, Double(sample.agentKiB) / 1024,
                            sample.proxyDescriptors, sample.agentDescriptors))
            }
        }
        return samples
    }

    static func format(_ duration: Duration) -> String { String(format: "%.1f s", duration.inSeconds) }
}

/// How long the soak's load runs: 60 s, or `RELAY_SOAK_SECONDS`.
enum SoakDuration {
    static let requested = ProcessInfo.processInfo.environment["RELAY_SOAK_SECONDS"]
    static let seconds = Self.requested.flatMap { Int($0) }.flatMap { $0 > 0 ? $0 : nil } ?? 60
}

/// The `session open` and `session closed` lines of both daemons, joined to the clients'
/// results: the relay logs each client's address (`client=127.0.0.1:PORT`), the agent logs
/// the same session id. A port used again later is told apart by order: the second
/// connection from a port can only start after the first one from it was closed.
struct SessionLedger {
    struct Closed {
        var bytesIn: Int
        var bytesOut: Int
        var reason: String
    }

    /// Session ids by client port, in the order the relay opened them.
    var opened: [Int: [String]] = [:]
    var proxyClosed: [String: Closed] = [:]
    var agentClosed: [String: Closed] = [:]
    var proxyFailures: [String] = []
    var agentFailures: [String] = []
    private(set) var summary = ""

    /// Reads both logs, leaving out the first `skippingFirst` sessions the relay opened (a warm-up).
    init(proxy: DaemonProcess, agent: DaemonProcess, skippingFirst skipped: Int) {
        let proxyLog = proxy.log
        var skippedIDs = Set<String>()
        for line in proxyLog where line.contains(" session open ") {
            guard let id = RelayFixture.field("session", in: line),
                let client = RelayFixture.field("client", in: line),
                let colon = client.lastIndex(of: ":"), let port = Int(client[client.index(after: colon)...])
            else { continue }
            if skippedIDs.count < skipped {
                skippedIDs.insert(id)
                continue
            }
            self.opened[port, default: []].append(id)
        }
        self.proxyClosed = Self.closedLines(proxyLog).filter { !skippedIDs.contains($0.key) }
        self.agentClosed = Self.closedLines(agent.log).filter { !skippedIDs.contains($0.key) }
        self.proxyFailures = proxyLog.filter { $0.contains("session failed") || $0.contains("session refused") }
        self.agentFailures = agent.log.filter { $0.contains("session failed") || $0.contains("session refused") }
    }

    static func closedLines(_ log: [String]) -> [String: Closed] {
        var closed: [String: Closed] = [:]
        for line in log where line.contains(" session closed ") {
            guard let id = RelayFixture.field("session", in: line),
                let bytesIn = RelayFixture.field("bytesIn", in: line).flatMap({ Int($0) }),
                let bytesOut = RelayFixture.field("bytesOut", in: line).flatMap({ Int($0) })
            else { continue }
            closed[id] = Closed(bytesIn: bytesIn, bytesOut: bytesOut, reason: Self.reason(in: line))
        }
        return closed
    }

    /// The value of `reason=`, unquoted.
    static func reason(in line: String) -> String {
        guard let range = line.range(of: " reason=") else { return "" }
        var value = line[range.upperBound...]
        if value.hasPrefix("\"") {
            value = value.dropFirst()
            if let end = value.firstIndex(of: "\"") { value = value[..<end] }
        } else if let end = value.firstIndex(of: " ") {
            value = value[..<end]
        }
        return String(value)
    }

    /// Every disagreement between the clients' results and the two logs; fills ``summary``.
    mutating func check(_ results: [MixedLoad.Result]) -> [String] {
        var problems: [String] = []
        problems += self.proxyFailures.prefix(5).map { "relay-proxy: \($0)" }
        problems += self.agentFailures.prefix(5).map { "relay-agent: \($0)" }
        var byPort: [Int: [MixedLoad.Result]] = [:]
        for result in results where result.port != 0 { byPort[result.port, default: []].append(result) }
        var joined = 0
        var sums = (clientSent: 0, clientReceived: 0, proxyIn: 0, proxyOut: 0, agentIn: 0, agentOut: 0)
        var abortedReasons: [String: Int] = [:]
        for (port, clients) in byPort {
            let ids = self.opened[port] ?? []
            guard ids.count == clients.count else {
                problems.append(
                    "client port \(port): \(clients.count) sessions at the client, \(ids.count) opened at the relay")
                continue
            }
            for (client, id) in zip(clients.sorted { $0.connectedAt < $1.connectedAt }, ids) {
                joined += 1
                let what = "session \(id) (\(client.kind.rawValue) of \(client.size) B, port \(port))"
                guard let atProxy = self.proxyClosed[id] else {
                    problems.append("\(what): no 'session closed' at the relay")
                    continue
                }
                guard let atAgent = self.agentClosed[id] else {
                    problems.append("\(what): no 'session closed' at the agent")
                    continue
                }
                if client.kind.isAborted {
                    abortedReasons[
                        "\(client.kind.rawValue): relay \(atProxy.reason), agent \(atAgent.reason)", default: 0] += 1
                    continue
                }
                sums.clientSent += client.sent
                sums.clientReceived += client.received
                sums.proxyIn += atProxy.bytesIn
                sums.proxyOut += atProxy.bytesOut
                sums.agentIn += atAgent.bytesIn
                sums.agentOut += atAgent.bytesOut
                let expected = "in \(client.sent) out \(client.received)"
                for (daemon, logged) in [("relay", atProxy), ("agent", atAgent)] {
                    let got = "in \(logged.bytesIn) out \(logged.bytesOut)"
                    if got != expected || logged.reason != "closed by both ends" {
                        problems.append(
                            "\(what): the \(daemon) logged \(got) (\(logged.reason)), the client moved \(expected)")
                    }
                }
            }
        }
        self.summary =
            "logs joined for \(joined) of \(results.count) sessions; non-aborted bytes client sent \(sums.clientSent) / relay in \(sums.proxyIn) / agent in \(sums.agentIn), client received \(sums.clientReceived) / relay out \(sums.proxyOut) / agent out \(sums.agentOut); aborted sessions ended as \(abortedReasons.sorted { $0.value > $1.value }.map { "\($0.value)× \($0.key)" }.joined(separator: " | "))"
        if joined != results.count { problems.append("only \(joined) of \(results.count) sessions found in the logs") }
        return problems
    }
}
