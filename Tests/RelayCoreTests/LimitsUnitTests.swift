import Glibc
import Logging
import Synchronization
import Testing

@testable import RelayControl
@testable import RelayCore
@testable import RelayProxy

/// The pure pieces of the limits: CIDR blocks and access rules, connection slots, the
/// control socket's admission, the failed-proof backoff, and the rate-limited counters.
@Suite struct LimitsUnitTests {
    @Test func cidrBlocksParseAndMatch() throws {
        let v4 = try AddressRange("192.0.2.0/24")
        #expect(v4.contains(IPAddress("192.0.2.77")!))
        #expect(!v4.contains(IPAddress("192.0.3.1")!))
        #expect(!v4.contains(IPAddress("::ffff:192.0.2.77")!), "a block matches its own family only")
        let host = try AddressRange("198.51.100.7")
        #expect(host.prefix == 32 && host.contains(IPAddress("198.51.100.7")!))
        #expect(!host.contains(IPAddress("198.51.100.8")!))
        let everyone = try AddressRange("0.0.0.0/0")
        #expect(everyone.contains(IPAddress("203.0.113.9")!) && everyone.contains(IPAddress("0.0.0.0")!))
        let v6 = try AddressRange("2001:db8::/32")
        #expect(v6.contains(IPAddress("2001:db8:ffff::1")!) && !v6.contains(IPAddress("2001:db9::1")!))
        #expect(try AddressRange("::/0").contains(IPAddress("::1")!))
        let one = try AddressRange("2001:db8::1/128")
        #expect(one.contains(IPAddress("2001:db8::1")!) && !one.contains(IPAddress("2001:db8::2")!))
        #expect(try AddressRange("10.0.0.0/9").contains(IPAddress("10.127.255.255")!))
        #expect(try !AddressRange("10.0.0.0/9").contains(IPAddress("10.128.0.0")!))
    }

    @Test(arguments: [
        ("10.0.0.1/8", "host bits set beyond /8 (did you mean 10.0.0.0/8?)"),
        ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
        ("10.0.0.0/33", "prefix length must be a number from 0 to 32"),
        ("::/129", "from 0 to 128"),
        ("10.0.0.0/", "prefix length"),
        ("10.0.0.0/-1", "prefix length"),
        ("10.0.0.0/+8", "prefix length"),
        ("10.0.0.0/8/8", "prefix length"),
        ("10.0.0/8", "not an IPv4 or IPv6 address"),
        ("example.com/8", "not an IPv4 or IPv6 address"),
        ("", "not an IPv4 or IPv6 address"),
        ("[::1]/128", "not an IPv4 or IPv6 address"),
    ])
    func badBlocksAreRefusedWithAReason(text: String, reason: String) {
        #expect(throws: AddressRange.ParseError.self) { try AddressRange(text) }
        do {
            _ = try AddressRange(text)
        } catch {
            #expect(error.description.contains(reason), "\(error)")
        }
    }

    @Test func denyWinsAndAllowAdmitsOnlyItsBlocks() throws {
        let rules = AccessRules(
            allow: [try AddressRange("10.0.0.0/8"), try AddressRange("2001:db8::/32")],
            deny: [try AddressRange("10.1.0.0/16")])
        #expect(rules.decide(IPAddress("10.2.3.4")!) == .admitted)
        #expect(rules.decide(IPAddress("10.1.3.4")!) == .denied(try AddressRange("10.1.0.0/16")))
        #expect(rules.decide(IPAddress("192.0.2.1")!) == .notAllowed)
        #expect(rules.decide(IPAddress("2001:db8::5")!) == .admitted)
        // An IPv4-mapped IPv6 client (a dual-stack listener) matches the IPv4 rules.
        #expect(rules.decide(IPAddress("::ffff:10.2.3.4")!) == .admitted)
        #expect(rules.decide(IPAddress("::ffff:10.1.3.4")!) == .denied(try AddressRange("10.1.0.0/16")))
        #expect(rules.decide(endpoint: "[::ffff:10.1.0.9]:5000") == .denied(try AddressRange("10.1.0.0/16")))
        #expect(rules.decide(endpoint: "10.9.9.9:5000") == .admitted)
        let denyOnly = AccessRules(deny: [try AddressRange("0.0.0.0/0")])
        #expect(denyOnly.decide(IPAddress("127.0.0.1")!) != .admitted)
        #expect(denyOnly.decide(IPAddress("::1")!) == .admitted, "an IPv4 /0 does not cover IPv6")
        #expect(AccessRules().decide(endpoint: "garbage") == .admitted)
        #expect(denyOnly.decide(endpoint: "garbage") == .notAllowed, "an unreadable address is refused under rules")
    }

