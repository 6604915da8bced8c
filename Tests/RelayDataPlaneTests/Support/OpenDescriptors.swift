import Foundation

/// This process's open descriptors and what each one is, from `/proc/self/fd`
/// ("socket:[81234]", "pipe:[81240]", "anon_inode:[eventpoll]").
enum OpenDescriptors {
    /// Descriptor number → link target, now.
    static func snapshot() -> [Int32: String] {
        let directory = "/proc/self/fd"
        var open: [Int32: String] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            // The directory's own descriptor is gone by now: its link no longer resolves.
            guard let fd = Int32(name),
                let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\(name)")
            else { continue }
            open[fd] = target
        }
        return open
    }

    /// How many of each kind of target ("socket", "pipe", "anon_inode:[eventpoll]", …) are open.
    static func kinds(_ snapshot: [Int32: String]) -> [String: Int] {
        var kinds: [String: Int] = [:]
        for target in snapshot.values {
            let kind = target.hasPrefix("anon_inode:") ? target : String(target.prefix { $0 != ":" })
            kinds[kind, default: 0] += 1
        }
        return kinds
    }
}
