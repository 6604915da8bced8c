import Glibc

/// Standard output and standard error, written the way Foundation's
/// `FileHandle.standardOutput.write(_:)` and `FileHandle.standardError.write(_:)` did: all
/// bytes of one call with `write(2)`, a write interrupted by a signal retried, and a failed
/// write (a closed pipe with SIGPIPE ignored, a full disk) fatal, as FileHandle's `try!` was.
package enum StandardStream: Sendable {
    case output
    case error

    /// Writes the UTF-8 of `text`.
    package func write(_ text: String) {
        self.write(bytes: text.utf8)
    }

    /// Writes `bytes` as they are.
    package func write(bytes: some Collection<UInt8>) {
        let contiguous: Void? = bytes.withContiguousStorageIfAvailable { self.write(buffer: $0) }
        if contiguous == nil { Array(bytes).withUnsafeBufferPointer { self.write(buffer: $0) } }
    }

    private func write(buffer: UnsafeBufferPointer<UInt8>) {
        guard let base = buffer.baseAddress else { return }
        let descriptor = self == .output ? STDOUT_FILENO : STDERR_FILENO
        var done = 0
        while done < buffer.count {
            let count = Glibc.write(descriptor, base + done, buffer.count - done)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                let reason = String(cString: strerror(errno)).lowercased()
                fatalError("cannot write to standard \(self == .output ? "output" : "error"): \(reason)")
            }
            done += count
        }
    }
}
