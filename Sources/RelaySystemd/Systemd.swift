import CSystemd
import Glibc

/// The parts of libsystemd's sd-daemon(3) the daemons use: readiness and status
/// notifications, the watchdog, and socket activation. Outside systemd every call is a
/// harmless no-op (no `NOTIFY_SOCKET`, no `LISTEN_FDS`).
public enum Systemd {
    /// Sends a notification such as `READY=1` or `STATUS=…` (sd_notify(3)); `false` if
    /// there is no notification socket or sending failed.
    @discardableResult
    public static func notify(_ state: String) -> Bool {
        sd_notify(0, state) > 0
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` systemd asks for since version 253.
    @discardableResult
    public static func notifyReloading() -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let microseconds = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
        return self.notify("RELOADING=1\nMONOTONIC_USEC=\(microseconds)")
    }

    /// The watchdog interval systemd expects pings within, if the watchdog is enabled for
    /// this process (sd_watchdog_enabled(3)).
    public static func watchdogInterval() -> Duration? {
        var microseconds: UInt64 = 0
        guard sd_watchdog_enabled(0, &microseconds) > 0, microseconds > 0 else { return nil }
        return .microseconds(Int64(microseconds))
    }

    /// The listening sockets systemd passed, by their `FileDescriptorName=`
    /// (sd_listen_fds_with_names(3)); the environment variables are removed afterwards so
    /// children do not inherit them. Throws for a passed descriptor that is not a listening
    /// stream socket.
    public static func listenedSockets() throws(SystemdError) -> [(name: String, descriptor: CInt)] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(1, &names)
        guard count > 0 else {
            if count < 0 {
                throw SystemdError("cannot read the sockets systemd passed: \(String(cString: strerror(-count)))")
            }
            return []
        }
        defer {
            for index in 0..<Int(count) { free(names?[index]) }
            free(names)
        }
        var result: [(String, CInt)] = []
        for index in 0..<Int(count) {
            let descriptor = SD_LISTEN_FDS_START + CInt(index)
            let name = names?[index].map { String(cString: $0) } ?? "unknown"
            guard sd_is_socket(descriptor, AF_UNSPEC, CInt(SOCK_STREAM.rawValue), 1) > 0 else {
                throw SystemdError(
                    "the socket systemd passed as '\(name)' (fd \(descriptor)) is not a listening TCP socket")
            }
            result.append((name, descriptor))
        }
        return result
    }
}

/// A problem with what systemd passed us.
public struct SystemdError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}
