/// Every message of the relay protocol: the control channel (channel 1) and the first
/// line of a data channel (channel 3). One message is one JSON object on one line, with
/// its kind in the `type` field. Unknown fields are ignored, so later versions can add some.
public enum ControlMessage: Equatable, Sendable {
    /// Agent → relay, first line of a control channel: who I am, which version I speak, and
    /// the agent's own fresh nonce, which the relay's proof in `welcome` must cover.
    case hello(Hello)
    /// Relay → agent: a fresh nonce the agent must prove its secret over.
    case challenge(Challenge)
    /// Agent → relay: the HMAC proof over both nonces and the agent id.
    case auth(Auth)
    /// Relay → agent: authentication succeeded, with the relay's own proof over both nonces.
    case welcome(Welcome)
    /// Agent → relay: the services this agent can reach (S3).
    case register(Register)
    /// Relay → agent: which services were accepted, which refused and why (S4).
    case registered(Registered)
    /// Relay → agent: a client wants a service; open a data channel for this session (S7).
    case connect(Connect)
    /// Agent → relay: the agent cannot serve this session (S8).
    case refuse(Refuse)
    /// Agent → relay, first line of a data channel: join this connection to a session (S10).
    case attach(Attach)
    /// Relay → agent, on a data channel: the attach succeeded; raw bytes follow.
    case attached(Attached)
    /// Either way: a heartbeat request.
    case ping(Ping)
    /// Either way: the answer to a `ping`, echoing its sequence number.
    case pong(Pong)
    /// Either way: a protocol or policy error; the sender closes the connection after it.
    case error(ErrorReport)
    /// Agent → relay: the agent is restarting and hands its live sessions to its next
    /// process; it closes the channel after this line and registers again within seconds.
    /// Meanwhile the relay holds new clients of its services instead of refusing them.
    case restarting(Restarting)

    /// The wire value of the `type` field for this message.
    public var type: String {
        switch self {
        case .hello: "hello"
        case .challenge: "challenge"
        case .auth: "auth"
        case .welcome: "welcome"
        case .register: "register"
        case .registered: "registered"
        case .connect: "connect"
        case .refuse: "refuse"
        case .attach: "attach"
        case .attached: "attached"
        case .ping: "ping"
        case .pong: "pong"
        case .error: "error"
        case .restarting: "restarting"
        }
    }
}

extension ControlMessage {
    /// `{"type":"hello","version":2,"agent":"office","nonce":"<base64 of 32 random bytes>"}`
    public struct Hello: Codable, Equatable, Sendable {
        public var version: Int
        public var agent: String
        /// The agent's fresh nonce. Optional in the type only, so that a version 1 `hello`
        /// (which has none) decodes and is answered `unsupported_version`; version 2 requires it.
        public var nonce: String?
        public init(version: Int = ProtocolLimits.version, agent: String, nonce: String?) {
            self.version = version
            self.agent = agent
            self.nonce = nonce
        }
    }

    /// `{"type":"challenge","nonce":"<base64 of 32 random bytes>","at":81234}`
    public struct Challenge: Codable, Equatable, Sendable {
        public var nonce: String
        /// The relay's monotonic clock in milliseconds when it sent this (see ``Connect/at``).
        public var at: UInt64?
        public init(nonce: String, at: UInt64? = nil) {
            self.nonce = nonce
            self.at = at
        }
    }

    /// `{"type":"auth","proof":"<64 hex digits>"}`
    public struct Auth: Codable, Equatable, Sendable {
        public var proof: String
        public init(proof: String) { self.proof = proof }
    }

    /// `{"type":"welcome","heartbeatSeconds":10,"proof":"<64 hex digits>","at":81236}`: the
    /// relay's heartbeat interval, for information, and its proof that it knows the agent's secret.
    public struct Welcome: Codable, Equatable, Sendable {
        public var heartbeatSeconds: Double
        /// The relay's proof over both nonces (``Authenticator/relayProof(secret:_:)``).
        public var proof: String
        /// The relay's monotonic clock in milliseconds when it sent this.
        public var at: UInt64?
        public init(heartbeatSeconds: Double, proof: String, at: UInt64? = nil) {
            self.heartbeatSeconds = heartbeatSeconds
            self.proof = proof
            self.at = at
        }
    }

    /// `{"type":"register","services":["web","ssh"]}`
    public struct Register: Codable, Equatable, Sendable {
        public var services: [String]
        public init(services: [String]) { self.services = services }
    }

    /// `{"type":"registered","accepted":["web"],"refused":[{"service":"ssh","code":"unknown_service","message":"…"}]}`
    public struct Registered: Codable, Equatable, Sendable {
        public var accepted: [String]
        public var refused: [RefusedService]
        public init(accepted: [String], refused: [RefusedService]) {
            self.accepted = accepted
            self.refused = refused
        }
    }