    @Test func configListsAreValidatedWithTheirPaths() throws {
        let json = """
            {"listen": "127.0.0.1:0", "agents": [{"id": "a", "secret": "0123456789abcdef0123"}],
             "services": [{"name": "s", "agent": "a", "listen": "127.0.0.1:0",
                           "allow": ["10.0.0.0/8", "10.0.0.1/8", 7], "deny": "10.0.0.0/8"}],
             "maxSessionsPerService": 0, "maxPendingSessionsPerService": 2.5}
            """
        let path = "/tmp/relay-limits-\(getpid()).json"
        writeFile(path, json)
        defer { unlink(path) }
        do {
            _ = try ProxyConfig.load(path: path)
            Issue.record("accepted")
        } catch {
            let text = error.problems.map { "\($0)" }.joined(separator: "\n")
            #expect(text.contains("$.services[0].allow[1]: '10.0.0.1/8' has host bits set"), "\(text)")
            #expect(text.contains("$.services[0].allow[2]: must be a CIDR string"), "\(text)")
            #expect(text.contains("$.services[0].deny: must be an array of CIDR strings"), "\(text)")
            #expect(text.contains("$.maxSessionsPerService: must be a whole number from 1"), "\(text)")
            #expect(text.contains("$.maxPendingSessionsPerService: must be a whole number"), "\(text)")
        }
    }

    @Test func slotsCapTotalAndPerSource() {
        let slots = ConnectionSlots()
        let a = IPAddress("192.0.2.1")!
        let b = IPAddress("192.0.2.2")!
        var held: [ConnectionSlots.Slot] = []
        for _ in 0..<3 {
            guard case .success(let slot) = slots.take(source: a, maxTotal: 5, maxPerSource: 3) else {
                Issue.record("refused under the limit")
                return
            }
            held.append(slot)
        }
        guard case .failure(.perSource) = slots.take(source: a, maxTotal: 5, maxPerSource: 3) else {
            Issue.record("a fourth from one source was admitted")
            return
        }
        for _ in 0..<2 {
            if case .success(let slot) = slots.take(source: b, maxTotal: 5, maxPerSource: 3) { held.append(slot) }
        }
        guard case .failure(.total) = slots.take(source: IPAddress("192.0.2.3")!, maxTotal: 5, maxPerSource: 3) else {
            Issue.record("a sixth was admitted")
            return
        }
        held[0].release()
        held[0].release()
        #expect(slots.total == 4 && slots.held(by: a) == 2, "a slot given back twice counts once")
        held.removeAll()
        #expect(slots.total == 0, "dropped slots are given back")
    }

