/// Every message of the relay protocol: the control channel (channel 1) and the first
/// line of a data channel (channel 3). One message is one JSON object on one line, with
/// its kind in the `type` field. Unknown fields are ignored, so later versions can add some.
public enum ControlMessage: Equatable, Sendable {
    /// Agent → relay, first line of a control channel: who I am, which version I speak.
    case hello(Hello)
    /// Relay → agent: a fresh nonce the agent must prove its secret over.
    case challenge(Challenge)
    /// Agent → relay: the HMAC proof over the nonce and the agent id.
    case auth(Auth)
    /// Relay → agent: authentication succeeded.
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
        }
    }
}

extension ControlMessage {
    /// `{"type":"hello","version":1,"agent":"office"}`
    public struct Hello: Codable, Equatable, Sendable {
        public var version: Int
        public var agent: String
        public init(version: Int = ProtocolLimits.version, agent: String) {
            self.version = version
            self.agent = agent
        }
    }

    /// `{"type":"challenge","nonce":"<base64 of 32 random bytes>"}`
    public struct Challenge: Codable, Equatable, Sendable {
        public var nonce: String
        public init(nonce: String) { self.nonce = nonce }
    }

    /// `{"type":"auth","proof":"<64 hex digits>"}`
    public struct Auth: Codable, Equatable, Sendable {
        public var proof: String
        public init(proof: String) { self.proof = proof }
    }

    /// `{"type":"welcome","heartbeatSeconds":10}`: the relay's heartbeat interval, for information.
    public struct Welcome: Codable, Equatable, Sendable {
        public var heartbeatSeconds: Double
        public init(heartbeatSeconds: Double) { self.heartbeatSeconds = heartbeatSeconds }
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

    /// `{"type":"connect","session":"3f9a0c12be47","service":"web","token":"…","client":"203.0.113.9:51234"}`
    public struct Connect: Codable, Equatable, Sendable {
        public var session: String
        public var service: String
        public var token: String
        /// The client's address as the relay saw it, for the agent's logs.
        public var client: String
        public init(session: String, service: String, token: String, client: String) {
            self.session = session
            self.service = service
            self.token = token
            self.client = client
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

    /// `{"type":"attach","version":1,"session":"3f9a0c12be47","token":"…"}`
    public struct Attach: Codable, Equatable, Sendable {
        public var version: Int
        public var session: String
        public var token: String
        public init(version: Int = ProtocolLimits.version, session: String, token: String) {
            self.version = version
            self.session = session
            self.token = token
        }
    }

    /// `{"type":"attached","session":"3f9a0c12be47"}`
    public struct Attached: Codable, Equatable, Sendable {
        public var session: String
        public init(session: String) { self.session = session }
    }

    /// `{"type":"ping","seq":7}`
    public struct Ping: Codable, Equatable, Sendable {
        public var seq: UInt64
        public init(seq: UInt64) { self.seq = seq }
    }

    /// `{"type":"pong","seq":7}`
    public struct Pong: Codable, Equatable, Sendable {
        public var seq: UInt64
        public init(seq: UInt64) { self.seq = seq }
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
