import Glibc

extension String {
    /// `format` with `arguments` filled in by C's `vsnprintf`, which is what Foundation's
    /// `String(cFormat:)` did for the numeric conversions relay uses (`%g`, `%.3f`, `%02x`,
    /// `%04d`). Relay never calls `setlocale`, so the decimal point is the C locale's `.`.
    package init(cFormat format: String, _ arguments: any CVarArg...) {
        let length = withVaList(arguments) { vsnprintf(nil, 0, format, $0) }
        guard length > 0 else {
            self = ""
            return
        }
        var bytes = [UInt8](repeating: 0, count: Int(length) + 1)
        bytes.withUnsafeMutableBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { characters in
                _ = withVaList(arguments) { vsnprintf(characters.baseAddress, characters.count, format, $0) }
            }
        }
        self = String(decoding: bytes.dropLast(), as: UTF8.self)
    }
}
