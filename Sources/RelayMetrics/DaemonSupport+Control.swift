import Logging
import RelayCore
import ServiceLifecycle

extension DaemonSupport {
    /// Binds a daemon's control socket and, if configured, its metrics endpoint, before the
    /// daemon itself starts (so readiness comes after both); returns them as services to run
    /// before the daemon in its `ServiceGroup` (they shut down after it). On failure nothing
    /// stays bound.
    public static func bindControlServices(
        control: String,
        metrics: HostPort?,
        logger: Logger,
        limits: LimitCounters = LimitCounters(),
        handler: @escaping ControlSocketServer.Handler,
        renderMetrics: @escaping @Sendable () -> String
    ) async throws -> [any Service] {
        let socket = try await ControlSocketServer.bind(path: control, logger: logger, limits: limits, handler: handler)
        guard let metrics else { return [socket] }
        do {
            let endpoint = try await MetricsHTTPServer.bind(
                metrics, logger: logger, limits: limits, render: renderMetrics)
            return [socket, endpoint]
        } catch {
            socket.close()
            throw error
        }
    }
}
