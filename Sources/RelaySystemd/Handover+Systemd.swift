import Glibc
import RelayCore

extension Handover {
    /// The handover through systemd: a SIGTERM is a restart when the unit's job (asked over
    /// the system bus) is one of ``Handover/restartJobTypes`` and a notification socket is
    /// set; descriptors go to the file descriptor store (`FDSTORE=1`) and come back through
    /// sd_listen_fds_with_names(3) as `inherited`.
    public static func systemd(inherited: [String: CInt]) -> Handover {
        Handover(
            decide: { needed in
                guard Systemd.canNotify else { return .drain(reason: "no notification socket") }
                switch Systemd.unitJobType() {
                case .success(let job):
                    return Handover.decide(jobType: job.type, storeMax: job.storeMax, needed: needed)
                case .failure(let error): return Handover.decide(jobType: nil, failure: error.description)
                }
            },
            store: { Systemd.store($0) },
            remove: { Systemd.removeStored($0) },
            memfd: { Systemd.memfd($0) },
            inherited: inherited)
    }
}
