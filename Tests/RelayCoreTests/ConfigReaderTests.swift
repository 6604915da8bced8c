import Foundation
import RelayCore
import RelayProtocol
import Testing

@Suite struct ConfigReaderTests {
    static let nameRule = "1 to 64 characters of A-Z a-z 0-9 . _ -"

    func reader(_ dir: String = "/nonexistent") -> ConfigReader { ConfigReader(baseDirectory: dir) }

    // MARK: loading a file

    @Test func loadsAnObject() throws {
        let dir = try TempDir()
        let path = try dir.write("c.json", #"{"a": 1, "b": [true]}"#)
        let (reader, root) = try ConfigReader.load(path: path, package: "relay-proxy")
        #expect(root == ["a": .number(1), "b": .array([.bool(true)])])
        #expect(reader.baseDirectory == dir.path)
        #expect(reader.problems.isEmpty)
    }

    @Test func missingFile() throws {
        let dir = try TempDir()
        let path = dir.file("absent.json")
        #expect(
            problems { () throws(ConfigError) in try ConfigReader.load(path: path, package: "relay-proxy") } == [
                "$: cannot read the file: no such file or directory"
            ])
    }

    @Test func directoryInsteadOfAFile() throws {
        let dir = try TempDir()
        #expect(
            problems { () throws(ConfigError) in try ConfigReader.load(path: dir.path, package: "relay-proxy") } == [
                "$: cannot read the file: is a directory"
            ])
    }

    @Test(arguments: ["", "{", #"{"a":}"#, "listen: 1", #"{"a":1}{"#])
    func notJSON(_ text: String) throws {
        let dir = try TempDir()
        let path = try dir.write("c.json", text)
        let found = problems { () throws(ConfigError) in try ConfigReader.load(path: path, package: "relay-proxy") }
        #expect(found.count == 1)
        #expect(found.first?.hasPrefix("$: not valid JSON: ") == true, "\(found)")
    }

    @Test(arguments: ["[]", "[{}]", #""config""#, "42", "null", "true"])
    func notAnObject(_ text: String) throws {
        let dir = try TempDir()
        let path = try dir.write("c.json", text)
        #expect(
            problems { () throws(ConfigError) in try ConfigReader.load(path: path, package: "relay-proxy") } == [
                "$: must be a JSON object"
            ])
    }

    @Test func errorDescriptionNamesTheFileAndCountsTheRest() {
        let one = ConfigError(file: "/etc/relay/proxy.json", problems: [.init(path: "$.listen", message: "bad")])
        #expect(one.description == "/etc/relay/proxy.json: $.listen: bad")
        let three = ConfigError(
            file: "p.json",
            problems: [
                .init(path: "$.a", message: "x"), .init(path: "$.b", message: "y"), .init(path: "$.c", message: "z"),
            ])
        #expect(three.description == "p.json: $.a: x (and 2 more; run with --check-config)")
    }

    @Test func finishThrowsOnlyWithProblems() throws {
        let reader = self.reader()
        try reader.finish(file: "f")
        reader.problem("$.x", "wrong")
        #expect(throws: (any Error).self) { try reader.finish(file: "f") }
        do {
            try reader.finish(file: "f")
        } catch {
            #expect(error.problems == [ConfigProblem(path: "$.x", message: "wrong")])
            #expect(error.file == "f")
        }
    }

    // MARK: typed readers

    @Test func unknownKeysAreEachReportedInOrder() {
        let reader = self.reader()
        reader.rejectUnknownKeys(
            ["b": .null, "zz": .null, "a": .null, "ok": .null], at: "$.x[0]", allowed: ["ok", "id"])
        #expect(
            reader.problems.map(\.description) == [
                "$.x[0].a: unknown key (allowed: id, ok)",
                "$.x[0].b: unknown key (allowed: id, ok)",
                "$.x[0].zz: unknown key (allowed: id, ok)",
            ])
    }

    @Test func strings() {
        let reader = self.reader()
        let object: [String: JSONValue] = ["s": .string("v"), "n": .number(1), "z": .null]
        #expect(reader.string(object, "s", at: "$") == "v")
        #expect(reader.string(object, "n", at: "$") == nil)
        #expect(reader.string(object, "z", at: "$", required: false) == nil)
        #expect(reader.string(object, "missing", at: "$.o") == nil)
        #expect(reader.string(object, "optional", at: "$", required: false) == nil)
        #expect(
            reader.problems.map(\.description) == [
                "$.n: must be a string, not a number",
                "$.z: must be a string, not null",
                "$.o.missing: required key is missing",
            ])
    }

    @Test func seconds() {
        let reader = self.reader()
        let object: [String: JSONValue] = [
            "ok": .number(2.5), "low": .number(0.01), "high": .number(700), "s": .string("1"),
        ]
        #expect(reader.seconds(object, "ok", at: "$", default: 9, range: 0.05...600) == 2.5)
        #expect(reader.seconds(object, "missing", at: "$", default: 9, range: 0.05...600) == 9)
        #expect(reader.seconds(object, "low", at: "$", default: 9, range: 0.05...600) == 9)
        #expect(reader.seconds(object, "high", at: "$", default: 9, range: 0...600) == 9)
        #expect(reader.seconds(object, "s", at: "$", default: 9, range: 0...600) == 9)
        #expect(
            reader.problems.map(\.description) == [
                "$.low: must be between 0.05 and 600 seconds",
                "$.high: must be between 0 and 600 seconds",
                "$.s: must be a number of seconds, not a string",
            ])
    }

    @Test func objects() {
        let reader = self.reader()
        let object: [String: JSONValue] = [
            "list": .array([.object(["a": .number(1)]), .string("x"), .object([:]), .array([])]),
            "notList": .object([:]),
        ]
        let items = reader.objects(object, "list", at: "$")
        #expect(items.map(\.path) == ["$.list[0]", "$.list[2]"])
        #expect(items.first?.object == ["a": .number(1)])
        #expect(reader.objects(object, "notList", at: "$").isEmpty)
        #expect(reader.objects(object, "missing", at: "$").isEmpty)
        #expect(reader.objects(object, "optional", at: "$", required: false).isEmpty)
        #expect(
            reader.problems.map(\.description) == [
                "$.list[1]: must be an object, not a string",
                "$.list[3]: must be an object, not an array",
                "$.notList: must be an array, not an object",
                "$.missing: required key is missing",
            ])
    }

    @Test func addresses() {
        let reader = self.reader()
        let object: [String: JSONValue] = [
            "good": .string("[::1]:7835"), "zero": .string("0.0.0.0:0"), "bad": .string("nowhere"),
            "num": .number(7835),
        ]
        #expect(reader.address(object, "good", at: "$") == HostPort(host: "::1", port: 7835))
        #expect(reader.address(object, "zero", at: "$") == HostPort(host: "0.0.0.0", port: 0))
        #expect(reader.address(object, "zero", at: "$.t", allowPortZero: false) == nil)
        #expect(reader.address(object, "bad", at: "$") == nil)
        #expect(reader.address(object, "num", at: "$") == nil)
        #expect(
            reader.problems.map(\.description) == [
                "$.t.zero: bad address '0.0.0.0:0': the port must be a number from 1 to 65535",
                "$.bad: bad address 'nowhere': expected HOST:PORT",
                "$.num: must be a string, not a number",
            ])
    }

    @Test func names() {
        let reader = self.reader()
        let object: [String: JSONValue] = [
            "ok": .string("web-1"), "bad": .string("web 1"), "long": .string(String(repeating: "a", count: 65)),
        ]
        #expect(reader.name(object, "ok", at: "$") == "web-1")
        #expect(reader.name(object, "bad", at: "$") == nil)
        #expect(reader.name(object, "long", at: "$") == nil)
        #expect(
            reader.problems.map(\.description) == [
                "$.bad: 'web 1' is not a valid name: use \(Self.nameRule)",
                "$.long: '\(String(repeating: "a", count: 65))' is not a valid name: use \(Self.nameRule)",
            ])
    }

    // MARK: secrets

    @Test func inlineSecret() {
        let reader = self.reader()
        #expect(
            reader.secret(["secret": .string("hunter2-hunter2-hunter2")], at: "$") == Secret("hunter2-hunter2-hunter2"))
        #expect(reader.secret(["secret": .string(" spaced, 16 bytes ")], at: "$") == Secret(" spaced, 16 bytes "))
        #expect(reader.problems.isEmpty)
    }

    /// A secret shorter than 16 bytes is refused wherever it comes from, with the minimum and
    /// how to make a good one; 16 bytes is enough.
    @Test func shortSecretsAreRefusedWithTheMinimumAndARecipe() throws {
        let dir = try TempDir()
        try dir.write("short.secret", "fifteen bytes!!\n")
        try FileManager.default.createDirectory(atPath: dir.file("credentials"), withIntermediateDirectories: true)
        try dir.write("credentials/relay-secret", "only 8 b")
        let reader = ConfigReader(baseDirectory: dir.path)
        reader.credentialsDirectory = dir.file("credentials")
        #expect(reader.secret(["secret": .string("s3cret")], at: "$.a") == nil)
        #expect(reader.secret(["secretFile": .string("short.secret")], at: "$.b") == nil)
        #expect(reader.secret(["secretCredential": .string("relay-secret")], at: "$.c") == nil)
        #expect(reader.secret(["secret": .string("sixteen bytes!!!")], at: "$.d") == Secret("sixteen bytes!!!"))
        let recipe = "shorter than the minimum of 16; make one with: openssl rand -base64 32"
        #expect(
            reader.problems.map(\.description) == [
                "$.a.secret: the secret is 6 bytes, \(recipe)",
                "$.b.secretFile: the secret is 15 bytes, \(recipe)",
                "$.c.secretCredential: the secret is 8 bytes, \(recipe)",
            ])
    }

    /// `secretCredential` reads `$CREDENTIALS_DIRECTORY/NAME` (systemd's LoadCredential=).
    @Test func secretFromASystemdCredential() throws {
        let dir = try TempDir()
        try FileManager.default.createDirectory(atPath: dir.file("credentials"), withIntermediateDirectories: true)
        try dir.write("credentials/relay-secret", "  correct horse battery staple\n")
        let reader = ConfigReader(baseDirectory: "/nonexistent")
        reader.credentialsDirectory = dir.file("credentials")
        #expect(
            reader.secret(["secretCredential": .string("relay-secret")], at: "$")
                == Secret("correct horse battery staple"))
        #expect(reader.secret(["secretCredential": .string("absent")], at: "$.x") == nil)
        #expect(reader.secret(["secretCredential": .string("../etc/passwd")], at: "$.y") == nil)
        #expect(
            reader.secret(
                ["secretCredential": .string("relay-secret"), "secret": .string("0123456789abcdef")], at: "$.z")
                == nil)
        reader.credentialsDirectory = nil
        #expect(reader.secret(["secretCredential": .string("relay-secret")], at: "$.w") == nil)
        #expect(
            reader.problems.map(\.description) == [
                "$.x.secretCredential: cannot read '\(dir.file("credentials/absent"))': no such file or directory",
                "$.y.secretCredential: must be a credential name (\(Names.rule))",
                "$.z.secretCredential: give only one of 'secret', 'secretFile' and 'secretCredential', not secret and secretCredential",
                "$.w.secretCredential: $CREDENTIALS_DIRECTORY is not set: give the daemon the credential with systemd's LoadCredential=relay-secret:PATH",
            ])
    }

    @Test func secretProblems() {
        let reader = self.reader()
        #expect(reader.secret([:], at: "$.agents[0]") == nil)
        #expect(reader.secret(["secret": .string("")], at: "$.agents[1]") == nil)
        #expect(reader.secret(["secret": .string("a"), "secretFile": .string("/f")], at: "$.agents[2]") == nil)
        #expect(reader.secret(["secret": .number(1)], at: "$.agents[3]") == nil)
        #expect(reader.secret(["secretFile": .bool(true)], at: "$.agents[4]") == nil)
        #expect(
            reader.problems.map(\.description) == [
                "$.agents[0].secret: required key is missing (give 'secret', 'secretFile' or 'secretCredential')",
                "$.agents[1].secret: the secret is empty",
                "$.agents[2].secretFile: give only one of 'secret', 'secretFile' and 'secretCredential', not secret and secretFile",
                "$.agents[3].secret: must be a string, not a number",
                "$.agents[4].secretFile: must be a string, not a boolean",
            ])
    }

    @Test func secretFileRelativeToTheConfigDirectory() throws {
        let dir = try TempDir()
        try dir.write("office.secret", "  correct horse battery staple \n\n")
        let reader = ConfigReader(baseDirectory: dir.path)
        #expect(
            reader.secret(["secretFile": .string("office.secret")], at: "$") == Secret("correct horse battery staple"))
        #expect(reader.problems.isEmpty)
    }

    @Test func secretFileByAbsolutePath() throws {
        let dir = try TempDir()
        let path = try dir.write("office.secret", "s3cret-s3cret-s3cret")
        let reader = ConfigReader(baseDirectory: "/nonexistent")
        #expect(reader.secret(["secretFile": .string(path)], at: "$") == Secret("s3cret-s3cret-s3cret"))
        #expect(reader.problems.isEmpty)
    }

    @Test func secretFileMissingOrEmpty() throws {
        let dir = try TempDir()
        try dir.write("empty.secret", " \n\t\n")
        let reader = ConfigReader(baseDirectory: dir.path)
        #expect(reader.secret(["secretFile": .string("missing.secret")], at: "$.a") == nil)
        #expect(reader.secret(["secretFile": .string("empty.secret")], at: "$.b") == nil)
        #expect(
            reader.problems.map(\.description) == [
                "$.a.secretFile: cannot read '\(dir.file("missing.secret"))': no such file or directory",
                "$.b.secretFile: '\(dir.file("empty.secret"))' is empty",
            ])
    }

    @Test func readFileReadsLargeFilesWhole() throws {
        let dir = try TempDir()
        let text = String(repeating: "0123456789abcdef", count: 20_000)  // several read() chunks
        let path = try dir.write("big", text)
        let data = try ConfigReader.readFile(path).get()
        #expect(String(decoding: data, as: UTF8.self) == text)
    }
}
