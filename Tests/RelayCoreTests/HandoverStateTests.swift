import Testing

@testable import RelayCore

/// The handover's pure parts: the state document (round trip, every corrupt input refused
/// with a reason) and the decision a SIGTERM leads to from systemd's job type.
@Suite struct HandoverStateTests {
    static func sample() -> HandoverState {
        let forward = HandoverState.Direction(.init(pending: Array("unsent \n bytes".utf8), sourceEnded: false))
        let backward = HandoverState.Direction(.init(pending: [0, 255, 10, 13], sourceEnded: true, finished: false))
        let ended = HandoverState.Direction(.init(pending: [], sourceEnded: true, finished: true))
        return HandoverState(
            daemon: "relay-proxy", startedAt: 1_700_000_000.25, listeners: ["agents", "web"], agents: ["office"],
            sessions: [
                .init(
                    id: "00112233445566778899aabbccddeeff", service: "web", agent: "office", client: "192.0.2.1:5000",
                    startedAt: 1_699_999_000.5, forwardBytes: 1 << 40, backwardBytes: 7, forward: forward,
                    backward: backward),
                .init(
                    id: "ffeeddccbbaa99887766554433221100", service: "web", agent: "office", client: "[2001:db8::1]:1",
                    startedAt: 1_699_999_001, forwardBytes: 0, backwardBytes: 0, forward: ended, backward: ended),
            ])
    }

    @Test func aDocumentReadsBackAsWritten() throws {
        let state = Self.sample()
        let bytes = state.encoded()
        let back = try HandoverState.decode(bytes, daemon: "relay-proxy")
        #expect(back == state)
        #expect(back.sessions[0].forward.pending == Array("unsent \n bytes".utf8))
        #expect(back.sessions[0].backward.frozen == .init(pending: [0, 255, 10, 13], sourceEnded: true))
        #expect(back.sessions[1].forward.frozen.finished)
    }

    @Test func anEmptyDocumentReadsBack() throws {
        let state = HandoverState(daemon: "relay-agent", startedAt: 1)
        #expect(try HandoverState.decode(state.encoded(), daemon: "relay-agent") == state)
    }

    @Test func corruptDocumentsAreRefusedWithAReason() {
        let bytes = Self.sample().encoded()
        func refusal(_ bytes: [UInt8], daemon: String = "relay-proxy") -> String? {
            do {
                _ = try HandoverState.decode(bytes, daemon: daemon)
                return nil
            } catch {
                return error.description
            }
        }
        #expect(refusal([]) == "no JSON line")
        #expect(refusal(Array("{\"version\":1}".utf8)) == "no JSON line")
        #expect(refusal(Array("not json\n".utf8))?.hasPrefix("not a state document") == true)
        #expect(refusal(bytes, daemon: "relay-agent") == "written by relay-proxy, not relay-agent")
        #expect(refusal(Array(bytes.dropLast()))?.contains("cut short") == true)
        #expect(refusal(bytes + [1, 2]) == "2 bytes past the last session")
        var future = Self.sample()
        future.version = 2
        #expect(refusal(future.encoded()) == "version 2, this relay-proxy reads 1")
    }

    @Test func aSIGTERMHandsOverOnlyDuringARestartJob() {
        for job in ["restart", "try-restart", "reload-or-restart", "reload-or-try-restart"] {
            #expect(Handover.decide(jobType: job) == .handOver(job: job))
        }
        for job in ["stop", "start", "reload", "verify-active", "nop"] {
            #expect(Handover.decide(jobType: job) == .drain(reason: "job \(job)"))
        }
        #expect(Handover.decide(jobType: nil) == .drain(reason: "no job on the unit"))
        #expect(Handover.decide(jobType: nil, failure: "no bus") == .drain(reason: "no bus"))
        #expect(Handover().decide(1) == .drain(reason: "not run by systemd"))
        #expect(Handover.decide(jobType: "restart", storeMax: 401, needed: 401) == .handOver(job: "restart"))
        #expect(
            Handover.decide(jobType: "restart", storeMax: 0, needed: 3)
                == .drain(reason: "FileDescriptorStoreMax=0 cannot hold 3 descriptors"))
        #expect(Handover.descriptorsNeeded(sessions: 200, listeners: 2) == 403)
    }

    @Test func storedNamesAreThoseSystemdAccepts() {
        let name = Handover.socketName(session: "00112233445566778899aabbccddeeff", first: true)
        #expect(name == "s-00112233445566778899aabbccddeeff-1")
        #expect(name.utf8.count <= 255 && !name.contains(":"))
        #expect(name.unicodeScalars.allSatisfy { $0.isASCII && $0.value > 32 && $0.value < 127 })
        #expect(Handover.isHandoverName(name) && Handover.isHandoverName("state"))
        #expect(!Handover.isHandoverName("agents") && !Handover.isHandoverName("web"))
    }
}
