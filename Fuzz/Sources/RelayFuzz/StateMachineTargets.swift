import RelayProtocol

/// The relay's control-channel machine fed any sequence of lines: it never traps, stays
/// closed once closed, and only a right proof authenticates. The relay's nonce is fixed, so a
/// seed can carry the right proof (the agent's nonce is in its `hello`) and the fuzzer can reach
/// `register`, `refuse` and heartbeats.
enum ProxyControlTarget {
    static let secret = Secret("fuzz-secret-of-office-0123456789")
    static let nonce = "ZnV6ei1yZWxheS1ub25jZQ=="

    static func run(_ bytes: [UInt8]) {
        var machine = ProxyControlStateMachine(
            heartbeatSeconds: 15,
            lookup: { $0 == "office" ? AgentCredentials(secret: Self.secret, services: ["web", "ssh"]) : nil },
            makeNonce: { Self.nonce })
        for line in Lines.messages(bytes) {
            let wasClosed = machine.state == .closed
            let actions: [ProxyControlStateMachine.Action]
            switch line {
            case .success(let message): actions = machine.receive(message)
            case .failure(let error): actions = machine.receiveInvalid(error)
            }
            if wasClosed { check(actions.isEmpty, "a closed machine acted: \(actions)") }
            if let agent = machine.authenticatedAgent {
                check(agent == "office", "authenticated an agent that has no credentials: \(agent)")
                check(machine.provedSecret == Self.secret, "authenticated without the secret")
            }
        }
    }
}

/// The agent's control-channel machine fed any sequence of lines from a relay: it never traps,
/// stays closed once closed, passes on `connect` only for an offered service and only after
/// the relay proved itself in `welcome` (its nonce is fixed, so a seed carries the right proof).
enum AgentControlTarget {
    static func run(_ bytes: [UInt8]) {
        var machine = AgentControlStateMachine(
            agentID: "office", secret: ProxyControlTarget.secret, services: ["web", "ssh"],
            agentNonce: "ZnV6ei1hZ2VudC1ub25jZQ==")
        _ = machine.start()
        for line in Lines.messages(bytes) {
            let wasClosed = machine.state == .closed
            let actions: [AgentControlStateMachine.Action]
            switch line {
            case .success(let message): actions = machine.receive(message)
            case .failure(let error): actions = machine.receiveInvalid(error)
            }
            if wasClosed { check(actions.isEmpty, "a closed machine acted: \(actions)") }
            for action in actions {
                if case .connectRequested(let connect) = action {
                    check(["web", "ssh"].contains(connect.service), "asked to connect a service not offered")
                    if case .ready = machine.state {} else { check(false, "a connect before registration") }
                }
            }
        }
    }
}
