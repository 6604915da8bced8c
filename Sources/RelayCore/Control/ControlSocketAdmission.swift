import Glibc
import RelayControl

/// Which control connections are served: at most ``ControlSocketLimits/maxConnections`` in
/// all, of which the last ``ControlSocketLimits/reservedForOperator`` only for root and the
/// daemon's own user, and at most ``ControlSocketLimits/maxConnectionsPerUser`` for any
/// other user, so that idle connections from members of the socket's group never lock the
/// operator out of `relayctl`. Pure bookkeeping; the server asks it under a lock.
struct ControlSocketAdmission: Sendable {
    /// Why a connection is refused.
    enum Refusal: Sendable, Equatable {
        /// All slots open to this user are taken.
        case total
        /// This user holds its share.
        case perUser
    }

    /// The limits' names in `status` and metrics.
    static let totalName = "controlMaxConnections"
    static let perUserName = "controlMaxConnectionsPerUser"

    /// The users the reserved slots are for: root, and the daemon's effective user.
    let operators: Set<uid_t>
    let maxTotal: Int
    let reserved: Int
    let maxPerUser: Int
    private(set) var total = 0
    private(set) var byUser: [uid_t: Int] = [:]

    init(
        operators: Set<uid_t> = [0, geteuid()], maxTotal: Int = ControlSocketLimits.maxConnections,
        reserved: Int = ControlSocketLimits.reservedForOperator,
        maxPerUser: Int = ControlSocketLimits.maxConnectionsPerUser
    ) {
        self.operators = operators
        self.maxTotal = maxTotal
        self.reserved = reserved
        self.maxPerUser = maxPerUser
    }

    /// Takes a slot for a connection from `uid`, or says why not.
    mutating func admit(uid: uid_t) -> Refusal? {
        let isOperator = self.operators.contains(uid)
        if self.total >= (isOperator ? self.maxTotal : self.maxTotal - self.reserved) { return .total }
        if !isOperator && self.byUser[uid, default: 0] >= self.maxPerUser { return .perUser }
        self.total += 1
        self.byUser[uid, default: 0] += 1
        return nil
    }

    /// Gives back the slot of a connection from `uid` that closed.
    mutating func release(uid: uid_t) {
        self.total -= 1
        let left = (self.byUser[uid] ?? 1) - 1
        self.byUser[uid] = left > 0 ? left : nil
    }
}
