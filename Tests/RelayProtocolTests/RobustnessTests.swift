import NIOCore
import RelayProtocol
import Testing

/// Thousands of random and mutated lines: decoding and both state machines must never trap,
/// only throw a ProtocolError or return actions.
@Suite struct RobustnessTests {
    static let decodeCodes: Set<ErrorCode> = [.badJSON, .unknownType, .badMessage]

    static let seeds: [String] =
        Fixture.everyMessage.map { String(text(ControlCodec.encode($0)).dropLast()) } + [
            #"{"type":"hello","version":1,"agent":"a"}"#,
            #"{"type":"register","services":["a","b","c"]}"#,
            #"{"type":"registered","accepted":["a"],"refused":[{"service":"b","code":"timeout","message":""}]}"#,
            "{}", "[]", "null", #"{"type":""}"#, #"{"type":"ping","seq":0}"#,
        ]

    static let alphabet = Array(#"{}[]":,.-+eE0123456789 truefalsnl\u00"#.utf8) + [0x00, 0x0A, 0x0D, 0xC3, 0xA9, 0xFF]

    static func mutate(_ line: String, _ rng: inout SeededGenerator) -> [UInt8] {
        var bytes = Array(line.utf8)
        for _ in 0..<Int.random(in: 1...4, using: &rng) {
            let position = bytes.isEmpty ? 0 : Int.random(in: 0..<bytes.count, using: &rng)
            switch Int.random(in: 0..<6, using: &rng) {
            case 0 where !bytes.isEmpty: bytes[position] = alphabet.randomElement(using: &rng)!
            case 1: bytes.insert(alphabet.randomElement(using: &rng)!, at: position)
            case 2 where !bytes.isEmpty: bytes.remove(at: position)
            case 3: bytes = Array(bytes.prefix(position))
            case 4 where !bytes.isEmpty:
                let end = min(bytes.count, position + Int.random(in: 1...10, using: &rng))
                bytes.insert(contentsOf: bytes[position..<end], at: position)
            default: bytes[position...].reverse()
            }
        }
        return bytes
    }

    static func randomValue(_ rng: inout SeededGenerator, depth: Int = 0) -> String {
        switch Int.random(in: 0..<(depth > 2 ? 5 : 7), using: &rng) {
        case 0: return "null"
        case 1: return Bool.random(using: &rng) ? "true" : "false"
        case 2: return String(Int64.random(in: .min ... .max, using: &rng))
        case 3: return String(Double.random(in: -1e6...1e6, using: &rng))
        case 4:
            let pool = ["", "web", "3f9a0c12be47", Fixture.token, Fixture.proof, "timeout", "a b", "\\n", "é"]
            return "\"\(pool.randomElement(using: &rng)!)\""
        case 5:
            return "["
                + (0..<Int.random(in: 0...3, using: &rng)).map { _ in randomValue(&rng, depth: depth + 1) }
                .joined(separator: ",") + "]"
        default:
            return randomObject(&rng, depth: depth + 1)
        }
    }

    static let fieldsByType: [String: [String]] = [
        "hello": ["version", "agent", "nonce"], "challenge": ["nonce", "at"], "auth": ["proof"],
        "welcome": ["heartbeatSeconds", "proof", "at"],
        "register": ["services"], "registered": ["accepted", "refused"],
        "connect": ["session", "service", "token", "client", "at", "expiresIn"],
        "refuse": ["session", "code", "message"],
        "attach": ["version", "session", "token", "proof"], "attached": ["session"], "ping": ["seq", "at"],
        "pong": ["seq", "at"],
        "error": ["code", "message"],
    ]

    /// A plausible value for `key`, mostly valid, so many generated lines get past the codec.
    static func validValue(for key: String, _ rng: inout SeededGenerator) -> String {
        func quoted(_ pool: [String]) -> String { "\"\(pool.randomElement(using: &rng)!)\"" }
        let names = ["a", "web", "ssh", "mail"]
        switch key {
        case "version": return ["1", "1", "1", "2", "0"].randomElement(using: &rng)!
        case "agent": return quoted(["a", "a", "ghost"])
        case "service": return quoted(names)
        case "nonce": return quoted(["n", "bm9uY2U="])
        case "proof":
            return quoted([
                Fixture.proof,
                Authenticator.agentProof(secret: Secret("s"), .init(relayNonce: "n", agentNonce: "m", agentID: "a")),
            ])
        case "heartbeatSeconds": return ["10", "0.5", "0"].randomElement(using: &rng)!
        case "services", "accepted":
            return "[" + (0..<Int.random(in: 0...3, using: &rng)).map { _ in quoted(names) }.joined(separator: ",")
                + "]"
        case "refused":
            return Bool.random(using: &rng) ? "[]" : #"[{"service":"mail","code":"unknown_service","message":"no"}]"#
        case "session": return quoted([Fixture.session, "000000000000"])
        case "token": return quoted([Fixture.token])
        case "client": return quoted(["203.0.113.9:51234", ""])
        case "code": return quoted(ErrorCode.allCases.map(\.rawValue))
        case "message": return quoted(["m", "", "é\\n"])
        case "seq", "at", "expiresIn": return String(UInt64.random(in: 0 ... .max, using: &rng))
        default: return randomValue(&rng, depth: 1)
        }
    }

    static func randomObject(_ rng: inout SeededGenerator, depth: Int = 0) -> String {
        let types = Fixture.everyMessage.map(\.type) + ["nope"]
        let type = types.randomElement(using: &rng)!
        var fields: [String] = []
        if depth == 0 || Bool.random(using: &rng) { fields.append(#""type":"\#(type)""#) }
        for key in Self.fieldsByType[type] ?? ["x"] {
            switch Int.random(in: 0..<20, using: &rng) {
            case 0: break
            case 1: fields.append(#""\#(key)":\#(randomValue(&rng, depth: depth + 1))"#)
            default: fields.append(#""\#(key)":\#(validValue(for: key, &rng))"#)
            }
        }
        if Int.random(in: 0..<4, using: &rng) == 0 {
            fields.append(#""extra":\#(randomValue(&rng, depth: depth + 1))"#)
        }
        return "{" + fields.shuffled(using: &rng).joined(separator: ",") + "}"
    }

    /// Machines in every state they can be in when a line arrives.
    static func proxyMachines() -> [ProxyControlStateMachine] {
        let secret = Secret("s")
        var machine = ProxyControlStateMachine(
            heartbeatSeconds: 10,
            lookup: { $0 == "a" ? AgentCredentials(secret: secret, services: ["web", "a"]) : nil },
            makeNonce: { "n" })
        var machines = [machine]
        _ = machine.receive(.hello(.init(agent: "a", nonce: "m")))
        machines.append(machine)
        let handshake = Authenticator.Handshake(relayNonce: "n", agentNonce: "m", agentID: "a")
        _ = machine.receive(.auth(.init(proof: Authenticator.agentProof(secret: secret, handshake))))
        machines.append(machine)
        _ = machine.receive(.register(.init(services: ["web"])))
        machines.append(machine)
        return machines
    }

    static func agentMachines() -> [AgentControlStateMachine] {
        var machine = AgentControlStateMachine(agentID: "a", secret: Secret("s"), services: ["web"], agentNonce: "m")
        var machines = [machine]
        _ = machine.start()
        machines.append(machine)
        _ = machine.receive(.challenge(.init(nonce: "n")))
        machines.append(machine)
        let handshake = Authenticator.Handshake(relayNonce: "n", agentNonce: "m", agentID: "a")
        _ = machine.receive(
            .welcome(.init(heartbeatSeconds: 1, proof: Authenticator.relayProof(secret: Secret("s"), handshake))))
        machines.append(machine)
        _ = machine.receive(.registered(.init(accepted: ["web"], refused: [])))
        machines.append(machine)
        return machines
    }

    /// Whatever a machine sends must itself be a line the peer can decode.
    static func checkSendable(_ message: ControlMessage) throws {
        var line = ControlCodec.encode(message)
        line.moveWriterIndex(to: line.writerIndex - 1)
        #expect(try ControlCodec.decode(line) == message)
    }

    @Test func randomLinesNeverTrap() throws {
        var rng = SeededGenerator(seed: 0x5EED)
        let proxies = Self.proxyMachines()
        let agents = Self.agentMachines()
        var decoded = 0
        var rejected: [ErrorCode: Int] = [:]
        for round in 0..<4000 {
            let bytes: [UInt8]
            switch round % 4 {
            case 0: bytes = Self.mutate(Self.seeds.randomElement(using: &rng)!, &rng)
            case 1: bytes = Array(Self.randomObject(&rng).utf8)
            case 2: bytes = Self.mutate(Self.randomObject(&rng), &rng)
            default:
                bytes = (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            }
            let message: ControlMessage
            do {
                message = try ControlCodec.decode(ByteBuffer(bytes: bytes))
            } catch {
                #expect(Self.decodeCodes.contains(error.code), "\(error) for \(String(decoding: bytes, as: UTF8.self))")
                rejected[error.code, default: 0] += 1
                for var machine in proxies { #expect(machine.receiveInvalid(error) == [.fail(error)]) }
                continue
            }
            decoded += 1
            try Self.checkSendable(message)
            for var machine in proxies {
                for action in machine.receive(message) {
                    if case .send(let reply) = action { try Self.checkSendable(reply) }
                    if case .fail(let error) = action {
                        try Self.checkSendable(error.errorMessage)
                        #expect(machine.state == .closed)
                    }
                }
            }
            for var machine in agents {
                for action in machine.receive(message) {
                    if case .send(let reply) = action { try Self.checkSendable(reply) }
                    if case .fail = action { #expect(machine.state == .closed) }
                }
            }
        }
        // The generator must exercise both outcomes and every decode error, or the test proves little.
        #expect(decoded > 100)
        #expect(rejected.keys.count == 3, "\(rejected)")
    }

    @Test func randomStreamsNeverTrapTheFramer() {
        var rng = SeededGenerator(seed: 7)
        for _ in 0..<500 {
            var framer = LineFramer(maxLineBytes: Int.random(in: 1...64, using: &rng))
            var failed = false
            for _ in 0..<20 {
                let chunk = (0..<Int.random(in: 0...40, using: &rng)).map { _ in
                    Bool.random(using: &rng) ? UInt8(ascii: "\n") : UInt8.random(in: 0...255, using: &rng)
                }
                framer.append(ByteBuffer(bytes: chunk))
                do {
                    while let line = try framer.nextLine() {
                        #expect(line.readableBytes < framer.maxLineBytes)
                        #expect(!line.readableBytesView.contains(UInt8(ascii: "\n")))
                    }
                } catch {
                    #expect(error.code == .lineTooLong)
                    failed = true
                    break
                }
            }
            if !failed { _ = framer.takeRemainder() }
        }
    }
}
