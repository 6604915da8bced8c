import RelayProtocol
import Testing

@Suite struct SecretTests {
    @Test func descriptionsNeverShowTheSecret() {
        let secret = Secret("correct horse battery staple")
        #expect(secret.description == "<secret>")
        #expect(secret.debugDescription == "<secret>")
        #expect("\(secret)" == "<secret>")
        #expect(String(reflecting: secret) == "<secret>")
    }

    @Test func stringAndBytesInitialisersAgree() {
        #expect(Secret("abc") == Secret([0x61, 0x62, 0x63]))
        #expect(Secret("é").bytes == [0xC3, 0xA9])
    }

    @Test func equality() {
        #expect(Secret("a") == Secret("a"))
        #expect(Secret("a") != Secret("b"))
        #expect(Secret("a") != Secret("ab"))
        #expect(Secret("") == Secret([]))
    }

    @Test func constantTimeComparison() {
        #expect(constantTimeEquals([UInt8](), [UInt8]()))
        #expect(constantTimeEquals([1, 2, 3] as [UInt8], [1, 2, 3] as [UInt8]))
        #expect(!constantTimeEquals([1, 2, 3] as [UInt8], [1, 2, 4] as [UInt8]))
        #expect(!constantTimeEquals([1, 2, 3] as [UInt8], [0, 2, 3] as [UInt8]))
        #expect(!constantTimeEquals([1, 2, 3] as [UInt8], [1, 2] as [UInt8]))
        #expect(!constantTimeEquals([1, 2] as [UInt8], [1, 2, 3] as [UInt8]))
        #expect(!constantTimeEquals([] as [UInt8], [0] as [UInt8]))
        #expect(constantTimeEquals("abc".utf8, Array("abc".utf8)))
        #expect(!constantTimeEquals([0x80] as [UInt8], [0x00] as [UInt8]))
    }

    @Test func constantTimeEqualsOnEveryBitPosition() {
        let base = [UInt8](repeating: 0x5A, count: 16)
        for index in base.indices {
            for bit in 0..<8 {
                var other = base
                other[index] ^= 1 << bit
                #expect(!constantTimeEquals(base, other))
            }
        }
    }
}