    @Test func rootKeepsItsControlSlotsWhateverOtherUsersHold() {
        var admission = ControlSocketAdmission(operators: [0], maxTotal: 10, reserved: 3, maxPerUser: 4)
        // One user takes its share; the next of its connections is refused per user.
        for _ in 0..<4 { #expect(admission.admit(uid: 1000) == nil) }
        #expect(admission.admit(uid: 1000) == .perUser)
        // Other users fill the unreserved slots (7 = 10 - 3).
        for _ in 0..<3 { #expect(admission.admit(uid: 1001) == nil) }
        #expect(admission.admit(uid: 1002) == .total)
        // Root still gets the reserved three, and no more.
        for _ in 0..<3 { #expect(admission.admit(uid: 0) == nil) }
        #expect(admission.admit(uid: 0) == .total)
        admission.release(uid: 1000)
        #expect(admission.admit(uid: 1002) == .total, "root's reserved slots in use count against the others too")
        #expect(admission.admit(uid: 0) == nil, "a slot given back is taken again")
    }

    @Test func failedProofsStartADoublingRefusal() {
        let backoff = ProofBackoff()
        let source = IPAddress("203.0.113.5")!
        let start = ContinuousClock.now
        for index in 0..<3 {
            let tripped = backoff.failed(agent: "a", source: source, maxPerSource: 3, maxPerAgent: 100, now: start)
            #expect(tripped == .init(), "failure \(index + 1) of 3 starts no refusal")
        }
        #expect(backoff.refusal(source: source, agent: "a", now: start) == nil)
        let first = backoff.failed(agent: "a", source: source, maxPerSource: 3, maxPerAgent: 100, now: start)
        #expect(first.source == ProofBackoff.firstBackoff)
        #expect(backoff.refusal(source: source, agent: "a", now: start) != nil)
        #expect(backoff.refusal(source: source, agent: "a", now: start + .seconds(1.5)) == nil, "over after a second")
        let second = backoff.failed(
            agent: "a", source: source, maxPerSource: 3, maxPerAgent: 100, now: start + .seconds(2))
        #expect(second.source == ProofBackoff.firstBackoff * 2, "the next failure doubles it")
        // The agent id: refused from elsewhere, never from the address it last authenticated from.
        let home = IPAddress("198.51.100.1")!
        backoff.succeeded(agent: "b", source: home)
        for _ in 0..<3 {
            _ = backoff.failed(agent: "b", source: source, maxPerSource: 1000, maxPerAgent: 2, now: start)
        }
        #expect(backoff.refusal(agent: "b", source: source, now: start) != nil)
        #expect(backoff.refusal(agent: "b", source: home, now: start) == nil)
        // A whole quiet window forgets the past.
        var later = start + ProofBackoff.window * 3
        for _ in 0..<3 {
            #expect(
                backoff.failed(agent: "a", source: source, maxPerSource: 3, maxPerAgent: 100, now: later).source == nil)
            later = later + .milliseconds(1)
        }
    }

    @Test func hitsAreCountedEveryTimeAndLoggedOncePerInterval() {
        let lines = LogLines()
        let logger = Logger(label: "limits") { _ in lines }
        let counters = LimitCounters(logInterval: .seconds(60))
        counters.declare("maxThings", max: 4)
        for _ in 0..<100 { counters.hit("maxThings", logger: logger, "refused: too many things") }
        for source in ["a", "b", "a"] { counters.hit("maxPerSource", source: source, logger: logger, "refused") }
        #expect(counters.hits("maxThings") == 100)
        #expect(counters.report["maxThings"] == LimitReport(max: 4, hits: 100))
        #expect(counters.report["maxPerSource"]?.hits == 3)
        let logged = lines.lines
        #expect(logged.filter { $0.contains("too many things") }.count == 1, "\(logged)")
        #expect(logged.filter { $0.hasPrefix("refused (") }.count == 2, "one per source: \(logged)")
        #expect(logged.first?.contains("logged at most once per 60s") == true)
    }
}

private func writeFile(_ path: String, _ text: String) {
    let file = fopen(path, "w")
    fputs(text, file)
    fclose(file)
}

/// A log handler that keeps each message.
private struct LogLines: LogHandler {
    let store = Store()
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    final class Store: Sendable {
        let lines = Mutex<[String]>([])
    }

    var lines: [String] { self.store.lines.withLock { $0 } }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        self.store.lines.withLock { $0.append("\(event.message)") }
    }
}
