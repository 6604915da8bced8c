import FoundationEssentials

/// Numbers as a person reads them, for relayctl's default output: sizes in binary units,
/// durations in the two largest units, and tables with aligned columns.
public enum HumanFormat {
    /// `0 B`, `512 B`, `1.2 KiB`, `3.4 MiB`, `12 GiB` (one decimal below 10 of a unit).
    public static func bytes(_ count: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        guard count >= 1024 else { return "\(max(count, 0)) B" }
        var value = Double(count)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        let rounded = (value * 10).rounded() / 10
        if rounded >= 10 { return "\(Int(value.rounded())) \(units[unit])" }
        return "\(Self.oneDecimal(rounded)) \(units[unit])"
    }

    /// `0s`, `45s`, `3m12s`, `2h05m`, `3d04h`: the two largest units, truncated.
    public static func duration(_ seconds: Double) -> String {
        let total = max(0, Int(seconds.isFinite ? seconds : 0))
        let (days, hours, minutes, secs) = (total / 86400, total / 3600 % 24, total / 60 % 60, total % 60)
        if days > 0 { return "\(days)d\(Self.twoDigits(hours))h" }
        if hours > 0 { return "\(hours)h\(Self.twoDigits(minutes))m" }
        if minutes > 0 { return "\(minutes)m\(Self.twoDigits(secs))s" }
        return "\(secs)s"
    }

    /// `2026-11-25T06:14:14Z`: a moment in UTC to the second, as Foundation's
    /// `ISO8601DateFormatter` wrote it (rounded to the millisecond, then cut to the second).
    public static func timestamp(_ date: Date) -> String {
        let milliseconds = (date.timeIntervalSince1970 * 1000 + 0.5).rounded(.down)
        return Date(timeIntervalSince1970: milliseconds / 1000).formatted(Date.ISO8601FormatStyle())
    }

    /// A short time such as a heartbeat round trip: `850µs`, `1.2ms`, `35ms`, `1.5s`.
    public static func shortDuration(_ seconds: Double) -> String {
        if seconds < 0.001 { return "\(Int((seconds * 1_000_000).rounded()))µs" }
        if seconds < 0.01 { return "\(Self.oneDecimal((seconds * 10_000).rounded() / 10))ms" }
        if seconds < 1 { return "\(Int((seconds * 1000).rounded()))ms" }
        return "\(Self.oneDecimal((seconds * 10).rounded() / 10))s"
    }

    /// Rows under a header, each column as wide as its widest cell, two spaces apart; the
    /// columns in `rightAligned` are aligned right (numbers). `style` may colour a padded
    /// cell (column, row, padded text); colouring after padding keeps the alignment. Cells are
    /// printed with their control characters escaped (``TerminalText``).
    public static func table(
        _ header: [String],
        _ rows: [[String]],
        rightAligned: Set<Int> = [],
        style: (Int, Int, String) -> String = { _, _, text in text }
    ) -> String {
        let header = header.map { TerminalText.escape($0) }
        let rows = rows.map { $0.map { TerminalText.escape($0) } }
        var widths = header.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() where index < widths.count {
                widths[index] = max(widths[index], cell.count)
            }
        }
        func line(_ cells: [String], row: Int?) -> String {
            var parts: [String] = []
            for (index, cell) in cells.enumerated() where index < widths.count {
                let pad = String(repeating: " ", count: widths[index] - cell.count)
                let last = index == cells.count - 1
                var padded = rightAligned.contains(index) ? pad + cell : (last ? cell : cell + pad)
                if let row { padded = style(index, row, padded) }
                parts.append(padded)
            }
            return parts.joined(separator: "  ")
        }
        var lines = [line(header, row: nil)]
        for (index, row) in rows.enumerated() { lines.append(line(row, row: index)) }
        return lines.joined(separator: "\n")
    }

    private static func oneDecimal(_ value: Double) -> String {
        let tenths = Int((value * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }

    private static func twoDigits(_ value: Int) -> String {
        value < 10 ? "0\(value)" : "\(value)"
    }
}
