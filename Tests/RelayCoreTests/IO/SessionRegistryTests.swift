import NIOCore
import RelayMetrics
import RelayProtocol
import Testing

@testable import RelayAgent
@testable import RelayCore
@testable import RelayProxy

extension IOTests {
    /// The session registries of both daemons: `ProxyState` with its `ProxySession`s and
    /// `AgentLink`s, and `AgentState`, on real loopback channels where a channel is needed.
    @Suite(.timeLimit(.minutes(1)))
    struct SessionRegistryTests {
        // MARK: - ProxyState

        @Test func openSessionsGetUniqueIdsAndTokens() async throws {
            let state = try Self.proxyState()
            try await Loopback.withAcceptedSocket { _, client in
                let sessions = (0..<500).map { index in
                    state.openSession(
                        service: "web", agent: "office", client: "10.0.0.1:\(index)", clientSocket: client,
                        attachSecret: Self.attachSecret)
                }
                #expect(Set(sessions.map(\.id)).count == sessions.count)
                #expect(Set(sessions.map(\.token)).count == sessions.count)
                #expect(sessions.allSatisfy { SessionIDs.isWellFormed($0.id) && Tokens.isWellFormed($0.token) })
                #expect(sessions.allSatisfy { state.session($0.id) === $0 })
                #expect(state.sessions.count == sessions.count)
                #expect(sessions.allSatisfy { Self.isPending($0) })
                for session in sessions {
                    #expect(session.fail(.shuttingDown))
                    state.removeSession(session)
                }
                #expect(state.sessions.isEmpty)
            }
        }

        @Test func removeSessionForgetsThatSessionOnly() async throws {
            let state = try Self.proxyState()
            try await Loopback.withAcceptedSocket { _, client in
                let first = state.openSession(
                    service: "web", agent: "office", client: "a", clientSocket: client, attachSecret: Self.attachSecret)
                let second = state.openSession(
                    service: "web", agent: "office", client: "b", clientSocket: client, attachSecret: Self.attachSecret)
                // A session that ended but shares the live one's id must not remove it.
                let stale = ProxySession(
                    id: second.id, service: "web", agent: "office", client: "c", clientSocket: client,
                    attachSecret: Self.attachSecret,
                    telemetry: state.telemetry.service("web"))
                for session in [first, second, stale] { session.fail(.shuttingDown) }
                state.removeSession(first)
                state.removeSession(stale)
                #expect(state.session(first.id) == nil)
                #expect(state.session(second.id) === second)
                #expect(state.sessions.count == 1)
                if case .closed = first.phase {} else { Issue.record("a removed session is not closed") }
                state.removeSession(second)
                #expect(state.sessions.isEmpty)
            }
        }

        @Test func unregisteringAnAgentFailsItsPendingSessionsOnly() async throws {
            let state = try Self.proxyState()
            try await Loopback.withConnection { agentSide, _ in
                try await Loopback.withAcceptedSocket { _, client in
                    try await Loopback.withAcceptedSocket { _, dataSocket in
                        let link = Self.link("office", on: agentSide.channel)
                        #expect(state.register(link) == nil)
                        #expect(state.agent(serving: "web") === link)
                        let pending = (0..<3).map { index in
                            state.openSession(
                                service: "web", agent: "office", client: "\(index)", clientSocket: client,
                                attachSecret: Self.attachSecret)
                        }
                        let joined = state.openSession(
                            service: "web", agent: "office", client: "j", clientSocket: client,
                            attachSecret: Self.attachSecret)
                        guard
                            case .claimed = joined.claim(
                                Self.attach(joined, token: joined.token), dataChannel: .socket(dataSocket))
                        else {
                            Issue.record("claim failed")
                            return
                        }
                        let otherAgent = state.openSession(
                            service: "db", agent: "lab", client: "o", clientSocket: client,
                            attachSecret: Self.attachSecret)

                        state.unregister(link)

                        #expect(state.agent(serving: "web") == nil)
                        for session in pending {
                            #expect(
                                await Self.failure(of: session).map { "\($0)" } == "\(SessionFailure.agentDisconnected)"
                            )
                        }
                        if case .open = joined.phase {} else { Issue.record("an attached session was touched") }
                        #expect(Self.isPending(otherAgent), "another agent's session was failed")
                        joined.handle(.attachedNotSent)
                        otherAgent.fail(.shuttingDown)
                    }
                }
            }
        }

