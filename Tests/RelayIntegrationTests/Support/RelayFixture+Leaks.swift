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
            let deadline = ContinuousClock.now + timeout
            while true {
                let opened = daemon.lines(containing: "session open").count
                let ended =
                    daemon.lines(containing: "session closed").count + daemon.lines(containing: "session failed").count
                    + daemon.lines(containing: "session refused").count
                if opened == ended { break }
                guard ContinuousClock.now < deadline else {
                    throw HarnessError("\(daemon.name) opened \(opened) sessions but ended \(ended)")
                }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
    }
}
