import NIOCore
import RelayProtocol
import Testing

/// `{"type":"restarting"}`: its codec, and what the relay's machine does with it.
@Suite struct RestartingMessageTests {
    @Test func itEncodesAndDecodesAsOneShortLine() throws {
        let line = ControlCodec.encode(.restarting(.init()))
        #expect(String(buffer: line) == "{\"type\":\"restarting\"}\n")
        var withoutNewline = line
        withoutNewline.moveWriterIndex(to: line.writerIndex - 1)
        #expect(try ControlCodec.decode(withoutNewline) == .restarting(.init()))
    }

    @Test func aRegisteredAgentThatIsRestartingIsExpectedBack() {
        var machine = ProxyControlStateMachineTests.machine(in: "ready")
        #expect(machine.receive(.restarting(.init())) == [.agentRestarting(agent: "office")])
        #expect(machine.state == .ready(agent: "office", services: ["web"]))
    }

    @Test func beforeRegistrationItIsAProtocolError() {
        for state in ["hello", "auth", "register"] {
            var machine = ProxyControlStateMachineTests.machine(in: state)
            let actions = machine.receive(.restarting(.init()))
            #expect(actions.count == 1)
            guard case .fail(let error) = actions.first else {
                Issue.record("\(state): \(actions)")
                continue
            }
            #expect(error.code == .unexpectedMessage)
        }
    }
}
