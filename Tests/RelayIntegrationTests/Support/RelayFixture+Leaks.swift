import Foundation

extension RelayFixture {
    /// Open descriptors of each running daemon, taken once a test's setup is done.
    struct Baseline {
        var descriptors: [String: Int]
    }

    /// The running daemons, by name.
    var daemons: [DaemonProcess] {
        ([self.proxy] + Array(self.agentProcesses.values)).compactMap { $0 }.filter(\.isRunning)
    }

    /// Snapshots the descriptor counts of every running daemon.
    func baseline() -> Baseline {
        Baseline(descriptors: Dictionary(uniqueKeysWithValues: self.daemons.map { ($0.name, $0.openDescriptors) }))
    }

    /// Waits until every daemon is back to at most its baseline descriptor count and every
    /// session it opened has ended (its log has as many ends as starts).
    func expectNothingLeftOpen(since baseline: Baseline, timeout: Duration = .seconds(5)) async throws {
        for daemon in self.daemons {
            if let count = baseline.descriptors[daemon.name] {
                try await daemon.waitForDescriptors(atMost: count, timeout: timeout)
            }
            var counts = (opened: 0, ended: 0)
            let balanced = await daemon.changes.wait(timeout: timeout) { () -> Bool? in
                counts.opened = daemon.lines(containing: "session open").count
                counts.ended =
                    daemon.lines(containing: "session closed").count + daemon.lines(containing: "session failed").count
                    + daemon.lines(containing: "session refused").count
                return counts.opened == counts.ended ? true : nil
            }
            if balanced == nil {
                throw HarnessError("\(daemon.name) opened \(counts.opened) sessions but ended \(counts.ended)")
            }
        }
    }
}
