import Foundation
import Glibc
import RelayDataPlane
import Testing

extension SpliceTests {
    /// iperf3 through one spliced hop against iperf3 direct and through one hop of
    /// systemd-socket-proxyd (which splices too), alternating, medians of three: the tools of
    /// issue 9's table, for figures comparable with it. Opt-in
    /// (`RELAY_SPLICE_IPERF3=1 swift test --filter SpliceIperfFigures`): it needs iperf3 and
    /// systemd-socket-proxyd and takes about two minutes. Prints figures; asserts nothing.
    @Suite(.enabled(if: ProcessInfo.processInfo.environment["RELAY_SPLICE_IPERF3"] != nil))
    struct SpliceIperfFigures {
        /// Seconds of each iperf3 run.
        static let seconds = 3

        @Test func iperf3ThroughOneSplicedHop() async throws {
            var rows: [String] = []
            for streams in [1, 8] {
                var rates: [String: [Double]] = [:]
                for _ in 0..<3 {
                    rates["direct", default: []].append(try await Self.iperf3(streams: streams, hop: .none))
                    rates["proxyd", default: []].append(try await Self.iperf3(streams: streams, hop: .socketProxyd))
                    for trigger in [SplicePlane.Trigger.edge, .level] {
                        let rate = try await withPlane(loops: SplicePlane.activeCPUCount, trigger: trigger) { plane in
                            try await Self.iperf3(streams: streams, hop: .plane(plane))
                        }
                        rates["\(trigger)", default: []].append(rate)
                    }
                }
                func median(_ name: String) -> Double { rates[name]!.sorted()[1] }
                let direct = median("direct")
                func cell(_ name: String) -> String {
                    "\(Self.gbits(median(name))) (\(Self.ratio(median(name), direct))x)"
                }
                rows.append(
                    "\(streams) stream(s): direct \(Self.gbits(direct)) Gbit/s; socket-proxyd \(cell("proxyd")); "
                        + "spliced edge-triggered \(cell("edge")), level-triggered \(cell("level"))")
            }
            print(
                "figure: iperf3, \(Self.seconds) s runs, medians of 3, alternating:\n  "
                    + rows.joined(separator: "\n  "))
        }

        static func gbits(_ bitsPerSecond: Double) -> String { String(format: "%.2f", bitsPerSecond / 1e9) }
        static func ratio(_ value: Double, _ base: Double) -> String { String(format: "%.2f", value / base) }

        /// What stands between iperf3's client and its server.
        enum Hop {
            case none
            /// systemd-socket-proxyd on a listener from systemd-socket-activate.
            case socketProxyd
            /// A listener whose every connection is spliced to the server on this plane.
            case plane(SplicePlane)
        }

        /// One iperf3 run (client → server) of `streams` streams through `hop`; bits per
        /// second received.
        static func iperf3(streams: Int, hop: Hop) async throws -> Double {
            let serverPort = try Self.freePort()
            let server = Process()
            server.executableURL = URL(fileURLWithPath: "/usr/bin/iperf3")
            server.arguments = ["-s", "-1", "-p", "\(serverPort)"]
            server.standardOutput = FileHandle.nullDevice
            try server.run()
            // SIGKILL: an iperf3 server still waiting for its one test may outlive a SIGTERM.
            defer { kill(server.processIdentifier, SIGKILL) }
            try await Task.sleep(for: .milliseconds(300))
            var port = serverPort
            var listener: Int32 = -1
            var proxyd: Process?
            switch hop {
            case .none:
                break
            case .socketProxyd:
                port = try Self.freePort()
                let process = Process()
                process.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-socket-activate")
                process.arguments = [
                    "-l", "127.0.0.1:\(port)", "/lib/systemd/systemd-socket-proxyd", "127.0.0.1:\(serverPort)",
                ]
                process.standardError = FileHandle.nullDevice
                try process.run()
                proxyd = process
                try await Task.sleep(for: .milliseconds(300))
            case .plane(let hop):
                (listener, port) = try Self.listen()
                let accepting = listener
                Thread {
                    while true {
                        let accepted = accept(accepting, nil, nil)
                        guard accepted >= 0 else { return }
                        guard let dialled = try? Self.dial(serverPort) else {
                            close(accepted)
                            continue
                        }
                        _ = try? Descriptor(rawValue: accepted).setNoDelay()
                        _ = hop.start(first: Descriptor(rawValue: accepted), second: Descriptor(rawValue: dialled))
                    }
                }.start()
            }
            defer {
                // socket-proxyd does not end on SIGTERM while it holds connections.
                if let proxyd { kill(proxyd.processIdentifier, SIGKILL) }
                if listener >= 0 {
                    shutdown(listener, Int32(SHUT_RDWR))  // Wakes the accepting thread.
                    close(listener)
                }
            }
            let client = Process()
            client.executableURL = URL(fileURLWithPath: "/usr/bin/iperf3")
            client.arguments = ["-c", "127.0.0.1", "-p", "\(port)", "-t", "\(Self.seconds)", "-P", "\(streams)", "-J"]
            let output = Pipe()
            client.standardOutput = output
            try client.run()
            // The report is complete once the client has closed its output. (No waitUntilExit:
            // with systemd-socket-activate's child about, Foundation stopped reaping here.)
            let data = await Blocking.run { output.fileHandleForReading.readDataToEndOfFile() }
            let json = try JSONSerialization.jsonObject(with: data) as? [String: Any]
            let end = json?["end"] as? [String: Any]
            let received = end?["sum_received"] as? [String: Any]
            return received?["bits_per_second"] as? Double ?? 0
        }

        /// A listener on 127.0.0.1, port 0, and its port.
        static func listen() throws -> (Int32, Int) {
            let (listener, port) = try Self.bound()
            guard Glibc.listen(listener, 64) == 0 else { throw SystemError(call: "listen") }
            return (listener, port)
        }

        /// A port nothing listens on now.
        static func freePort() throws -> Int {
            let (socket, port) = try Self.bound()
            close(socket)
            return port
        }

        /// Dials 127.0.0.1:`port`, TCP_NODELAY.
        static func dial(_ port: Int) throws -> Int32 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw SystemError(call: "socket") }
            var address = Self.loopback(port: port)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard connected == 0 else {
                let error = SystemError(call: "connect")
                close(fd)
                throw error
            }
            try Descriptor(rawValue: fd).setNoDelay()
            return fd
        }

        private static func bound() throws -> (Int32, Int) {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw SystemError(call: "socket") }
            var address = Self.loopback(port: 0)
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard bound == 0 else {
                let error = SystemError(call: "bind")
                close(fd)
                throw error
            }
            return (fd, Loopback.ports(fd).local)
        }

        private static func loopback(port: Int) -> sockaddr_in {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = UInt16(port).bigEndian
            return address
        }
    }
}
