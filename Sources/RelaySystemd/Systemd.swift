import CSystemd
import Glibc
import RelayCore

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

    /// The descriptors systemd passed (sd_listen_fds_with_names(3)), by their names: the
    /// listening sockets of socket units (their `FileDescriptorName=`) and of the file
    /// descriptor store, and the other descriptors the previous process of this unit stored
    /// for a handover (session sockets, named `s-…`, and the `state` memfd: see
    /// ``Handover``). The environment variables are removed afterwards so children do not
    /// inherit them. Throws for a descriptor that is neither a listening stream socket nor
    /// named as a handover's.
    public static func passedDescriptors() throws(SystemdError) -> (
        listeners: [(name: String, descriptor: CInt)], handedOver: [String: CInt]
    ) {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(1, &names)
        guard count > 0 else {
            if count < 0 {
                throw SystemdError("cannot read the sockets systemd passed: \(String(cString: strerror(-count)))")
            }
            return ([], [:])
        }
        defer {
            for index in 0..<Int(count) { free(names?[index]) }
            free(names)
        }
        var listeners: [(String, CInt)] = []
        var handedOver: [String: CInt] = [:]
        for index in 0..<Int(count) {
            let descriptor = SD_LISTEN_FDS_START + CInt(index)
            let name = names?[index].map { String(cString: $0) } ?? "unknown"
            if sd_is_socket(descriptor, AF_UNSPEC, CInt(SOCK_STREAM.rawValue), 1) > 0 {
                listeners.append((name, descriptor))
            } else if Handover.isHandoverName(name) {
                if let previous = handedOver.updateValue(descriptor, forKey: name) { _ = Glibc.close(previous) }
            } else {
                throw SystemdError(
                    "the socket systemd passed as '\(name)' (fd \(descriptor)) is not a listening TCP socket")
            }
        }
        return (listeners, handedOver)
    }

    /// The type of the job systemd runs on this process's unit now ("restart", "stop", …),
    /// asked over the system bus; nil with the reason when there is none or it cannot be asked.
    /// The service's `FileDescriptorStoreMax=` is read on the way.
    public static func unitJobType() -> Result<(type: String, storeMax: Int), SystemdError> {
        var buffer = [CChar](repeating: 0, count: 64)
        var storeMax: UInt32 = 0
        let result = relay_sd_unit_job_type(&buffer, buffer.count, &storeMax)
        if result == 1 { return .failure(SystemdError("the unit has no job")) }
        guard result == 0 else {
            return .failure(
                SystemdError("cannot ask systemd for the unit's job: \(String(cString: strerror(-result)))"))
        }
        let type = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return .success((type, Int(storeMax)))
    }

    /// Whether a notification socket is set: without one nothing can be stored.
    public static var canNotify: Bool { getenv("NOTIFY_SOCKET") != nil }

    /// Stores `descriptors` in the unit's file descriptor store, each under its name
    /// (`FDSTORE=1`, `FDNAME=`, sd_pid_notify_with_fds(3)), one message per name; false if
    /// one could not be stored (no store: `FileDescriptorStoreMax=` is 0 or too small, no
    /// notification socket).
    public static func store(_ descriptors: [(name: String, descriptor: CInt)]) -> Bool {
        // `FDPOLL=0`: systemd must keep a session's socket even when it reports a hang-up
        // (both directions of that socket ended while bytes read from it still wait for
        // the other socket); by default it would drop it from the store.
        // One name per message (FDNAME= names every descriptor of its message), at most
        // `Handover.descriptorsPerMessage` descriptors per message.
        var byName: [(String, [CInt])] = []
        for (name, descriptor) in descriptors {
            if let last = byName.last, last.0 == name, last.1.count < Handover.descriptorsPerMessage {
                byName[byName.count - 1].1.append(descriptor)
            } else {
                byName.append((name, [descriptor]))
            }
        }
        for (name, fds) in byName {
            let sent = fds.withUnsafeBufferPointer { buffer in
                sd_pid_notify_with_fds(
                    0, 0, "FDSTORE=1\nFDNAME=\(name)\nFDPOLL=0", buffer.baseAddress, UInt32(buffer.count))
            }
            guard sent > 0 else { return false }
        }
        // systemd must have taken them all before this process exits: it forgets a dead
        // process's messages still queued.
        return sd_notify_barrier(0, Handover.barrierTimeoutMicroseconds) >= 0
    }

    /// Removes the descriptors stored under `name` from the unit's store (`FDSTOREREMOVE=1`).
    public static func removeStored(_ name: String) {
        _ = sd_notify(0, "FDSTOREREMOVE=1\nFDNAME=\(name)")
    }

    /// A new memfd (memfd_create(2), close-on-exec) named `name`.
    public static func memfd(_ name: String) -> CInt {
        relay_memfd_create(name)
    }
}

/// A problem with what systemd passed us.
public struct SystemdError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}
