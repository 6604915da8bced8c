import RelayProtocol

/// The relay's first-line handling on the agent port (AgentPort.handle): the first line, cut
/// and framed as HandshakeReader frames it, is `hello`, `attach` or refused; an attach is
/// checked (version, pending session, token and the proof made with the agent's secret, as
/// ProxySession.claim checks them) against one session waiting for its data channel. Only the
/// right session id, token and proof may claim it.
enum AttachTarget {
    static let session = "3f9a0c12be47a1d2"
    static let token = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    static let secret = ProxyControlTarget.secret

    static func run(_ bytes: [UInt8]) {
        guard let first = Lines.messages(bytes).first else { return }
        guard case .success(let message) = first else { return }
        guard case .attach(let attach) = message else { return }
        guard attach.version == ProtocolLimits.version, attach.session == Self.session else { return }
        var machine = SessionStateMachine.relay(attachTimeout: 10, halfCloseTimeout: 10)
        _ = machine.start()
        let proved = Authenticator.verifyAttach(
            proof: attach.proof ?? "", secret: Self.secret, session: Self.session, token: Self.token)
        let matches = Tokens.matches(attach.token, Self.token) && proved
        let actions = machine.handle(.dataChannelArrived(tokenMatches: matches))
        let claimed = actions.contains(.sendAttached)
        let right = Authenticator.attachProof(secret: Self.secret, session: Self.session, token: Self.token)
        check(
            claimed == (attach.token == Self.token && attach.proof == right),
            "token \(attach.token) proof \(attach.proof ?? "-") claimed: \(claimed)")
    }
}
