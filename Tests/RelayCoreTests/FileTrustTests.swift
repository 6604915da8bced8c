import Foundation
import RelayAgent
import RelayCore
import RelayProxy
import Testing

/// Who may write a config and read a secret file (FileTrust), on both daemons' loaders.
@Suite struct FileTrustTests {
    static let uid: uid_t = 999
    static let gid: gid_t = 999

    func problem(_ kind: FileTrust.Kind, _ mode: mode_t, owner: uid_t = 0, group: gid_t = 0) -> String? {
        FileTrust.problem(
            kind, path: "/etc/relay/f", mode: mode, owner: owner, group: group, uid: Self.uid, gid: Self.gid)
    }

    @Test func theRuleOnModesAndOwners() {
        // What the Debian packages install: root:relay 0640, the daemon in group relay.
        #expect(self.problem(.config, 0o100640, group: Self.gid) == nil)
        #expect(self.problem(.secret, 0o100640, group: Self.gid) == nil)
        #expect(self.problem(.config, 0o100600, owner: Self.uid) == nil)
        #expect(self.problem(.config, 0o100644) == nil)
        #expect(
            self.problem(.config, 0o100664)
                == "config file /etc/relay/f is writable by group or others (mode 0664); run: chmod 640 /etc/relay/f")
        #expect(self.problem(.config, 0o100646)?.contains("(mode 0646); run: chmod 640") == true)
        #expect(
            self.problem(.secret, 0o100644)
                == "secret file /etc/relay/f is accessible by others (mode 0644); run: chmod 600 /etc/relay/f")
        #expect(self.problem(.secret, 0o100660, group: Self.gid)?.contains("writable by its group (mode 0660)") == true)
        #expect(
            self.problem(.secret, 0o100640, group: 50)
                == "secret file /etc/relay/f is readable by group 50, not the daemon's group 999 (mode 0640); run: chmod 600 /etc/relay/f"
        )
        #expect(
            self.problem(.config, 0o100600, owner: 1000)
                == "config file /etc/relay/f is owned by uid 1000, neither root nor the daemon's user (uid 999): that user could change it; run: chown root /etc/relay/f"
        )
        #expect(self.problem(.secret, 0o100600, owner: 1000)?.contains("owned by uid 1000") == true)
    }

    /// A config file `mode`, loaded by the proxy's and the agent's loaders: the one-line error.
    func loadErrors(configMode: mode_t, secretMode: mode_t = 0o600, secretGroup: gid_t? = nil, owner: uid_t? = nil)
        throws -> [String]
    {
        let dir = try TempDir()
        let secret = try dir.write("office.secret", "correct horse battery staple")
        chmod(secret, secretMode)
        if let secretGroup { chown(secret, uid_t.max, secretGroup) }
        let proxy = try dir.write(
            "proxy.json",
            #"{"listen": "127.0.0.1:0", "agents": [{"id": "office", "secretFile": "office.secret"}], "services": []}"#)
        let agent = try dir.write(
            "agent.json", #"{"relay": "127.0.0.1:7835", "id": "office", "secretFile": "office.secret", "services": []}"#
        )
        var errors: [String] = []
        for path in [proxy, agent] {
            chmod(path, configMode)
            if let owner { chown(path, owner, gid_t.max) }
        }
        do { _ = try ProxyConfig.load(path: proxy) } catch { errors.append(error.description) }
        do { _ = try AgentConfig.load(path: agent) } catch { errors.append(error.description) }
        return errors.map { $0.replacingOccurrences(of: dir.path, with: "DIR") }
    }

    @Test func bothLoadersRefuseAWritableConfig() throws {
        #expect(try self.loadErrors(configMode: 0o600).isEmpty)
        #expect(try self.loadErrors(configMode: 0o640).isEmpty)
        #expect(
            try self.loadErrors(configMode: 0o666) == [
                "DIR/proxy.json: $: config file DIR/proxy.json is writable by group or others (mode 0666); run: chmod 640 DIR/proxy.json",
                "DIR/agent.json: $: config file DIR/agent.json is writable by group or others (mode 0666); run: chmod 640 DIR/agent.json",
            ])
        #expect(try self.loadErrors(configMode: 0o620).count == 2)
    }

    @Test func bothLoadersRefuseAReadableSecretFile() throws {
        #expect(
            try self.loadErrors(configMode: 0o600, secretMode: 0o644) == [
                "DIR/proxy.json: $.agents[0].secretFile: secret file DIR/office.secret is accessible by others (mode 0644); run: chmod 600 DIR/office.secret",
                "DIR/agent.json: $.secretFile: secret file DIR/office.secret is accessible by others (mode 0644); run: chmod 600 DIR/office.secret",
            ])
        // Group-readable: only by the daemon's own group.
        #expect(try self.loadErrors(configMode: 0o600, secretMode: 0o640, secretGroup: getegid()).isEmpty)
        let foreign = try self.loadErrors(configMode: 0o600, secretMode: 0o640, secretGroup: getegid() + 4321)
        #expect(foreign.count == 2 && foreign.allSatisfy { $0.contains("is readable by group \(getegid() + 4321)") })
    }

    @Test(.enabled(if: geteuid() == 0, "chown needs root"))
    func bothLoadersRefuseAConfigOfAnotherUser() throws {
        let errors = try self.loadErrors(configMode: 0o600, owner: 4321)
        #expect(errors.count == 2 && errors.allSatisfy { $0.contains("is owned by uid 4321, neither root nor") })
    }

    @Test func devicesAndFIFOsAreNotRead() throws {
        let dir = try TempDir()
        let fifo = dir.file("fifo.secret")
        #expect(mkfifo(fifo, 0o600) == 0)
        let reader = ConfigReader(baseDirectory: dir.path)
        #expect(reader.secret(["secretFile": .string("fifo.secret")], at: "$.a") == nil)
        #expect(reader.secret(["secretFile": .string("/dev/zero")], at: "$.b") == nil)
        #expect(
            reader.problems.map(\.description) == [
                "$.a.secretFile: cannot read '\(fifo)': not a regular file",
                "$.b.secretFile: cannot read '/dev/zero': not a regular file",
            ])
    }
}
