import ArgumentParser
import RelayCore

/// relayctl: inspect and control relay-proxy and relay-agent. See relayctl(1).
@main
struct RelayCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relayctl",
        abstract: "Inspect and control relay-proxy and relay-agent over their control sockets.",
        version: "relayctl \(RelayVersion.current)"
    )
}
