import Foundation
import Testing

/// The man pages in man/: each one renders without a warning from `man`, and together they
/// document what the built binaries have: every flag their `--help` lists, every relayctl
/// command, every config key the daemons accept (found by asking the daemons themselves,
/// through `--check-config` on probe files) with its type and an example, and every JSON key
/// and exit status of relayctl (read from the report types and ExitStatus.swift in Sources).
@Suite(.timeLimit(.minutes(2)))
struct ManPageTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    static let manDirectory = Self.repository.appendingPathComponent("man")

    /// The pages that must exist; any other page in man/ is rendered and checked for warnings too.
    static let pages = ["relay-proxy.8", "relay-agent.8", "relay-proxy.json.5", "relay-agent.json.5", "relayctl.1"]

    /// Each daemon, its page and its config's page.
    static let daemons = [
        (binary: "relay-proxy", page: "relay-proxy.8", configPage: "relay-proxy.json.5"),
        (binary: "relay-agent", page: "relay-agent.8", configPage: "relay-agent.json.5"),
    ]

    /// Flags ArgumentParser accepts but leaves out of `--help`, which a page may document.
    static let hiddenFlags = ["relayctl": ["--generate-completion-script"]]

    @Test
    func everyPageRendersWithoutWarnings() async throws {
        let present = try FileManager.default.contentsOfDirectory(atPath: Self.manDirectory.path)
            .filter { !$0.hasPrefix(".") }.sorted()
        for page in Self.pages {
            #expect(present.contains(page), "man/\(page) is missing")
        }
        for page in present {
            let rendered = try await Self.render(page)
            #expect(
                rendered.status == 0 && rendered.stderr.isEmpty,
                "man --warnings -l man/\(page) (MANWIDTH=80, LC_ALL=C.UTF-8) exited \(rendered.status) and printed:\n\(rendered.stderr)"
            )
            #expect(!rendered.stdout.isEmpty, "man -l man/\(page) printed nothing")
        }
    }

    @Test(arguments: Self.daemons.indices)
    func everyDaemonFlagIsDocumented(_ index: Int) async throws {
        let (binary, pageName, _) = Self.daemons[index]
        let help = try await Self.help(binary, [])
        let page = try await RenderedPage(pageName)
        let missing = help.flags.filter { !page.optionFlags.contains($0) }
        #expect(missing.isEmpty, "\(binary) --help lists \(missing), which man/\(pageName) OPTIONS has no entry for")
        let extra = page.optionFlags.filter { !help.flags.contains($0) }
        #expect(extra.isEmpty, "man/\(pageName) OPTIONS documents \(extra), which \(binary) --help does not list")
    }

    @Test
    func relayctlIsDocumented() async throws {
        let help = try await Self.help("relayctl", [])
        let page = try await RenderedPage("relayctl.1")
        let hidden = Self.hiddenFlags["relayctl"] ?? []

        // Options: the global ones have an entry in OPTIONS, a command's own ones are in its
        // entry's tag in COMMANDS (`sessions [--service NAME] [--agent ID]`).
        let missing = help.flags.filter { !page.optionFlags.contains($0) }
        #expect(missing.isEmpty, "relayctl --help lists \(missing), which man/relayctl.1 OPTIONS has no entry for")
        let commandTags = page.tags(in: "COMMANDS")
        for command in help.subcommands {
            let own = try await Self.help("relayctl", [command]).flags.filter { !help.flags.contains($0) }
            let tag = commandTags.first { $0.split(separator: " ").first.map(String.init) == command } ?? ""
            let absent = own.filter { !RenderedPage.tokens(tag).contains($0) }
            #expect(
                absent.isEmpty,
                "relayctl \(command) --help lists \(absent), which its entry in man/relayctl.1 COMMANDS does not: '\(tag)'"
            )
        }
        let extra = page.optionFlags.filter { !help.flags.contains($0) && !hidden.contains($0) }
        #expect(extra.isEmpty, "man/relayctl.1 OPTIONS documents \(extra), which relayctl --help does not list")
        for flag in hidden where page.optionFlags.contains(flag) {
            let run = try await Self.run(Binaries.path("relayctl"), [flag, "bash"])
            #expect(run.status == 0, "man/relayctl.1 documents \(flag), which relayctl refuses: \(run.stderr)")
        }

        // Commands: one entry each in COMMANDS, and no entry for a command relayctl lacks.
        #expect(!help.subcommands.isEmpty, "relayctl --help lists no SUBCOMMANDS:\n\(help.text)")
        let entries = page.tags(in: "COMMANDS").compactMap { $0.split(separator: " ").first.map(String.init) }
        let undocumented = help.subcommands.filter { !entries.contains($0) }
        #expect(undocumented.isEmpty, "man/relayctl.1 COMMANDS has no entry for \(undocumented)")
        let unknown = entries.filter { !help.subcommands.contains($0) }
        #expect(unknown.isEmpty, "man/relayctl.1 COMMANDS documents \(unknown), which relayctl --help does not list")

        // JSON keys: every stored property of the reports relayctl prints.
        let keys = try Self.reportKeys()
        let json = Set(page.section("JSON OUTPUT").flatMap(RenderedPage.tokens))
        let absent = keys.filter { !json.contains($0) }
        #expect(absent.isEmpty, "man/relayctl.1 JSON OUTPUT does not mention the keys \(absent)")

        // Exit statuses: one entry each in EXIT STATUS.
        let statuses = try Self.relayctlExitStatuses()
        #expect(!statuses.isEmpty, "found no exit status in Sources/relayctl/ExitStatus.swift")
        let documented = page.tags(in: "EXIT STATUS").compactMap { $0.split(separator: " ").first.map(String.init) }
        let gaps = statuses.filter { !documented.contains($0) }
        #expect(gaps.isEmpty, "man/relayctl.1 EXIT STATUS has no entry for \(gaps)")
    }

    @Test(arguments: Self.daemons.indices)
    func everyConfigKeyIsDocumented(_ index: Int) async throws {
        let (binary, _, pageName) = Self.daemons[index]
        let schema = try await Self.configSchema(binary)
        let page = try await RenderedPage(pageName)
        for (path, keys) in schema.sorted(by: { $0.key < $1.key }) {
            let title = Self.sectionTitle(for: path)
            guard let entries = page.keyEntries(in: title) else {
                Issue.record(
                    "\(binary) accepts the keys \(keys.sorted()) at \(path), but man/\(pageName) has no section titled '\(title)' for them"
                )
                continue
            }
            let missing = keys.filter { entries[$0] == nil }.sorted()
            #expect(
                missing.isEmpty,
                "\(binary) accepts \(missing) at \(path), which section '\(title)' of man/\(pageName) does not document as 'KEY (TYPE, ...)'"
            )
            for key in keys.sorted() {
                guard let entry = entries[key] else { continue }
                #expect(
                    ["required", "default", "optional"].contains { entry.tag.contains($0) },
                    "man/\(pageName): the entry of \(key) says neither required, default nor optional: \(entry.tag)")
                #expect(
                    entry.body.contains("\"\(key)\":"),
                    "man/\(pageName): the entry of \(key) has no example (\"\(key)\": ...): \(entry.body)")
            }
        }
        let accepted = Set(schema.values.joined())
        let documented = Set(page.sections.values.flatMap { RenderedPage.keyEntries(in: $0).keys })
        let unknown = documented.subtracting(accepted).sorted()
        #expect(unknown.isEmpty, "man/\(pageName) documents the keys \(unknown), which \(binary) does not accept")
    }

    // MARK: - Running programs

    /// What a program printed and how it exited.
    struct Run {
        let status: Int32
        let stdout: String
        let stderr: String
    }

    /// Runs `executable` to its end, its output collected in files (no pipe to fill up).
    static func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) async throws
        -> Run
    {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "relay-man-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let outURL = directory.appendingPathComponent("stdout")
        let errURL = directory.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let out = try FileHandle(forWritingTo: outURL)
        let err = try FileHandle(forWritingTo: errURL)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = environment }
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do {
                try process.run()
            } catch {
                process.terminationHandler = nil
                continuation.resume(throwing: HarnessError("cannot run \(executable): \(error)"))
            }
        }
        try out.close()
        try err.close()
        return Run(
            status: status,
            stdout: String(decoding: try Data(contentsOf: outURL), as: UTF8.self),
            stderr: String(decoding: try Data(contentsOf: errURL), as: UTF8.self))
    }

    /// The `man` on the PATH, or a failure that says how to get it.
    static func man() throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let candidates = path.split(separator: ":").map { "\($0)/man" }
        guard let man = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw HarnessError(
                "'man' is not installed, so the man pages cannot be checked: install man-db (apt-get install man-db groff-base; scripts/test does)"
            )
        }
        return man
    }

    /// `man --warnings -l man/PAGE` at 80 columns in C.UTF-8, as a reader sees it.
    static func render(_ page: String) async throws -> Run {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return try await Self.run(
            try Self.man(), ["--warnings", "-l", Self.manDirectory.appendingPathComponent(page).path],
            environment: ["PATH": path, "LC_ALL": "C.UTF-8", "MANWIDTH": "80", "HOME": NSTemporaryDirectory()])
    }

    // MARK: - What the binaries have

    /// What an ArgumentParser `--help` lists.
    struct Help {
        let text: String
        /// Every flag in OPTIONS (`--config`, `-h`, `--help`).
        let flags: [String]
        /// The names in SUBCOMMANDS.
        let subcommands: [String]
    }

    /// Runs `binary command… --help` and reads its OPTIONS and SUBCOMMANDS.
    static func help(_ binary: String, _ command: [String]) async throws -> Help {
        let run = try await Self.run(Binaries.path(binary), command + ["--help"])
        guard run.status == 0 else {
            throw HarnessError("\(binary) \(command.joined(separator: " ")) --help exited \(run.status): \(run.stderr)")
        }
        var section = ""
        var flags: [String] = []
        var subcommands: [String] = []
        for line in run.stdout.split(separator: "\n", omittingEmptySubsequences: false) {
            if let first = line.first, first != " " {
                section = line.hasSuffix(":") ? String(line) : section
                continue
            }
            // An entry starts at column 2; its description, and further lines of it, further right.
            guard line.hasPrefix("  "), !line.hasPrefix("   ") else { continue }
            let entry = line.dropFirst(2).components(separatedBy: "  ")[0]
            switch section {
            case "OPTIONS:":
                flags += entry.split(whereSeparator: { $0 == " " || $0 == "," }).map(String.init).filter {
                    $0.hasPrefix("-")
                }
            case "SUBCOMMANDS:":
                if entry.allSatisfy({ $0.isLowercase || $0 == "-" }) { subcommands.append(entry) }
            default: break
            }
        }
        guard !flags.isEmpty else { throw HarnessError("\(binary) --help lists no OPTIONS:\n\(run.stdout)") }
        return Help(text: run.stdout, flags: flags, subcommands: subcommands)
    }

    /// The key of the probe: no config has it, so every object that is read reports it as
    /// unknown, with the keys it allows.
    static let probeKey = "manPageProbe"

    /// Every config key `binary` accepts, by the JSON path of the object that holds it
    /// (`$`, `$.agents[0]`): found by running `--check-config` on files whose every known
    /// key holds an object, or an array of objects, that carries the probe key, until no new
    /// object turns up.
    static func configSchema(_ binary: String) async throws -> [String: Set<String>] {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "relay-man-probe-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("probe.json").path
        var schema: [String: Set<String>] = [:]
        var outputs: [String] = []
        for _ in 0..<8 {
            var learned = false
            for asArray in [false, true] {
                let document = Self.probe(at: "$", schema: schema, asArray: asArray)
                try JSONSerialization.data(withJSONObject: document, options: [.sortedKeys]).write(
                    to: URL(fileURLWithPath: file))
                let run = try await Self.run(Binaries.path(binary), ["--check-config", "--config", file])
                outputs.append(run.stderr)
                for (path, keys) in Self.unknownKeyReports(run.stderr, file: file) where schema[path] == nil {
                    schema[path] = keys
                    learned = true
                }
            }
            if !learned { break }
        }
        guard let top = schema["$"], !top.isEmpty else {
            throw HarnessError(
                "\(binary) --check-config did not report the probe key as 'unknown key (allowed: ...)':\n\(outputs.joined(separator: "\n"))"
            )
        }
        return schema
    }

    /// A probe document for the object at `path`: the probe key, and each key known there
    /// holding what is known of it, or else a probe object (or an array of one).
    static func probe(at path: String, schema: [String: Set<String>], asArray: Bool) -> [String: Any] {
        var object: [String: Any] = [Self.probeKey: 0]
        for key in schema[path] ?? [] {
            if schema["\(path).\(key)"] != nil {
                object[key] = Self.probe(at: "\(path).\(key)", schema: schema, asArray: asArray)
            } else if schema["\(path).\(key)[0]"] != nil {
                object[key] = [Self.probe(at: "\(path).\(key)[0]", schema: schema, asArray: asArray)]
            } else {
                let leaf: [String: Any] = [Self.probeKey: 0]
                object[key] = asArray ? [leaf] as Any : leaf as Any
            }
        }
        return object
    }

    /// The `FILE: PATH.manPageProbe: unknown key (allowed: a, b)` lines, as PATH and its keys.
    static func unknownKeyReports(_ output: String, file: String) -> [String: Set<String>] {
        var reports: [String: Set<String>] = [:]
        let marker = ".\(Self.probeKey): unknown key (allowed: "
        for line in output.split(separator: "\n") where line.hasPrefix("\(file): ") && line.hasSuffix(")") {
            guard let range = line.range(of: marker) else { continue }
            let path = String(line[line.index(line.startIndex, offsetBy: file.count + 2)..<range.lowerBound])
            let keys = line[range.upperBound...].dropLast().components(separatedBy: ", ")
            reports[path] = Set(keys.filter { !$0.isEmpty })
        }
        return reports
    }

    /// The section of a config page that documents the object at `path`: "Top level" for
    /// the top level, else the name of the key that holds it ("$.agents[0]": "agents").
    static func sectionTitle(for path: String) -> String {
        guard path != "$" else { return "Top level" }
        let last = path.split(separator: ".").last.map(String.init) ?? path
        return last.hasSuffix("[0]") ? String(last.dropLast(3)) : last
    }

    /// Every stored property of the reports relayctl prints as JSON.
    static func reportKeys() throws -> [String] {
        let files = ["Sources/RelayControl/ControlReports.swift", "Sources/RelayControl/ReloadOutcome.swift"]
        var keys: [String] = []
        for file in files {
            let text = try String(contentsOf: Self.repository.appendingPathComponent(file), encoding: .utf8)
            for line in text.split(separator: "\n") {
                let words = line.split(separator: " ")
                guard words.count >= 4, words[0] == "public", words[1] == "var", words[2].hasSuffix(":"),
                    !line.contains("{")
                else { continue }
                keys.append(String(words[2].dropLast()))
            }
        }
        guard keys.count > 10 else { throw HarnessError("found only \(keys) as report keys in \(files)") }
        return Array(Set(keys)).sorted()
    }

    /// The numbers in Sources/relayctl/ExitStatus.swift.
    static func relayctlExitStatuses() throws -> [String] {
        let text = try String(
            contentsOf: Self.repository.appendingPathComponent("Sources/relayctl/ExitStatus.swift"), encoding: .utf8)
        return text.split(separator: "\n").compactMap { line in
            guard line.contains("static let"), line.contains(": Int32 = ") else { return nil }
            return line.components(separatedBy: ": Int32 = ").last.map { $0.trimmingCharacters(in: .whitespaces) }
        }
    }
}

