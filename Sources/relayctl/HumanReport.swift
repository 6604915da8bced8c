import FoundationEssentials
import RelayControl

/// relayctl's default output: what a person reads, in aligned columns.
enum HumanReport {
    // Every daemon-supplied string passes through `safe` (tables: HumanFormat.table) before it is printed.
    static func status(_ report: StatusReport, colour: Bool) -> String {
        let daemon = report.role == "agent" ? "relay-agent" : "relay-proxy"
        var fields: [(String, String)] = [
            (
                "daemon",
                "\(daemon) \(safe(report.version)), pid \(report.pid), up \(HumanFormat.duration(report.uptimeSeconds))"
            ),
            ("config", "\(safe(report.config)) (loaded \(Self.ago(report.configLoadedAt)))"),
        ]
        if let listen = report.listen { fields.append(("agent port", safe(listen))) }
        if let agent = report.agent { fields.append(("agent id", safe(agent))) }
        // Several relays: a table of them below (one relay: its details here).
        let relays = report.relays ?? []
        if relays.count > 1 {
            let connected = relays.filter { $0.state == "connected" }.count
            fields.append(("relays", "\(connected)/\(relays.count) connected"))
        } else if let relay = report.relay {
            var state = Self.paint(safe(relay.state), relay.state == "connected" ? .green : .red, colour)
            if let since = relay.since { state += " for \(HumanFormat.duration(-since.timeIntervalSinceNow))" }
            if let retry = relay.retryAt {
                state += ", next attempt in \(HumanFormat.duration(retry.timeIntervalSinceNow.rounded(.up)))"
            }
            fields.append(("relay", "\(safe(relay.address)) \(state)"))
            if let remote = relay.remote, let local = relay.local {
                fields.append(("channel", "\(safe(local)) -> \(safe(remote))"))
            }
            if let roundTrip = relay.heartbeatRoundTripSeconds {
                fields.append(("heartbeat", "\(HumanFormat.shortDuration(roundTrip)) round trip"))
            }
            fields.append(("attempts", "\(relay.reconnectAttempts) since the last registration"))
            if let error = relay.lastError { fields.append(("last error", safe(error))) }
        }
        if let connected = report.agentsConnected, let configured = report.agentsConfigured {
            fields.append(("agents", "\(connected)/\(configured) connected"))
        }
        fields.append(
            (
                "sessions",
                "\(report.sessions) live (\(report.sessionsPending) pending), \(report.sessionsTotal) since start"
            ))
        fields.append(("control", safe(report.control)))
        if let metrics = report.metrics { fields.append(("metrics", "http://\(safe(metrics))/metrics")) }
        if let limits = report.limits {
            // Only the limits that were hit: the others are in --json.
            let hit = limits.filter { $0.value.hits > 0 }.sorted { $0.key < $1.key }
            fields.append(
                (
                    "limits hit",
                    hit.isEmpty
                        ? "none"
                        : hit.map {
                            "\(safe($0.key)) \($0.value.hits)x"
                                + ($0.value.max.map { " (max \($0 == $0.rounded() ? "\(Int($0))" : "\($0)"))" } ?? "")
                        }
                        .joined(separator: ", ")
                ))
        }
        let width = fields.map(\.0.count).max() ?? 0
        var lines = fields.map { Self.padded($0.0, to: width) + "  " + $0.1 }
        if !report.services.isEmpty {
            lines.append("")
            lines.append(Self.services(report.services, colour: colour))
        }
        if let agents = report.agents, !agents.isEmpty {
            lines.append("")
            lines.append(Self.agents(agents, colour: colour))
        }
        if relays.count > 1 {
            lines.append("")
            lines.append(Self.relays(relays, colour: colour))
        }
        return lines.joined(separator: "\n")
    }

    /// An agent's relays, one a row (an agent with several `relays`).
    static func relays(_ relays: [RelayReport], colour: Bool) -> String {
        let rows = relays.map { relay in
            var state = relay.state
            if let since = relay.since { state += " for \(HumanFormat.duration(-since.timeIntervalSinceNow))" }
            if let retry = relay.retryAt {
                state += ", next attempt in \(HumanFormat.duration(retry.timeIntervalSinceNow.rounded(.up)))"
            }
            return [
                relay.address, state, relay.heartbeatRoundTripSeconds.map(HumanFormat.shortDuration) ?? "-",
                relay.sessions.map { "\($0)" } ?? "-", relay.state == "connected" ? "-" : (relay.lastError ?? "-"),
            ]
        }
        return HumanFormat.table(["RELAY", "STATE", "RTT", "SESSIONS", "LAST ERROR"], rows, rightAligned: [2, 3]) {
            column, row, text in
            column == 1 ? Self.paint(text, relays[row].state == "connected" ? .green : .red, colour) : text
        }
    }

