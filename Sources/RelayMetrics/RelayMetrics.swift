import Metrics
import Prometheus

/// The process's one metrics registry: swift-metrics bootstrapped onto swift-prometheus.
public enum RelayMetrics {
    /// The content type of the Prometheus text exposition format.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// Creates the registry and makes it the process's `MetricsSystem` backend. Call once,
    /// from the executable, before the daemon starts.
    public static func bootstrap() -> MetricsRegistry {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(500),
            .seconds(1), .seconds(5),
        ]
        MetricsSystem.bootstrap(factory)
        return MetricsRegistry(registry)
    }
}

/// The process's registry, as the daemons see it: something that renders the exposition text.
public struct MetricsRegistry: Sendable {
    private let registry: PrometheusCollectorRegistry

    /// Wraps `registry`.
    public init(_ registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    /// Every metric in the Prometheus text exposition format.
    public func text() -> String {
        self.registry.emitToString()
    }
}
