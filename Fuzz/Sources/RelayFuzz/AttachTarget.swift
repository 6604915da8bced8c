import RelayProtocol

/// The relay's first-line handling on the agent port (AgentPort.handle): the first line, cut
/// and framed as HandshakeReader frames it, is `hello`, `attach` or refused; an attach is
/// checked (version, pending session, token) against one session waiting for its data
/// channel. Only the right session id and token may claim it.
enum AttachTarget {
    static let session = "3f9a0c12be47a1d2"
    static let token = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

    static func run(_ bytes: [UInt8]) {
        guard let first = Lines.messages(bytes).first else { return }
        guard case .success(let message) = first else { return }
        guard case .attach(let attach) = message else { return }
        guard attach.version == ProtocolLimits.version, attach.session == Self.session else { return }
        var machine = SessionStateMachine.relay(attachTimeout: 10, halfCloseTimeout: 10)
        _ = machine.start()
        let matches = Tokens.matches(attach.token, Self.token)
        let actions = machine.handle(.dataChannelArrived(tokenMatches: matches))
        let claimed = actions.contains(.sendAttached)
        check(claimed == (attach.token == Self.token), "token \(attach.token) claimed: \(claimed)")
    }
}
