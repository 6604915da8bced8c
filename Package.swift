// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "relay",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "relay-proxy", targets: ["relay-proxy"]),
        .executable(name: "relay-agent", targets: ["relay-agent"]),
        .executable(name: "relayctl", targets: ["relayctl"]),
        // Only for the fuzz targets of Fuzz/Package.swift (scripts/fuzz, docs/fuzzing.md).
        .library(
            name: "RelayFuzzable", targets: ["RelayProtocol", "RelayControl", "RelayCore", "RelayProxy", "RelayAgent"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    // Each target depends on exactly the modules its files import (docs/architecture.md, Modules).
    targets: [
        // What every module and executable shares, with no dependencies: the version, and what
        // Foundation had and FoundationEssentials lacks (path strings, stdout/stderr, C formats).
        .target(name: "RelaySupport"),
        // Pure protocol: messages, NDJSON framing, authentication, state machines. No I/O.
        .target(
            name: "RelayProtocol",
            dependencies: [
                "RelaySupport",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // The control socket's wire types, which relayctl and the daemons share: requests, responses,
        // reports (JSON), limits, the socket's address, and relayctl's units and columns. No I/O, no NIO.
        .target(name: "RelayControl", dependencies: ["RelaySupport"]),
        // Shared NIO plumbing: byte pump, line reader, listeners, addresses, config reading, TLS on the agent port, logging,
        // the daemon life cycle, the control socket's server.
        .target(
            name: "RelayCore",
            dependencies: [
                "RelaySupport", "RelayProtocol", "RelayControl", "RelayDataPlane", "CRelayTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        // Metrics: per-service and daemon telemetry on swift-metrics, the Prometheus registry, the
        // HTTP endpoint that serves it, and binding that endpoint with the control socket.
        .target(
            name: "RelayMetrics",
            dependencies: [
                "RelayProtocol", "RelayControl", "RelayCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "RelayProxy",
            dependencies: [
                "RelaySupport", "RelayProtocol", "RelayControl", "RelayCore", "RelayMetrics", "RelayDataPlane",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "RelayAgent",
            dependencies: [
                "RelaySupport", "RelayProtocol", "RelayControl", "RelayCore", "RelayMetrics", "RelayDataPlane",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Linux calls Swift's Glibc module leaves out: epoll, eventfd, splice(2), pipe2, F_SETPIPE_SZ.
        .target(name: "CDataPlane"),
        // The splice(2) data plane: epoll loops on their own threads that join plain sockets in
        // the kernel (socket -> pipe -> socket). No NIO; Linux only.
        .target(name: "RelayDataPlane", dependencies: ["CDataPlane"]),
        // BoringSSL's session calls (the copy swift-nio-ssl links) for TLS 1.3 resumption on the
        // agent: docs/architecture.md, "TLS session resumption".
        .target(name: "CRelayTLS"),
        // The real libsystemd (Debian: libsystemd-dev), and a small Swift API over it.
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .target(name: "RelaySystemd", dependencies: ["CSystemd", "RelayControl", "RelayCore"]),
        // What both executables share: the command line, start-up, systemd hooks, the service group.
        .target(
            name: "RelayDaemon",
            dependencies: [
                "RelaySupport", "RelayCore", "RelayMetrics", "RelaySystemd",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "relay-proxy",
            dependencies: [
                "RelaySupport", "RelayCore", "RelayMetrics", "RelayProxy", "RelaySystemd", "RelayDaemon",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "relay-agent",
            dependencies: [
                "RelaySupport", "RelayCore", "RelayMetrics", "RelayAgent", "RelaySystemd", "RelayDaemon",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "relayctl",
            dependencies: [
                "RelaySupport", "RelayControl",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "RelayProtocolTests",
            dependencies: ["RelayProtocol", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(name: "RelayControlTests", dependencies: ["RelayControl"]),
        .testTarget(
            name: "RelayCoreTests",
            dependencies: [
                "RelaySupport", "RelayProtocol", "RelayControl", "RelayCore", "RelayMetrics",
                "RelayProxy", "RelayAgent", "RelayDataPlane",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        .testTarget(name: "RelayDataPlaneTests", dependencies: ["RelayDataPlane"]),
        .testTarget(
            name: "RelayIntegrationTests",
            dependencies: [
                "RelayProtocol", "RelayControl", "RelayCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
