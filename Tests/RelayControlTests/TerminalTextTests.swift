import Glibc
import RelayControl
import Testing

/// What relayctl prints of a daemon's text: control characters shown, never obeyed.
struct TerminalTextTests {
    @Test func controlCharactersAreEscaped() {
        #expect(TerminalText.escape("plain text: café ✓ \\ back") == "plain text: café ✓ \\ back")
        #expect(TerminalText.escape("\u{1B}[2J\rboom") == "\\x1b[2J\\rboom")
        #expect(TerminalText.escape("a\nb\tc\u{0}\u{7F}") == "a\\nb\\tc\\x00\\x7f")
        #expect(TerminalText.escape("\u{9B}31m\u{85}") == "\\u{9b}31m\\u{85}")
        #expect(TerminalText.escape("\u{202E}txt.exe\u{2066}") == "\\u{202e}txt.exe\\u{2066}")
        #expect(TerminalText.escape("line 1\nline\u{1B} 2\n", keepingNewlines: true) == "line 1\nline\\x1b 2\n")
    }

    @Test func everyScalarBelowU00A0IsSafeAfterEscaping() {
        for value in UInt32(0)..<0xA0 {
            let escaped = TerminalText.escape(String(Unicode.Scalar(value)!))
            #expect(!escaped.unicodeScalars.contains { TerminalText.isControl($0) }, "U+\(value)")
        }
    }

    @Test func jsonKeepsItsValueAndLosesTheControls() {
        // JSONEncoder escapes C0; DEL, C1 and the bidi controls it leaves raw.
        let json = "{\"lastError\":\"a\u{7F}b\u{9B}2J\u{202E}\"}"
        #expect(TerminalText.escapeJSON(json) == "{\"lastError\":\"a\\u007fb\\u009b2J\\u202e\"}")
        #expect(TerminalText.escapeJSON("{\"a\":\"\\u001b\"}") == "{\"a\":\"\\u001b\"}")
        #expect(TerminalText.escapeJSON("{\n  \"a\" : \"\u{85}\"\n}") == "{\n  \"a\" : \"\\u0085\"\n}")
    }

    @Test func tableCellsAreEscapedBeforeTheyAreMeasured() {
        let table = HumanFormat.table(["A", "B"], [["x\u{1B}[2J", "y"]])
        #expect(table == "A         B\nx\\x1b[2J  y")
    }
}

/// Who may own the control socket's directory (the daemon) and the socket (relayctl as root).
struct SocketTrustTests {
    @Test func theDaemonsDirectoryRule() {
        let uid: uid_t = 999
        #expect(SocketTrust.directoryProblem("/run/relay", mode: 0o040750, owner: uid, uid: uid) == nil)
        #expect(SocketTrust.directoryProblem("/run", mode: 0o040755, owner: 0, uid: uid) == nil)
        #expect(SocketTrust.directoryProblem("/tmp", mode: 0o041777, owner: 0, uid: uid) == nil)
        // Ours and writable by others: repaired, not refused.
        #expect(SocketTrust.directoryProblem("/run/relay", mode: 0o040777, owner: uid, uid: uid) == nil)
        #expect(SocketTrust.repairableDirectory(mode: 0o040777, owner: uid, uid: uid))
        #expect(!SocketTrust.repairableDirectory(mode: 0o040755, owner: uid, uid: uid))
        #expect(
            SocketTrust.directoryProblem("/home/eve/s", mode: 0o040755, owner: 1000, uid: uid)
                == "control socket directory /home/eve/s is owned by uid 1000, neither root nor the daemon's user (uid 999): that user could replace the socket; run: chown 999 /home/eve/s"
        )
        #expect(
            SocketTrust.directoryProblem("/srv/shared", mode: 0o040775, owner: 0, uid: uid)
                == "control socket directory /srv/shared is writable by group or others (mode 0775): they could replace the socket; run: chmod go-w /srv/shared"
        )
    }

    @Test func rootTrustsRootAndSystemAccountsOnly() {
        #expect(SocketTrust.trustedOwner(0))
        #expect(SocketTrust.trustedOwner(999))
        #expect(!SocketTrust.trustedOwner(1000))
        #expect(!SocketTrust.trustedOwner(65534))
    }
}
