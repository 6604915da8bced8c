import Glibc
import RelayDataPlane
import RelayProtocol

/// Reads the PROXY header a trusted load balancer sends first (`acceptProxyProtocol`), and
/// looks for one in the first bytes of anyone else, on a client socket the relay owns.
public enum ProxyHeaderReader {
    /// Why a client's PROXY header was not read.
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let description: String
    }

    /// Reads the header at the start of `socket` before `deadline`, at most
    /// ``ProxyHeader/maxBytes`` bytes; what arrived past it becomes the socket's
    /// ``OwnedSocket/pending`` (the data plane sends it first).
    public static func read(
        from socket: OwnedSocket, until deadline: ContinuousClock.Instant
    ) async -> Result<ProxyHeader, Failure> {
        var bytes: [UInt8] = []
        while true {
            do {
                if case let (header, length)? = try ProxyHeader.parse(bytes) {
                    let rest = Array(bytes[length...])
                    socket.pending.withLock { $0 = rest }
                    return .success(header)
                }
            } catch {
                return .failure(Failure(description: "bad PROXY header: \(error)"))
            }
            guard let descriptor = socket.descriptor else { return .failure(Failure(description: "connection closed")) }
            var chunk = [UInt8](repeating: 0, count: ProxyHeader.maxBytes - bytes.count)
            let outcome = chunk.withUnsafeMutableBytes { descriptor.receive(into: $0) }
            switch outcome {
            case .bytes(let count):
                bytes += chunk.prefix(count)
            case .endOfStream:
                return .failure(Failure(description: "closed before its PROXY header was complete"))
            case .wouldBlock:
                do {
                    try await SocketIO.wait(.readable, on: descriptor, until: deadline)
                } catch .timedOut {
                    return .failure(Failure(description: "no complete PROXY header in time (handshakeTimeoutSeconds)"))
                } catch {
                    return .failure(Failure(description: "\(error)"))
                }
            case .failed(let code):
                return .failure(Failure(description: SystemError.describe(code)))
            }
        }
    }

    /// Whether the bytes that already arrived on `socket` start like a PROXY header (v1's
    /// `PROXY ` or v2's signature), looked at without taking them and without waiting.
    public static func headerArrived(on socket: OwnedSocket) -> Bool {
        guard let descriptor = socket.descriptor else { return false }
        var first = [UInt8](repeating: 0, count: ProxyHeader.v2Signature.count)
        let count = first.withUnsafeMutableBytes {
            recv(descriptor.rawValue, $0.baseAddress, $0.count, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
        }
        return count > 0 && ProxyHeader.looksLikeHeader(first.prefix(count))
    }
}
