import Testing

/// The in-process I/O tests run one at a time. Several measure time (heartbeats, the
/// half-close limit, a trickle) and the pump tests move many MiB: side by side on two cores,
/// a transfer's tasks, which need not suspend while bytes keep coming, hold the cooperative
/// threads long enough to delay a ticker past those limits.
@Suite(.serialized) enum IOTests {}