/// A man page as `man` renders it: sections, the tags of their entries, the words in them.
struct RenderedPage {
    let name: String
    /// Each section and subsection, by title, with its lines.
    let sections: [String: [String]]

    init(_ name: String) async throws {
        let rendered = try await ManPageTests.render(name)
        guard rendered.status == 0, !rendered.stdout.isEmpty else {
            throw HarnessError("man -l man/\(name) exited \(rendered.status): \(rendered.stderr)")
        }
        self.name = name
        var sections: [String: [String]] = [:]
        var title = ""
        // Overstrikes (X backspace X), should any be left, are reduced to the character.
        var text = ""
        for character in rendered.stdout {
            if character == "\u{8}" { _ = text.popLast() } else { text.append(character) }
        }
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            // Section titles start at column 0 (.SH) or 3 (.SS); text, tags and examples at 7 or more.
            let indent = line.prefix { $0 == " " }.count
            if !line.isEmpty, indent == 0 || indent == 3 {
                title = line.trimmingCharacters(in: .whitespaces)
                continue
            }
            sections[title, default: []].append(line)
        }
        self.sections = sections
    }

    /// The runs of letters, digits, `_` and `-` in `text`.
    static func tokens(_ text: String) -> [String] {
        text.split { !($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }.map(String.init)
    }

    /// The lines of the section titled `title` (case as printed, or any case), or none.
    func section(_ title: String) -> [String] {
        self.sections[title] ?? self.sections.first { $0.key.lowercased() == title.lowercased() }?.value ?? []
    }

    /// The tags of the entries (`.TP`) of a section: the lines at column 7.
    func tags(in title: String) -> [String] {
        Self.tags(self.section(title))
    }

    static func tags(_ lines: [String]) -> [String] {
        lines.filter { $0.hasPrefix("       ") && !$0.hasPrefix("        ") }.map {
            $0.trimmingCharacters(in: .whitespaces)
        }
    }

    /// The flags the OPTIONS section has an entry for.
    var optionFlags: [String] {
        self.tags(in: "OPTIONS").filter { $0.hasPrefix("-") }.flatMap {
            Self.tokens($0).filter { $0.hasPrefix("-") }
        }
    }

    /// One documented config key: its tag (`listen (string, required)`) and its text.
    struct KeyEntry {
        let tag: String
        let body: String
    }

    /// The config keys documented in the section titled `title`, or nil without such a section.
    func keyEntries(in title: String) -> [String: KeyEntry]? {
        let lines = self.section(title)
        guard !lines.isEmpty else { return nil }
        return Self.keyEntries(in: lines)
    }

    /// Entries whose tag names a key and its type: `KEY (string|number|boolean|array|object`.
    static func keyEntries(in lines: [String]) -> [String: KeyEntry] {
        var entries: [String: KeyEntry] = [:]
        var index = 0
        while index < lines.count {
            let line = lines[index]
            index += 1
            guard Self.tags([line]).count == 1 else { continue }
            let tag = line.trimmingCharacters(in: .whitespaces)
            let keys = Self.typedKeys(tag)
            guard !keys.isEmpty else { continue }
            var body: [String] = []
            while index < lines.count, lines[index].isEmpty || lines[index].hasPrefix("        ") {
                body.append(lines[index])
                index += 1
            }
            let text = body.joined(separator: " ").split(separator: " ").joined(separator: " ")
            for key in keys { entries[key] = KeyEntry(tag: tag, body: text) }
        }
        return entries
    }

    /// The words of a tag that are followed by a parenthesised type: `secret (string) or
    /// secretFile (string)` names two keys.
    static func typedKeys(_ tag: String) -> [String] {
        let types = ["string", "number", "boolean", "array", "object"]
        let words = tag.split(separator: " ").map(String.init)
        return words.indices.dropLast().compactMap { index in
            let next = words[index + 1]
            guard next.hasPrefix("("), types.contains(where: { next.dropFirst().hasPrefix($0) }) else { return nil }
            let word = words[index]
            return word.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" } ? word : nil
        }
    }
}
