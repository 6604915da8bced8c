import Logging
import NIOCore
import RelayMetrics
import Testing

@testable import RelayCore

/// The metrics endpoint's idle limit, on a real socket: a scraper's connection that sends
/// nothing is closed after the idle timeout, not before, and the close is counted as a hit
/// of `metricsIdleTimeoutSeconds`. (The daemons keep the 30 s default; the test asks less.)
@Suite(.timeLimit(.minutes(1)))
struct MetricsEndpointTests {
    @Test func anIdleConnectionIsClosedAfterTheIdleTimeoutAndCounted() async throws {
        let idle = Duration.milliseconds(300)
        let limits = LimitCounters()
        let server = try await MetricsHTTPServer.bind(
            HostPort(host: "127.0.0.1", port: 0), logger: Logger(label: "metrics-test"), limits: limits,
            idleTimeout: idle, render: { "" })
        defer { server.close() }
        let port = Int(server.address.split(separator: ":").last ?? "") ?? 0
        let start = ContinuousClock.now
        let connection = try await Network.dial(
            HostPort(host: "127.0.0.1", port: port), timeout: .seconds(5), group: Loopback.group)
        let closedAfter = try await connection.executeThenClose { inbound, _ in
            // Nothing is sent: the endpoint closes, and the read ends.
            for try await _ in inbound {}
            return ContinuousClock.now - start
        }
        print("figure: idle metrics connection closed after \(closedAfter) (idle timeout \(idle))")
        #expect(closedAfter >= idle, "closed before the idle timeout")
        #expect(closedAfter < idle + .seconds(5), "closed late")
        #expect(limits.hits(MetricsLimits.idleTimeoutName) == 1)
        #expect(limits.report[MetricsLimits.idleTimeoutName]?.max == idle.inSeconds)
    }
}
