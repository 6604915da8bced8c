/// The machine-readable reason carried by `error`, `refuse` and refused registrations.
///
/// The raw values are the wire strings; `docs/protocol.md` lists when each is sent.
public enum ErrorCode: String, Codable, Sendable, CaseIterable {
    /// The line is not valid JSON, or not a JSON object.
    case badJSON = "bad_json"
    /// The line exceeds ``ProtocolLimits/maxLineBytes``.
    case lineTooLong = "line_too_long"
    /// The `type` field names no known message.
    case unknownType = "unknown_type"
    /// A known message with a missing field, a field of the wrong type or an invalid value.
    case badMessage = "bad_message"
    /// A valid message that is not allowed in the connection's current state.
    case unexpectedMessage = "unexpected_message"
    /// The peer speaks a protocol version this build does not.
    case unsupportedVersion = "unsupported_version"
    /// The agent id is unknown or the proof of its secret is wrong (deliberately not told apart).
    case authFailed = "auth_failed"
    /// The peer stayed silent for longer than the heartbeat timeout. (A handshake that
    /// takes too long is closed without a message.)
    case timeout = "timeout"
    /// An `attach` names no pending session (unknown, already attached, or expired).
    case unknownSession = "unknown_session"
    /// An `attach` carries the wrong token for its session, or a proof not made with the
    /// secret of the agent the session was offered to (the two are deliberately not told apart).
    case badToken = "bad_token"
    /// A service the relay's config does not assign to this agent, or the agent does not serve.
    case unknownService = "unknown_service"
    /// The agent received a `connect` after the relay had stopped waiting for it (the agent
    /// was stalled): it was dropped without dialling the target.
    case connectExpired = "connect_expired"
    /// The agent already runs its `maxSessions` sessions: the target was not dialled.
    case agentBusy = "agent_busy"
    /// The agent could not connect to the service's target.
    case targetUnreachable = "target_unreachable"
    /// The agent reached the target but could not open a data channel to the relay.
    case dataChannelFailed = "data_channel_failed"
    /// A newer control channel for the same agent took over this one.
    case replaced = "replaced"
    /// The sender is shutting down.
    case shuttingDown = "shutting_down"
}
