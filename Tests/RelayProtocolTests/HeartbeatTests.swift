import RelayProtocol
import Testing

@Suite struct HeartbeatTests {
    let start = ContinuousClock.now

    func at(_ seconds: Double) -> ContinuousClock.Instant { self.start + .seconds(seconds) }

    func make() -> Heartbeat { Heartbeat(interval: .seconds(10), timeout: .seconds(30), now: self.start) }

    @Test func startsAsIfThePeerHadJustSpoken() {
        let beat = self.make()
        #expect(beat.lastHeard == self.start)
        #expect(beat.lastRoundTrip == nil)
        #expect(beat.interval == .seconds(10))
        #expect(beat.timeout == .seconds(30))
    }

    @Test func pingsOnSchedule() {
        var beat = self.make()
        #expect(beat.tick(at: self.at(0)) == .none)
        #expect(beat.tick(at: self.at(9.999)) == .none)
        #expect(beat.tick(at: self.at(10)) == .sendPing(1))
        #expect(beat.tick(at: self.at(10)) == .none)
        #expect(beat.tick(at: self.at(15)) == .none)
        beat.heard(at: self.at(15))
        #expect(beat.tick(at: self.at(20)) == .sendPing(2))
        beat.heard(at: self.at(25))
        #expect(beat.tick(at: self.at(29.9)) == .none)
        #expect(beat.tick(at: self.at(30)) == .sendPing(3))
    }

    @Test func aLateTickSchedulesTheNextPingFromNow() {
        var beat = self.make()
        #expect(beat.tick(at: self.at(17)) == .sendPing(1))
        #expect(beat.tick(at: self.at(26.9)) == .none)
        #expect(beat.tick(at: self.at(27)) == .sendPing(2))
    }

    @Test func expiresAfterTheTimeoutWithoutLife() {
        var beat = self.make()
        #expect(beat.tick(at: self.at(10)) == .sendPing(1))
        #expect(beat.tick(at: self.at(20)) == .sendPing(2))
        #expect(beat.tick(at: self.at(30)) == .sendPing(3))  // exactly the timeout: not yet
        #expect(beat.tick(at: self.at(30.001)) == .expired)
        #expect(beat.tick(at: self.at(100)) == .expired)
    }

    @Test func anyLineKeepsThePeerAlive() {
        var beat = self.make()
        for second in stride(from: 5.0, through: 300, by: 5) {
            beat.heard(at: self.at(second))
            #expect(beat.tick(at: self.at(second)) != .expired)
        }
        #expect(beat.lastHeard == self.at(300))
        #expect(beat.tick(at: self.at(330.5)) == .expired)
    }

    @Test func aPongIsAlsoLife() {
        var beat = self.make()
        beat.pong(seq: 12345, at: self.at(29))
        #expect(beat.lastHeard == self.at(29))
        #expect(beat.tick(at: self.at(58)) != .expired)
        #expect(beat.tick(at: self.at(59.5)) == .expired)
    }

    @Test func roundTripOnMatchingPongOnly() {
        var beat = self.make()
        #expect(beat.tick(at: self.at(10)) == .sendPing(1))
        beat.pong(seq: 2, at: self.at(10.1))
        #expect(beat.lastRoundTrip == nil)
        beat.pong(seq: 0, at: self.at(10.2))
        #expect(beat.lastRoundTrip == nil)
        beat.pong(seq: 1, at: self.at(10.25))
        #expect(beat.lastRoundTrip == .milliseconds(250))
        // A second pong for the same ping changes nothing.
        beat.pong(seq: 1, at: self.at(12))
        #expect(beat.lastRoundTrip == .milliseconds(250))
    }

    @Test func nextPingIsMeasuredAfterTheFirstIsAnswered() {
        var beat = self.make()
        #expect(beat.tick(at: self.at(10)) == .sendPing(1))
        beat.pong(seq: 1, at: self.at(10.5))
        #expect(beat.tick(at: self.at(20)) == .sendPing(2))
        beat.pong(seq: 2, at: self.at(20.125))
        #expect(beat.lastRoundTrip == .milliseconds(125))
    }

    @Test func unansweredPingStaysTheOneMeasured() {
        var beat = self.make()
        #expect(beat.tick(at: self.at(10)) == .sendPing(1))
        #expect(beat.tick(at: self.at(20)) == .sendPing(2))
        beat.pong(seq: 2, at: self.at(21))  // only the oldest outstanding ping is timed
        #expect(beat.lastRoundTrip == nil)
        beat.pong(seq: 1, at: self.at(22))
        #expect(beat.lastRoundTrip == .seconds(12))
    }

    @Test func sequenceNumbersIncreaseFromOne() {
        var beat = Heartbeat(interval: .seconds(1), timeout: .seconds(1000), now: self.start)
        var seqs: [UInt64] = []
        for second in 1...20 {
            if case .sendPing(let seq) = beat.tick(at: self.at(Double(second))) { seqs.append(seq) }
        }
        #expect(seqs == Array(1...20))
    }
}