        @Test func aReplacedLinkUnregistersNothing() async throws {
            let state = try Self.proxyState()
            try await Loopback.withConnection { agentSide, _ in
                try await Loopback.withAcceptedSocket { _, client in
                    let old = Self.link("office", on: agentSide.channel)
                    let new = Self.link("office", on: agentSide.channel)
                    #expect(state.register(old) == nil)
                    #expect(state.register(new) === old)
                    let session = state.openSession(
                        service: "web", agent: "office", client: "a", clientSocket: client,
                        attachSecret: Self.attachSecret)
                    state.unregister(old)
                    #expect(state.agent(serving: "web") === new)
                    #expect(Self.isPending(session))
                    state.unregister(new)
                    #expect(await Self.failure(of: session).map { "\($0)" } == "\(SessionFailure.agentDisconnected)")
                }
            }
        }

        @Test func aSessionIsClaimedOnceAndOnlyWithItsToken() async throws {
            let state = try Self.proxyState()
            try await Loopback.withAcceptedSocket { _, data in
                try await Loopback.withAcceptedSocket { _, client in
                    let session = state.openSession(
                        service: "web", agent: "office", client: "a", clientSocket: client,
                        attachSecret: Self.attachSecret)
                    let other = state.openSession(
                        service: "web", agent: "office", client: "b", clientSocket: client,
                        attachSecret: Self.attachSecret)
                    if case .badToken = session.claim(
                        Self.attach(session, token: other.token), dataChannel: .socket(data))
                    {
                    } else {
                        Issue.record("another session's token was accepted")
                    }
                    if case .badToken = session.claim(Self.attach(session, token: ""), dataChannel: .socket(data)) {
                    } else {
                        Issue.record("an empty token was accepted")
                    }
                    // The right token is worthless without the proof: made with another
                    // agent's secret, made over another session, or missing.
                    let foreign = Self.attach(session, token: session.token, secret: Secret("another agent's secret"))
                    if case .badToken = session.claim(foreign, dataChannel: .socket(data)) {
                    } else {
                        Issue.record("a proof made with another agent's secret was accepted")
                    }
                    var moved = Self.attach(other, token: session.token)
                    moved.session = session.id
                    if case .badToken = session.claim(moved, dataChannel: .socket(data)) {
                    } else {
                        Issue.record("a proof made for another session was accepted")
                    }
                    let bare = ControlMessage.Attach(session: session.id, token: session.token, proof: nil)
                    if case .badToken = session.claim(bare, dataChannel: .socket(data)) {
                    } else {
                        Issue.record("a token without a proof was accepted")
                    }
                    #expect(Self.isPending(session))
                    // Eight attaches at once with the right token: one wins.
                    let results = await withTaskGroup(of: Bool.self) { group in
                        for _ in 0..<8 {
                            group.addTask {
                                if case .claimed = session.claim(
                                    Self.attach(session, token: session.token), dataChannel: .socket(data))
                                {
                                    return true
                                }
                                return false
                            }
                        }
                        return await group.reduce(into: []) { $0.append($1) }
                    }
                    let winners = results.filter { $0 }
                    #expect(winners.count == 1)
                    if case .open(.socket(let channel)) = session.phase {
                        #expect(channel === data)
                    } else {
                        Issue.record("a claimed session is not open")
                    }
                    if case .notPending = session.claim(
                        Self.attach(session, token: session.token), dataChannel: .socket(data))
                    {
                    } else {
                        Issue.record("a session was claimed twice")
                    }
                    #expect(!session.fail(.killed), "an attached session can no longer fail as pending")
                    // A session that failed cannot be claimed.
                    #expect(other.fail(.attachTimeout(1)))
                    if case .notPending = other.claim(
                        Self.attach(other, token: other.token), dataChannel: .socket(data))
                    {
                    } else {
                        Issue.record("a failed session was claimed")
                    }
                    session.handle(.attachedNotSent)
                }
            }
        }

        @Test func terminatingAPendingSessionResetsTheClientAndFailsIt() async throws {
            let state = try Self.proxyState()
            try await Loopback.withAcceptedSocket { outerClient, client in
                let session = state.openSession(
                    service: "web", agent: "office", client: "a", clientSocket: client, attachSecret: Self.attachSecret)
                session.handle(.kill)
                #expect(await Self.failure(of: session).map { "\($0)" } == "\(SessionFailure.killed)")
                if case .killed? = session.termination {} else { Issue.record("termination not recorded") }
                let seen = try await Timing.withTimeout(5) { await outerClient.receive(TestPattern(seed: 0)) }
                #expect(seen?.end?.isReset == true, "\(String(describing: seen))")
            }
        }

        @Test func terminatingAnOpenSessionResetsBothConnections() async throws {
            let state = try Self.proxyState()
            try await Loopback.withAcceptedSocket { outerClient, client in
                try await Loopback.withAcceptedSocket { agent, data in
                    let session = state.openSession(
                        service: "web", agent: "office", client: "a", clientSocket: client,
                        attachSecret: Self.attachSecret)
                    guard
                        case .claimed = session.claim(
                            Self.attach(session, token: session.token), dataChannel: .socket(data))
                    else {
                        Issue.record("claim failed")
                        return
                    }
                    session.handle(.kill)
                    for peer in [outerClient, agent] {
                        let seen = try await Timing.withTimeout(5) { await peer.receive(TestPattern(seed: 0)) }
                        #expect(seen?.end?.isReset == true, "\(String(describing: seen))")
                    }
                }
            }
        }

