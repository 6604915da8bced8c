import FoundationEssentials
import RelayDataPlane

/// What a daemon hands the next process of its unit besides the descriptors: the listeners
/// it stored, the agents it had, and every carried session's metadata, byte counts and
/// per-direction state. Stored in the `state` memfd as one JSON line (``version`` first),
/// then the sessions' unsent bytes, back to back, in the order of ``sessions`` (forward,
/// then backward), each as long as its ``Direction/pendingLength``.
public struct HandoverState: Codable, Sendable, Equatable {
    /// The document's version: a process refuses (logs, closes everything) another one.
    public static let currentVersion = 1
    /// The largest document read back: 1 GiB (8,192 sessions with two full 256 KiB pipes
    /// each is 4 GiB at worst; in practice pipes are nearly always empty).
    public static let maxBytes = 1 << 30

    /// One direction of a carried session.
    public struct Direction: Codable, Sendable, Equatable {
        /// Bytes read from its source and not yet written (in the document's tail).
        public var pendingLength: Int
        /// Its source's end of stream was read.
        public var sourceEnded: Bool
        /// Its end of stream was passed on.
        public var finished: Bool
        /// The bytes themselves (not in the JSON line).
        public var pending: [UInt8] = []

        enum CodingKeys: String, CodingKey { case pendingLength, sourceEnded, finished }

        /// A direction of a frozen session.
        public init(_ frozen: FrozenDirection) {
            self.pendingLength = frozen.pending.count
            self.sourceEnded = frozen.sourceEnded
            self.finished = frozen.finished
            self.pending = frozen.pending
        }

        /// What the data plane resumes.
        public var frozen: FrozenDirection {
            FrozenDirection(pending: self.pending, sourceEnded: self.sourceEnded, finished: self.finished)
        }
    }

    /// One carried session.
    public struct Session: Codable, Sendable, Equatable {
        public var id: String
        public var service: String
        /// At the relay, the agent serving it; at the agent, empty.
        public var agent: String
        /// The client's address as logged.
        public var client: String
        /// At the agent, the target it dialled; at the relay, nil.
        public var target: String?
        /// At the agent, the relay that asked for it (`host:port`); at the relay, nil.
        public var relay: String?
        /// When it started, seconds since 1970.
        public var startedAt: Double
        /// Bytes moved first → second and second → first so far.
        public var forwardBytes: Int64
        public var backwardBytes: Int64
        public var forward: Direction
        public var backward: Direction

        public init(
            id: String, service: String, agent: String, client: String, target: String? = nil, relay: String? = nil,
            startedAt: Double,
            forwardBytes: Int64, backwardBytes: Int64, forward: Direction, backward: Direction
        ) {
            self.id = id
            self.service = service
            self.agent = agent
            self.client = client
            self.target = target
            self.relay = relay
            self.startedAt = startedAt
            self.forwardBytes = forwardBytes
            self.backwardBytes = backwardBytes
            self.forward = forward
            self.backward = backward
        }
    }

    public var version: Int
    /// "relay-proxy" or "relay-agent": a process takes only its own daemon's state.
    public var daemon: String
    /// When the old process began the handover, seconds since 1970 (how long it took).
    public var startedAt: Double
    /// The listeners stored with it (`agents`, service names).
    public var listeners: [String]
    /// The agents registered at the relay when the handover began (their clients wait for
    /// them for ``Handover/agentGraceSeconds``).
    public var agents: [String]
    public var sessions: [Session]

    public init(
        daemon: String, startedAt: Double, listeners: [String] = [], agents: [String] = [], sessions: [Session] = []
    ) {
        self.version = Self.currentVersion
        self.daemon = daemon
        self.startedAt = startedAt
        self.listeners = listeners
        self.agents = agents
        self.sessions = sessions
    }

    /// The document: the JSON line, then the unsent bytes.
    public func encoded() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var bytes = Array((try? encoder.encode(self)) ?? Data())
        bytes.append(UInt8(ascii: "\n"))
        for session in self.sessions {
            bytes += session.forward.pending
            bytes += session.backward.pending
        }
        return bytes
    }

    /// Reads a document, checking its version, its daemon and that the tail holds exactly
    /// the bytes the sessions announce.
    public static func decode(_ bytes: [UInt8], daemon: String) throws(HandoverStateError) -> HandoverState {
        guard let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) else {
            throw HandoverStateError("no JSON line")
        }
        var state: HandoverState
        do {
            state = try JSONDecoder().decode(HandoverState.self, from: Data(bytes[..<newline]))
        } catch {
            throw HandoverStateError("not a state document: \(error)")
        }
        guard state.version == Self.currentVersion else {
            throw HandoverStateError("version \(state.version), this \(daemon) reads \(Self.currentVersion)")
        }
        guard state.daemon == daemon else { throw HandoverStateError("written by \(state.daemon), not \(daemon)") }
        var offset = newline + 1
        for index in state.sessions.indices {
            for forward in [true, false] {
                let length =
                    forward ? state.sessions[index].forward.pendingLength : state.sessions[index].backward.pendingLength
                guard length >= 0, length <= bytes.count - offset else {
                    throw HandoverStateError("session \(state.sessions[index].id): its unsent bytes are cut short")
                }
                let pending = Array(bytes[offset..<offset + length])
                if forward {
                    state.sessions[index].forward.pending = pending
                } else {
                    state.sessions[index].backward.pending = pending
                }
                offset += length
            }
        }
        guard offset == bytes.count else {
            throw HandoverStateError("\(bytes.count - offset) bytes past the last session")
        }
        return state
    }
}

/// A state document that cannot be used.
public struct HandoverStateError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
