import RelayControl
import Testing

/// relayctl's units and columns.
struct HumanFormatTests {
    @Test(
        arguments: [
            (0, "0 B"), (1, "1 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1229, "1.2 KiB"), (10 * 1024, "10 KiB"),
            (1_258_291, "1.2 MiB"), (30 * 1024 * 1024 + 100, "30 MiB"), (5 * 1024 * 1024 * 1024, "5.0 GiB"),
        ] as [(Int64, String)])
    func bytes(count: Int64, text: String) {
        #expect(HumanFormat.bytes(count) == text)
    }

    @Test(
        arguments: [
            (0, "0s"), (0.9, "0s"), (45, "45s"), (60, "1m00s"), (192, "3m12s"), (3600 + 5 * 60 + 59, "1h05m"),
            (3 * 86400 + 4 * 3600 + 59, "3d04h"), (-5, "0s"), (.infinity, "0s"),
        ] as [(Double, String)])
    func duration(seconds: Double, text: String) {
        #expect(HumanFormat.duration(seconds) == text)
    }

    @Test(
        arguments: [
            (0.00085, "850µs"), (0.0012, "1.2ms"), (0.035, "35ms"), (1.5, "1.5s"),
        ] as [(Double, String)])
    func shortDuration(seconds: Double, text: String) {
        #expect(HumanFormat.shortDuration(seconds) == text)
    }

    @Test func tableAlignsColumnsAndRightAlignsNumbers() {
        let text = HumanFormat.table(
            ["ID", "BYTES", "NOTE"], [["a", "1 B", "x"], ["bbbb", "10.5 KiB", "longer"]], rightAligned: [1])
        #expect(
            text == """
                ID       BYTES  NOTE
                a          1 B  x
                bbbb  10.5 KiB  longer
                """)
    }

    @Test func styleIsAppliedAfterPadding() {
        let text = HumanFormat.table(["A", "B"], [["x", "y"]]) { column, _, cell in column == 0 ? "[\(cell)]" : cell }
        #expect(text == "A  B\n[x]  y")
    }
}
