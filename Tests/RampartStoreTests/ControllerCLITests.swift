import Foundation
import RampartCore
import RampartStore
import Testing

/// The `rampart` executable built beside the test bundle.
let rampartExecutable: String = {
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let candidate = dir.appendingPathComponent("rampart").path
    if FileManager.default.fileExists(atPath: candidate) { return candidate }
    return dir.deletingLastPathComponent().appendingPathComponent("rampart").path
}()

/// Runs `rampart` with a store and no daemon; returns (status, stdout, stderr).
func rampart(_ args: [String], store: String) throws -> (status: Int32, out: String, err: String) {
    try rampart(args, store: store, background: true).finish()
}

/// A `rampart` run in progress.
struct RampartRun {
    let process: Process
    let out: Pipe, err: Pipe
    /// Waits for it; returns (status, stdout, stderr).
    func finish() throws -> (status: Int32, out: String, err: String) {
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }
}

/// Starts `rampart` with a store and no daemon (`--no-deliver`: a SQLite store's deliveries are
/// only printed; a PostgreSQL store's change log delivers anyway).
func rampart(_ args: [String], store: String, background: Bool) throws -> RampartRun {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: rampartExecutable)
    p.arguments = args + ["--store", store] + (["export", "changelog"].contains(args.first) ? [] : ["--no-deliver"])
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    return RampartRun(process: p, out: out, err: err)
}

/// The controller verbs build typed rules and instances from their options (no JSON text) and
/// name the option in every error; exit 1 when refused, 0 when done.
@Suite("rampart controller verbs: options to typed values", .scratchDirectory) struct ControllerCLITests {
    @Test func ruleOptionsBecomeTheStoredRule() throws {
        let store = tempStorePath()
        #expect(try rampart(["group", "create", "web"], store: store).status == 0)
        #expect(try rampart(["group", "create", "admin"], store: store).status == 0)
        let ok = try rampart(["group", "authorize", "web", "--protocol", "tcp", "--ports", "80-81", "--cidr", "10.0.0.0/8", "--id", "http"], store: store)
        #expect(ok.status == 0, "\(ok.err)")
        #expect(try rampart(["group", "authorize", "web", "--protocol", "47", "--group", "admin", "--direction", "egress"], store: store).status == 0)
        let st = try SQLiteStore(path: store, create: false)
        #expect(try st.group("web")?.rules == [
            Rule(id: "http", proto: .tcp, ports: 80...81, remote: .cidr(.v4(IPv4Prefix(address: IPv4Address("10.0.0.0")!, length: 8)))),
            Rule(direction: .egress, proto: .number(47), remote: .group("admin")),
        ])
        // Revoked by content (the id is not part of it) and by id alone.
        #expect(try rampart(["group", "revoke", "web", "--protocol", "47", "--group", "admin", "--direction", "egress"], store: store).status == 0)
        #expect(try rampart(["group", "revoke", "web", "--id", "http"], store: store).status == 0)
        #expect(try st.group("web")?.rules == [])
    }

    @Test func badRuleOptionsAreNamedAndChangeNothing() throws {
        let store = tempStorePath()
        #expect(try rampart(["group", "create", "web"], store: store).status == 0)
        let bad = try rampart(["group", "authorize", "web", "--protocol", "icmp", "--ports", "80", "--cidr", "10.0.0.1/8", "--direction", "up"], store: store)
        #expect(bad.status == 1)
        #expect(bad.err == """
            rampart: invalid rule: --cidr: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8
              --direction: "up" is not "ingress" or "egress"
              --ports: not allowed with protocol icmp (only tcp, udp, sctp)

            """)
        let range = try rampart(["group", "authorize", "web", "--protocol", "tcp", "--ports", "70000", "--icmp-code", "300", "--cidr", "::/0"], store: store)
        #expect(range.status == 1)
        #expect(range.err.contains("--ports: 70000 is out of range 1-65535") && range.err.contains("--icmp-code: 300 is out of range 0-255"), "\(range.err)")
        let missing = try rampart(["group", "authorize", "web", "--cidr", "0.0.0.0/0"], store: store)
        #expect(missing.status == 1 && missing.err.contains("--protocol: missing required key"), "\(missing.err)")
        // A remote group that does not exist is the store's refusal (in its transaction).
        let unknown = try rampart(["group", "authorize", "web", "--protocol", "tcp", "--group", "nope"], store: store)
        #expect(unknown.status == 1 && unknown.err.contains("nope"), "\(unknown.err)")
        let badID = try rampart(["group", "create", "bad id"], store: store)
        #expect(badID.status == 1 && badID.err.contains(#"invalid group id: "bad id" is not a valid id"#), "\(badID.err)")
        #expect(try SQLiteStore(path: store, create: false).group("web")?.rules == [])
    }

    @Test func instanceOptionsAreCheckedOptionByOption() throws {
        let store = tempStorePath()
        #expect(try rampart(["group", "create", "web"], store: store).status == 0)
        let bad = try rampart(["instance", "add", "x y", "--host", "hv1", "--ip", "127.0.0.1", "--ip", "nope", "--mac", "zz",
                               "--interface", "lo", "--group", "web"], store: store)
        #expect(bad.status == 1)
        for part in [#"the instance id: "x y" is not a valid id"#, "--interface: \"lo\" is not a valid interface name",
                     "--ip: 127.0.0.1 is a loopback address", #"--ip: "nope" is not an IPv4 or IPv6 address"#,
                     #"--mac: "zz" is not a MAC address"#] {
            #expect(bad.err.contains(part), "\(part) in \(bad.err)")
        }
        #expect(!bad.err.contains("needs at least one address"), "\(bad.err)")
        let none = try rampart(["instance", "add", "a", "--host", "hv1", "--interface", "tapa"], store: store)
        #expect(none.status == 1 && none.err.contains("--ip: needs at least one address"), "\(none.err)")
        let ok = try rampart(["instance", "add", "web-1", "--host", "hv1", "--ip", "10.0.0.5", "--ip", "fd00::5", "--mac", "02:00:00:00:00:05",
                              "--interface", "tapweb1", "--group", "web"], store: store)
        #expect(ok.status == 0, "\(ok.err)")
        #expect(try SQLiteStore(path: store, create: false).instance("web-1")
            == Instance(host: "hv1", groups: ["web"], ips: [IPAddress("10.0.0.5")!, IPAddress("fd00::5")!], interface: "tapweb1",
                        mac: MACAddress("02:00:00:00:00:05")))
    }

    @Test func exportIsTheOneWritersJSON() throws {
        let store = tempStorePath()
        #expect(try rampart(["group", "create", "web"], store: store).status == 0)
        #expect(try rampart(["group", "authorize", "web", "--protocol", "tcp", "--ports", "80", "--cidr", "10.0.0.0/8"], store: store).status == 0)
        #expect(try rampart(["instance", "add", "web-1", "--host", "hv1", "--ip", "10.0.0.5", "--interface", "tapweb1", "--group", "web"], store: store).status == 0)
        let out = try rampart(["export", "--host", "hv1"], store: store)
        #expect(out.status == 0, "\(out.err)")
        let doc = try SQLiteStore(path: store, create: false).exportDocument(forHost: "hv1")
        #expect(out.out == doc.jsonText() + "\n")
        #expect(out.out.hasPrefix(#"{"groups":{"web":{"rules":[{"cidr":"10.0.0.0/8","direction":"ingress","ports":"80","protocol":"tcp"}]}}"#))
        #expect(try Document.parse(json: out.out) == doc)
    }
}