        // MARK: - AgentState

        @Test func agentSessionsAreAddedAndRemoved() throws {
            let state = try Self.agentState()
            let session = Self.agentSession("a1", state)
            let stale = Self.agentSession("a1", state)
            state.add(session)
            #expect(state.session("a1") === session)
            #expect(state.sessions.count == 1)
            state.remove(stale)
            #expect(state.session("a1") === session, "removing another session with the same id removed this one")
            state.remove(session)
            #expect(state.session("a1") == nil)
            #expect(state.sessions.isEmpty)
        }

        @Test func waitForNoSessionsReturnsOnceTheLastIsRemoved() async throws {
            let state = try Self.agentState()
            let session = Self.agentSession("a1", state)
            state.add(session)
            let drained = Flag()
            let waiting = Task {
                let result = await state.waitForNoSessions(timeout: .seconds(20))
                drained.raise()
                return result
            }
            // While a session is live the wait goes on.
            #expect(await !drained.wait(seconds: 0.3), "the wait returned with a session live")
            let removed = ContinuousClock.now
            state.remove(session)
            #expect(await waiting.value)
            let after = Timing.milliseconds(since: removed)
            print("figure: waitForNoSessions returned \(after) ms after the last session was removed")
            #expect(after < 1000)
        }

        @Test func waitForNoSessionsGivesUpAtItsTimeout() async throws {
            let state = try Self.agentState()
            let session = Self.agentSession("a1", state)
            state.add(session)
            let start = ContinuousClock.now
            #expect(await !state.waitForNoSessions(timeout: .milliseconds(300)))
            let elapsed = Timing.milliseconds(since: start)
            #expect(elapsed >= 300 && elapsed < 2000, "\(elapsed) ms")
            state.remove(session)
        }

        @Test func killingAnAgentSessionResetsItsConnections() async throws {
            let state = try Self.agentState()
            try await Loopback.withAcceptedSocket { targetPeer, target in
                try await Loopback.withAcceptedSocket { relayPeer, data in
                    let session = Self.agentSession("a1", state)
                    session.adoptTarget(target)
                    session.adoptData(.socket(data))
                    #expect(session.targetSocket === target)
                    session.handle(.kill)
                    #expect(session.end?.description == "killed by operator")
                    for peer in [targetPeer, relayPeer] {
                        let seen = try await Timing.withTimeout(5) { await peer.receive(TestPattern(seed: 0)) }
                        #expect(seen?.end?.isReset == true, "\(String(describing: seen))")
                    }
                }
            }
        }

        // MARK: - Helpers

        /// The secret sessions are offered under in these tests.
        static let attachSecret = Secret("the agent's secret, 16+ bytes")

        /// The `attach` an agent holding ``attachSecret`` sends for `session` with `token`.
        static func attach(_ session: ProxySession, token: String, secret: Secret = attachSecret)
            -> ControlMessage.Attach
        {
            .init(
                session: session.id, token: token,
                proof: Authenticator.attachProof(secret: secret, session: session.id, token: token))
        }

        static func proxyState() throws -> ProxyState {
            let dir = try TempDir()
            return ProxyState(config: try ProxyConfig.load(path: try dir.write("proxy.json", ProxyConfigTests.minimal)))
        }

        static func agentState() throws -> AgentState {
            let dir = try TempDir()
            return AgentState(config: try AgentConfig.load(path: try dir.write("agent.json", AgentConfigTests.minimal)))
        }

        static func agentSession(_ id: String, _ state: AgentState) -> AgentSession {
            AgentSession(
                id: id, service: "web", client: "10.0.0.1:5000", target: "127.0.0.1:80",
                relay: state.config.relay, telemetry: state.telemetry.service("web"))
        }

        /// A registered agent's link over `channel` (its loop never runs: nothing is sent here).
        static func link(_ id: String, on channel: any Channel) -> AgentLink {
            AgentLink(
                id: id, remote: "127.0.0.1:1", services: ["web"], offered: ["web"], provedSecret: nil,
                loop: ControlChannelLoop(channel: channel, peer: "agent", heartbeatInterval: 10, heartbeatTimeout: 30))
        }

        static func isPending(_ session: ProxySession) -> Bool {
            if case .pending = session.phase { return true }
            return false
        }

        /// Why a session that should have failed did (nil if it attached instead).
        static func failure(of session: ProxySession) async -> SessionFailure? {
            do {
                _ = try await session.attached.get()
                return nil
            } catch {
                return error as? SessionFailure
            }
        }
    }
}
