import CLibFuzzer
import Glibc

/// The fuzz targets by name (`RELAY_FUZZ_TARGET`); each takes one input and traps on a broken invariant.
let targets: [String: @Sendable ([UInt8]) -> Void] = [
    "codec": CodecTarget.run,
    "proxy-control": ProxyControlTarget.run,
    "agent-control": AgentControlTarget.run,
    "attach": AttachTarget.run,
    "control-request": ControlRequestTarget.run,
    "config": ConfigTarget.run,
    "proxy-header": ProxyHeaderTarget.run,
]

nonisolated(unsafe) var selected: (@Sendable ([UInt8]) -> Void)?

/// Picks the target from the environment and hands over to libFuzzer's driver. (SwiftPM links
/// every executable with a main of its own, so libFuzzer's main is not used.)
@main
enum RelayFuzz {
    static func main() {
        guard let name = getenv("RELAY_FUZZ_TARGET").map({ String(cString: $0) }), let target = targets[name] else {
            say("relay-fuzz: set RELAY_FUZZ_TARGET to one of: \(targets.keys.sorted().joined(separator: ", "))")
            exit(64)
        }
        selected = target
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, testOneInput))
    }
}

/// One input. Also exported under libFuzzer's name, which its runtime refers to.
@_cdecl("LLVMFuzzerTestOneInput")
func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    selected?(bytes)
    return 0
}

/// Stops the run with `message` when an invariant does not hold (libFuzzer saves the input).
func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() {
        say("relay-fuzz: invariant broken: \(message())")
        abort()
    }
}

/// One line on stderr.
func say(_ text: String) {
    let bytes = Array((text + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}
