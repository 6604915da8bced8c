import RelayProtocol
import Testing

@Suite struct ConnectAgeTests {
    static func connect(at: UInt64?, expiresIn: UInt64?) -> ControlMessage.Connect {
        .init(session: Fixture.session, service: "web", token: Fixture.token, client: "c", at: at, expiresIn: expiresIn)
    }

    /// The offset between the clocks cancels out, whichever is ahead: only the lag beyond the
    /// quickest message counts.
    @Test(arguments: [Int64(0), 1_000_000, -1_000_000])
    func theClockOffsetCancelsOut(_ offset: Int64) {
        var age = ConnectAge()
        func received(_ relay: UInt64, delay: Int64) -> UInt64 { UInt64(Int64(relay) + offset + delay) }
        age.observe(at: 2_000_000, receivedAt: received(2_000_000, delay: 4))
        age.observe(at: 2_000_100, receivedAt: received(2_000_100, delay: 2))
        age.observe(at: 2_000_200, receivedAt: received(2_000_200, delay: 9))
        #expect(age.lag(at: 2_000_300, receivedAt: received(2_000_300, delay: 2)) == 0)
        #expect(age.lag(at: 2_000_300, receivedAt: received(2_000_300, delay: 1502)) == 1500)
        #expect(
            !age.isExpired(Self.connect(at: 2_000_300, expiresIn: 1500), receivedAt: received(2_000_300, delay: 1502)))
        #expect(
            age.isExpired(Self.connect(at: 2_000_300, expiresIn: 1500), receivedAt: received(2_000_300, delay: 1503)))
    }

    /// Only the last samples count: an old quick sample leaves the window, so clock drift
    /// between the hosts does not add up over a long-lived channel.
    @Test func oldSamplesLeaveTheWindow() {
        var age = ConnectAge(capacity: 3)
        age.observe(at: 0, receivedAt: 10)
        for index in 1...3 { age.observe(at: UInt64(index * 1000), receivedAt: UInt64(index * 1000 + 50)) }
        #expect(age.baseline == 50)
    }

    @Test func withoutSamplesOrStampsNothingExpires() {
        let empty = ConnectAge()
        #expect(empty.baseline == nil)
        #expect(!empty.isExpired(Self.connect(at: 0, expiresIn: 0), receivedAt: .max))
        var age = ConnectAge()
        age.observe(at: 0, receivedAt: 0)
        #expect(!age.isExpired(Self.connect(at: nil, expiresIn: 1), receivedAt: .max))
        #expect(!age.isExpired(Self.connect(at: 1, expiresIn: nil), receivedAt: .max))
    }

    /// Stamps come from the network: extreme values never trap.
    @Test(arguments: [UInt64(0), 1, .max / 2, .max - 1, .max])
    func extremeStampsNeverTrap(_ value: UInt64) {
        var age = ConnectAge()
        age.observe(at: value, receivedAt: 0)
        age.observe(at: 0, receivedAt: value)
        _ = age.lag(at: .max, receivedAt: 0)
        _ = age.lag(at: 0, receivedAt: .max)
        _ = age.isExpired(Self.connect(at: value, expiresIn: .max), receivedAt: value)
        _ = age.isExpired(Self.connect(at: .max, expiresIn: 0), receivedAt: 0)
        #expect(age.lag(at: value, receivedAt: value) >= 0)
    }
}
