import FoundationEssentials
import Glibc
import RelayControl
import RelaySupport

/// Where relayctl's results go: text or one JSON document on stdout, failures on stderr.
/// Nothing a daemon supplied reaches the terminal with a control character in it (``TerminalText``).
struct Output {
    let isJSON: Bool
    /// Colour only on a terminal, and not when NO_COLOR is set or TERM is dumb.
    let colour: Bool

    init(json: Bool) {
        self.isJSON = json
        let environment = ProcessInfo.processInfo.environment
        self.colour =
            !json && isatty(STDOUT_FILENO) == 1 && environment["NO_COLOR"] == nil && environment["TERM"] != "dumb"
    }

    /// Prints `value` as JSON when `--json` was given; `false` (the caller prints text) otherwise.
    @discardableResult
    func json(_ value: some Encodable) -> Bool {
        guard self.isJSON else { return false }
        let data = (try? ControlJSON.encoder(pretty: true).encode(value)) ?? Data("null".utf8)
        StandardStream.output.write(TerminalText.escapeJSON(String(decoding: data, as: UTF8.self)) + "\n")
        return true
    }

    /// Prints text and a newline.
    func text(_ text: String) {
        StandardStream.output.write(text + "\n")
    }

    /// Prints lines a daemon supplied (the metrics) with their control characters but the
    /// line feeds escaped.
    func raw(_ text: String) {
        StandardStream.output.write(TerminalText.escape(text, keepingNewlines: true))
    }

    /// One line on stderr: `relayctl: message`.
    func fail(_ message: String) {
        let clean = TerminalText.escape(message.replacingLiterally("\n", with: " "))
        StandardStream.error.write("relayctl: \(clean)\n")
    }
}
