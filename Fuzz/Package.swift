// swift-tools-version:6.1
import PackageDescription

// libFuzzer targets for relay's parsers and state machines (docs/fuzzing.md). Built and run
// only by scripts/fuzz, with `-sanitize=fuzzer -parse-as-library`, in Fuzz/.build: the normal
// build of the package above never sees them.
let package = Package(
    name: "relay-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "relay", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        // One binary for every target; RELAY_FUZZ_TARGET picks the one it runs.
        .executableTarget(
            name: "relay-fuzz",
            dependencies: [
                .product(name: "RelayFuzzable", package: "relay"),
                .product(name: "NIOCore", package: "swift-nio"),
                "CLibFuzzer",
            ],
            path: "Sources/RelayFuzz"
        ),
        // The declaration of LLVMFuzzerRunDriver.
        .target(name: "CLibFuzzer"),
    ],
    swiftLanguageModes: [.v6]
)
