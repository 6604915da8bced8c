import RelayCore
import Testing

@Suite struct BackoffTests {
    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    static func close(_ duration: Duration, _ expected: Double) -> Bool {
        abs(Self.seconds(duration) - expected) < 1e-6
    }

    @Test func doublesUpToTheCapWithoutJitter() {
        var backoff = Backoff(initial: .milliseconds(500), maximum: .seconds(30), jitter: 0)
        let delays = (0..<9).map { _ in Self.seconds(backoff.next()) }
        #expect(delays.map { ($0 * 1000).rounded() / 1000 } == [0.5, 1, 2, 4, 8, 16, 30, 30, 30])
    }

    @Test func resetStartsOver() {
        var backoff = Backoff(initial: .seconds(1), maximum: .seconds(60), jitter: 0)
        for _ in 0..<5 { _ = backoff.next() }
        #expect(Self.close(backoff.next(), 32))
        backoff.reset()
        #expect(Self.close(backoff.next(), 1))
        #expect(Self.close(backoff.next(), 2))
    }

    @Test func capEqualToInitialStaysFlat() {
        var backoff = Backoff(initial: .seconds(2), maximum: .seconds(2), jitter: 0)
        for _ in 0..<5 { #expect(Self.close(backoff.next(), 2)) }
    }

    @Test func jitterStaysWithinItsBoundsAndVaries() {
        var seen: Set<Double> = []
        for _ in 0..<200 {
            var backoff = Backoff(initial: .seconds(1), maximum: .seconds(8), jitter: 0.2)
            for base in [1.0, 2, 4, 8, 8] {
                let delay = Self.seconds(backoff.next())
                #expect(delay >= base * 0.8 - 1e-9 && delay <= base * 1.2 + 1e-9, "\(delay) for base \(base)")
                if base == 1 { seen.insert(delay) }
            }
        }
        #expect(seen.count > 100, "jitter should spread the delays")
    }

    @Test func defaultJitterIsTwentyPercent() {
        let backoff = Backoff(initial: .seconds(1), maximum: .seconds(2))
        #expect(backoff.jitter == 0.2)
        #expect(backoff.initial == .seconds(1))
        #expect(backoff.maximum == .seconds(2))
    }
}
