import Testing

@testable import RelayProxy

/// The relay's memory of agents expected back after a restart.
@Suite struct AgentGraceTests {
    @Test func anExpectedAgentHasADeadlineUntilItPasses() async throws {
        let grace = AgentGrace()
        #expect(grace.deadline(for: "office") == nil)
        grace.expect("office", within: 10)
        let deadline = try #require(grace.deadline(for: "office"))
        #expect(deadline > .now + .seconds(9) && deadline <= .now + .seconds(10))
        #expect(grace.deadline(for: "lab") == nil)
        grace.expect("lab", within: 0.05)
        try await Task.sleep(for: .milliseconds(100))
        #expect(grace.deadline(for: "lab") == nil, "a passed deadline is forgotten")
        #expect(grace.deadline(for: "office") != nil)
    }
}
