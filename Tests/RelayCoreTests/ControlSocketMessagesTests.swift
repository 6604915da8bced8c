import Foundation
import NIOCore
import RelayControl
import Testing

@testable import RelayCore

/// The control socket's request decoding and response envelope.
struct ControlSocketMessagesTests {
    @Test func aRequestDecodes() throws {
        let request = try ControlSocketServer.decode(
            ByteBuffer(string: #"{"id":3,"command":"kill","args":{"id":"ab"}}"#)
        )
        .get()
        #expect(request == ControlRequest(id: 3, command: "kill", args: ["id": "ab"]))
        #expect(request.argument("id") == "ab")
        #expect(request.argument("service") == nil)
    }

    @Test(arguments: ["garbage", "[1,2]", "null", "\"status\""])
    func garbageIsBadJSON(line: String) {
        guard case .failure(let failure) = ControlSocketServer.decode(ByteBuffer(string: line)) else {
            Issue.record("decoded \(line)")
            return
        }
        #expect(failure.code == .badJSON)
    }

    @Test(arguments: [#"{"id":1}"#, #"{"command":5}"#, #"{"command":"x","args":{"a":1}}"#])
    func aWrongShapeIsABadRequest(line: String) {
        guard case .failure(let failure) = ControlSocketServer.decode(ByteBuffer(string: line)) else {
            Issue.record("decoded \(line)")
            return
        }
        #expect(failure.code == .badRequest)
    }

    @Test func responsesAreOneLineWithIdAndOk() throws {
        let success = String(
            decoding: ControlReply.success(KillReport(id: "ab", state: "open")).encoded(id: 4), as: UTF8.self)
        #expect(success == #"{"id":4,"ok":true,"result":{"id":"ab","state":"open"}}"# + "\n")
        let failure = String(decoding: ControlReply.failure(.unknownSession, "no").encoded(id: nil), as: UTF8.self)
        #expect(failure == #"{"error":{"code":"unknown_session","message":"no"},"id":null,"ok":false}"# + "\n")
        let decoded = try ControlJSON.decoder().decode(
            ControlResponse<KillReport>.self, from: Data(success.utf8))
        #expect(decoded.ok && decoded.result?.id == "ab" && decoded.id == 4)
    }

    @Test func sessionStateFollowsTheMeter() {
        let meter = TrafficMeter()
        #expect(SessionReport.state(of: meter) == "open")
    }
}
