import NIOCore
import RelayCore
import Testing

@Suite struct HostPortTests {
    static func error(_ text: String, allowPortZero: Bool = false) -> String? {
        do {
            _ = try HostPort(parsing: text, allowPortZero: allowPortZero)
            return nil
        } catch {
            return error.description
        }
    }

    @Test(arguments: [
        ("0.0.0.0:7835", "0.0.0.0", 7835),
        ("127.0.0.1:1", "127.0.0.1", 1),
        ("10.1.2.3:65535", "10.1.2.3", 65535),
        ("[::1]:7835", "::1", 7835),
        ("[::]:80", "::", 80),
        ("[2001:db8::17]:443", "2001:db8::17", 443),
        ("[fe80::1%eth0]:22", "fe80::1%eth0", 22),
        ("relay.example.net:7835", "relay.example.net", 7835),
        ("localhost:8080", "localhost", 8080),
        ("my-host_1:22", "my-host_1", 22),
    ])
    func parses(_ text: String, _ host: String, _ port: Int) throws {
        let address = try HostPort(parsing: text)
        #expect(address.host == host)
        #expect(address.port == port)
        #expect(address.description == text)
        #expect(address == HostPort(host: host, port: port))
    }

    @Test func leadingZerosInThePortAreTolerated() throws {
        #expect(try HostPort(parsing: "localhost:0080").description == "localhost:80")
    }

    @Test func portZeroOnlyForListeners() throws {
        #expect(Self.error("0.0.0.0:0") == "the port must be a number from 1 to 65535")
        let any = try HostPort(parsing: "0.0.0.0:0", allowPortZero: true)
        #expect(any.port == 0)
        #expect(try HostPort(parsing: "[::1]:0", allowPortZero: true).description == "[::1]:0")
    }

    @Test(arguments: [
        ("", "expected HOST:PORT"),
        ("localhost", "expected HOST:PORT"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("localhost:", "the port must be a number from 1 to 65535"),
        ("localhost:65536", "the port must be a number from 1 to 65535"),
        ("localhost:99999999999999999999", "the port must be a number from 1 to 65535"),
        ("localhost:-1", "the port must be a number from 1 to 65535"),
        ("localhost:http", "the port must be a number from 1 to 65535"),
        ("localhost:+80", "the port must be a number from 1 to 65535"),
        ("localhost: 80", "the port must be a number from 1 to 65535"),
        ("localhost:80 ", "the port must be a number from 1 to 65535"),
        ("::1:7835", "write an IPv6 address in brackets, as [::1]:7835"),
        ("2001:db8::1:80", "write an IPv6 address in brackets, as [::1]:7835"),
        ("[::1]", "expected ':PORT' after ']'"),
        ("[::1]7835", "expected ':PORT' after ']'"),
        ("[::1", "missing ']' after an IPv6 address"),
        ("[::1]:", "the port must be a number from 1 to 65535"),
        ("[::1]:70000", "the port must be a number from 1 to 65535"),
        ("[127.0.0.1]:80", "brackets are only for IPv6 addresses"),
        ("[relay.example.net]:80", "brackets are only for IPv6 addresses"),
        ("[]:80", "brackets are only for IPv6 addresses"),
        (":80", "the host is empty"),
        ("my host:80", "the host contains white space"),
        (" localhost:80", "the host contains white space"),
    ])
    func rejects(_ text: String, _ message: String) {
        #expect(Self.error(text) == message)
    }

    @Test func listenerRangeIsWordedFromZero() {
        #expect(Self.error("0.0.0.0:65536", allowPortZero: true) == "the port must be a number from 0 to 65535")
        #expect(Self.error("0.0.0.0:-1", allowPortZero: true) == "the port must be a number from 0 to 65535")
    }

    @Test func resolvesLiterals() throws {
        let v4 = try HostPort(parsing: "127.0.0.1:7835").resolve()
        #expect(v4.displayString == "127.0.0.1:7835")
        let v6 = try HostPort(parsing: "[::1]:7835").resolve()
        #expect(v6.displayString == "[::1]:7835")
    }

    @Test func displayStringOfAUnixSocket() throws {
        let address = try SocketAddress(unixDomainSocketPath: "/run/relay/proxy.sock")
        #expect(address.displayString == "/run/relay/proxy.sock")
    }
}