    static func agents(_ agents: [AgentReport], colour: Bool) -> String {
        let rows = agents.map { agent in
            [
                agent.id,
                agent.connected ? "connected" : "down",
                agent.remote ?? "-",
                agent.connectedSince.map { HumanFormat.duration(-$0.timeIntervalSinceNow) } ?? "-",
                agent.heartbeatRoundTripSeconds.map(HumanFormat.shortDuration) ?? "-",
                agent.services.isEmpty ? "-" : agent.services.joined(separator: ","),
                "\(agent.sessions)",
            ]
        }
        return HumanFormat.table(
            ["AGENT", "STATE", "REMOTE", "UP", "RTT", "SERVICES", "SESSIONS"], rows, rightAligned: [3, 4, 6]
        ) { column, row, text in
            column == 1 ? Self.paint(text, agents[row].connected ? .green : .red, colour) : text
        }
    }

    static func services(_ services: [ServiceReport], colour: Bool) -> String {
        let atProxy = services.contains { $0.listen != nil }
        let rows = services.map { service in
            [
                service.name,
                atProxy ? (service.agents?.joined(separator: ",") ?? service.agent ?? "-") : nil,
                atProxy ? (service.listen ?? "-") : (service.target ?? "-"),
                service.up ? "up" : "down",
                "\(service.sessions)",
                "\(service.sessionsTotal)",
                HumanFormat.bytes(service.bytesIn),
                HumanFormat.bytes(service.bytesOut),
            ].compactMap { $0 }
        }
        let header =
            ["SERVICE"] + (atProxy ? ["AGENT", "LISTEN"] : ["TARGET"]) + ["STATE", "LIVE", "TOTAL", "IN", "OUT"]
        let stateColumn = atProxy ? 3 : 2
        return HumanFormat.table(header, rows, rightAligned: Set((stateColumn + 1)...(stateColumn + 4))) {
            column, row, text in
            column == stateColumn ? Self.paint(text, services[row].up ? .green : .red, colour) : text
        }
    }

    static func sessions(_ sessions: [SessionReport]) -> String {
        if sessions.isEmpty { return "no live sessions" }
        // At the relay, which agent carries each session (AGENT, after SERVICE).
        let atProxy = sessions.contains { $0.agent != nil }
        let rows = sessions.map { session in
            [
                session.id, session.service, atProxy ? (session.agent ?? "-") : nil, session.client,
                Self.stateText(session.state), HumanFormat.bytes(session.bytesIn), HumanFormat.bytes(session.bytesOut),
                HumanFormat.duration(session.ageSeconds),
            ].compactMap { $0 }
        }
        let header = ["ID", "SERVICE"] + (atProxy ? ["AGENT"] : []) + ["CLIENT", "STATE", "IN", "OUT", "AGE"]
        let first = atProxy ? 5 : 4
        return HumanFormat.table(header, rows, rightAligned: [first, first + 1, first + 2])
    }

    static func session(_ session: SessionReport) -> String {
        var fields: [(String, String)] = [
            ("session", session.id),
            ("service", session.service),
            ("state", Self.stateText(session.state)),
            ("client", session.client),
        ]
        if let listener = session.listener { fields.append(("listener", listener)) }
        if let agent = session.agent { fields.append(("agent", agent)) }
        if let relay = session.relay { fields.append(("relay", relay)) }
        if let local = session.dataLocal, let remote = session.dataRemote {
            fields.append(("data channel", "\(local) -> \(remote)"))
        }
        if let target = session.target {
            fields.append(("target", session.targetLocal.map { "\($0) -> \(target)" } ?? target))
        }
        fields.append(
            ("started", "\(HumanFormat.timestamp(session.startedAt)) (\(HumanFormat.duration(session.ageSeconds)) ago)")
        )
        fields.append(("bytes in", "\(HumanFormat.bytes(session.bytesIn)) (\(session.bytesIn))"))
        fields.append(("bytes out", "\(HumanFormat.bytes(session.bytesOut)) (\(session.bytesOut))"))
        let width = fields.map(\.0.count).max() ?? 0
        return fields.map { Self.padded($0.0, to: width) + "  " + safe($0.1) }
            .joined(separator: "\n")
    }

    static func reload(_ outcome: ReloadOutcome) -> String {
        if outcome.changes.isEmpty { return "config reloaded: nothing changed" }
        return (["config reloaded:"] + outcome.changes.map { "  " + safe($0) }).joined(separator: "\n")
    }

    /// A session state in words: which way a half-closed session is still open.
    static func stateText(_ state: String) -> String {
        switch state {
        case "half-closed-in": "half-closed (client done)"
        case "half-closed-out": "half-closed (target done)"
        default: state
        }
    }

    /// Daemon-supplied text with its control characters escaped (see ``TerminalText``).
    static func safe(_ text: String) -> String { TerminalText.escape(text) }

    enum Colour: String {
        case green = "32"
        case red = "31"
    }

    static func paint(_ text: String, _ colour: Colour, _ enabled: Bool) -> String {
        enabled ? "\u{1B}[\(colour.rawValue)m\(text)\u{1B}[0m" : text
    }

    /// `label` followed by spaces up to `width` characters, as NSString's
    /// `padding(toLength:withPad:startingAt:)` padded the (ASCII) field labels.
    private static func padded(_ label: String, to width: Int) -> String {
        label + String(repeating: " ", count: max(0, width - label.count))
    }

    private static func ago(_ date: Date) -> String {
        "\(HumanFormat.duration(-date.timeIntervalSinceNow)) ago"
    }

}
