/// An agent's shared secret. Its description is masked, so it cannot reach a log by accident.
public struct Secret: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    /// The secret's bytes (UTF-8 of the configured string, or a secret file's content).
    public let bytes: [UInt8]

    /// Wraps the secret's bytes.
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// Wraps the UTF-8 bytes of a string.
    public init(_ string: String) { self.bytes = Array(string.utf8) }

    public var description: String { "<secret>" }
    public var debugDescription: String { "<secret>" }

    public static func == (lhs: Secret, rhs: Secret) -> Bool {
        constantTimeEquals(lhs.bytes, rhs.bytes)
    }
}

/// Compares two byte strings in time that depends only on their lengths, never on where they differ.
public func constantTimeEquals(_ lhs: some Collection<UInt8>, _ rhs: some Collection<UInt8>) -> Bool {
    guard lhs.count == rhs.count else { return false }
    var difference: UInt8 = 0
    for (a, b) in zip(lhs, rhs) { difference |= a ^ b }
    return difference == 0
}