    /// One refused service in ``Registered``.
    public struct RefusedService: Codable, Equatable, Sendable {
        public var service: String
        public var code: ErrorCode
        public var message: String
        public init(service: String, code: ErrorCode, message: String) {
            self.service = service
            self.code = code
            self.message = message
        }
    }

    /// `{"type":"connect","session":"3f9a0c12be47","service":"web","token":"…","client":"203.0.113.9:51234","at":81240,"expiresIn":10000}`
    public struct Connect: Codable, Equatable, Sendable {
        public var session: String
        public var service: String
        public var token: String
        /// The client's address as the relay saw it, for the agent's logs.
        public var client: String
        /// The relay's monotonic clock in milliseconds when it sent this. Only differences
        /// between two `at` values of one control channel mean anything (``ConnectAge``).
        public var at: UInt64?
        /// How many milliseconds after `at` the relay stops waiting for the data channel.
        public var expiresIn: UInt64?
        /// The relay's address the client connected to (`198.51.100.1:443`), for the PROXY
        /// header the agent may write to the target; absent from older relays.
        public var server: String?
        public init(
            session: String, service: String, token: String, client: String, at: UInt64? = nil,
            expiresIn: UInt64? = nil, server: String? = nil
        ) {
            self.session = session
            self.service = service
            self.token = token
            self.client = client
            self.at = at
            self.expiresIn = expiresIn
            self.server = server
        }
    }

    /// `{"type":"refuse","session":"3f9a0c12be47","code":"target_unreachable","message":"…"}`
    public struct Refuse: Codable, Equatable, Sendable {
        public var session: String
        public var code: ErrorCode
        public var message: String
        public init(session: String, code: ErrorCode, message: String) {
            self.session = session
            self.code = code
            self.message = message
        }
    }

    /// `{"type":"attach","version":2,"session":"3f9a0c12be47","token":"…","proof":"<64 hex digits>"}`
    public struct Attach: Codable, Equatable, Sendable {
        public var version: Int
        public var session: String
        public var token: String
        /// HMAC keyed by the agent's secret over the session and token
        /// (``Authenticator/attachProof(secret:session:token:)``). Optional in the type only,
        /// so that a version 1 `attach` decodes and is answered `unsupported_version`.
        public var proof: String?
        public init(version: Int = ProtocolLimits.version, session: String, token: String, proof: String?) {
            self.version = version
            self.session = session
            self.token = token
            self.proof = proof
        }
    }

    /// `{"type":"attached","session":"3f9a0c12be47"}`
    public struct Attached: Codable, Equatable, Sendable {
        public var session: String
        public init(session: String) { self.session = session }
    }

    /// `{"type":"ping","seq":7}`; from the relay also `"at":81250`.
    public struct Ping: Codable, Equatable, Sendable {
        public var seq: UInt64
        /// The relay's monotonic clock in milliseconds when it sent this (the agent sends none).
        public var at: UInt64?
        public init(seq: UInt64, at: UInt64? = nil) {
            self.seq = seq
            self.at = at
        }
    }

    /// `{"type":"pong","seq":7}`; from the relay also `"at":81251`.
    public struct Pong: Codable, Equatable, Sendable {
        public var seq: UInt64
        /// The relay's monotonic clock in milliseconds when it sent this (the agent sends none).
        public var at: UInt64?
        public init(seq: UInt64, at: UInt64? = nil) {
            self.seq = seq
            self.at = at
        }
    }

    /// `{"type":"restarting"}`
    public struct Restarting: Codable, Equatable, Sendable {
        public init() {}
    }

    /// `{"type":"error","code":"auth_failed","message":"authentication failed"}`
    public struct ErrorReport: Codable, Equatable, Sendable {
        public var code: ErrorCode
        public var message: String
        public init(code: ErrorCode, message: String) {
            self.code = code
            self.message = message
        }
    }
}

extension ControlMessage {
    /// The relay's clock reading this message carries (`at`), if any.
    public var at: UInt64? {
        switch self {
        case .challenge(let m): m.at
        case .welcome(let m): m.at
        case .connect(let m): m.at
        case .ping(let m): m.at
        case .pong(let m): m.at
        default: nil
        }
    }

    /// This message with `at` set to `millis` where the message has the field and it is
    /// unset (the relay stamps what it sends with its monotonic clock).
    public func stamped(at millis: UInt64) -> ControlMessage {
        switch self {
        case .challenge(var m) where m.at == nil:
            m.at = millis
            return .challenge(m)
        case .welcome(var m) where m.at == nil:
            m.at = millis
            return .welcome(m)
        case .connect(var m) where m.at == nil:
            m.at = millis
            return .connect(m)
        case .ping(var m) where m.at == nil:
            m.at = millis
            return .ping(m)
        case .pong(var m) where m.at == nil:
            m.at = millis
            return .pong(m)
        default:
            return self
        }
    }
}
