import Foundation
import Testing

/// An agent on a host with no system trust store (no ca-certificates: minimal containers and
/// servers): a pin alone needs none and is accepted; `"tls": {}`, which needs one, is refused
/// with a line that says what to install or give instead. Found by handover-test.sh, where the
/// Debian rootfs has no /etc/ssl and a pinned agent failed with "unknownError([])".
@Suite(.serialized, .timeLimit(.minutes(1)))
struct TLSTrustStoreTests {
    /// Runs `relay-agent --check-config` on a config whose `tls` is `tls`, in a mount
    /// namespace where /etc/ssl is an empty directory.
    static func checkWithoutTrustStore(tls: String) async throws -> Relayctl.Result {
        let (directory, config, _) = try FileTrustTests.configs("relay-agent")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var text = try String(contentsOfFile: config, encoding: .utf8)
        text = String(text.dropLast()) + #", "tls": \#(tls)}"#
        try Data(text.utf8).write(to: URL(fileURLWithPath: config))
        let hide = "mkdir -p /etc/ssl && mount -t tmpfs tmpfs /etc/ssl || exit 97; exec \"$@\""
        return try await Relayctl.run(
            ["--check-config", "--config", config], binary: "relay-agent",
            asUser: ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", hide, "sh"])
    }

    static var canHide: Bool {
        getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare")
    }

    @Test func aPinAloneNeedsNoTrustStore() async throws {
        guard Self.canHide else { return }
        let pin = "sha256//" + Data(count: 32).base64EncodedString()
        let checked = try await Self.checkWithoutTrustStore(tls: #"{"pin": "\#(pin)"}"#)
        print("figure: pin alone, no trust store: exit \(checked.status) \(checked.stderr)")
        #expect(checked.status == 0, "\(checked)")
    }

    @Test func theSystemTrustStoreMissingIsSaidPlainly() async throws {
        guard Self.canHide else { return }
        let checked = try await Self.checkWithoutTrustStore(tls: "{}")
        print("figure: tls {} with no trust store: exit \(checked.status) \(checked.stderr)")
        #expect(checked.status == 1, "\(checked)")
        #expect(checked.stderr.contains("$.tls: no system trust store"), "\(checked)")
        #expect(checked.stderr.contains("install ca-certificates"), "\(checked)")
    }
}
