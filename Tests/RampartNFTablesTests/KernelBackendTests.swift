import Foundation
import Testing
import RampartCore
import RampartHarness
@testable import RampartNFTables
import RampartNetlink

/// The backend and the CLI against the kernel, in throwaway namespaces (no traffic here; the
/// traffic tests are in TrafficTests).
@Suite("Backend and CLI against the kernel", .tags(.kernel), .rootOnly) struct KernelBackendTests {
    /// The `rampart` executable built beside the test bundle.
    static let rampart: String = {
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        var candidate = dir.appendingPathComponent("rampart").path
        if !FileManager.default.fileExists(atPath: candidate) {
            candidate = dir.deletingLastPathComponent().appendingPathComponent("rampart").path
        }
        return candidate
    }()

    static let examplePath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../docs/examples/two-tier.json").standardizedFileURL.path

    func cli(_ ns: TestNamespace, _ args: [String], input: String? = nil) throws -> CommandResult {
        try runCommand([Self.rampart] + args.prefix(1) + ["--netns", ns.name] + args.dropFirst(), input: input)
    }

    @Test func eachApplyIsOneCommitAndReapplyIsNone() throws {
        let ns = try TestNamespace(prefix: "be")
        let nl = try NFTablesConnection(namespace: .named(ns.name))
        let g0 = try nl.generation()
        let first = try cli(ns, ["apply", Self.examplePath])
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stdout.hasPrefix("applied: table created"))
        #expect(try nl.generation() == g0 + 1)
        let second = try cli(ns, ["apply", Self.examplePath])
        #expect(second.status == 0)
        #expect(second.stdout.hasPrefix("no changes"))
        #expect(try nl.generation() == g0 + 1)
        // nft reads it back as a valid ruleset with our comments.
        let listed = try ns.nft("list", "ruleset").stdout
        // A group's members are elements of `members4`/`members6` tagged with its id; a group's
        // rules are elements of the shapes' sets, tagged with its id (and the remote group's),
        // named by their comments; its chain has one rule per shape, which looks the remote
        // group's tag and the address up in `members4`, then the key in the shape's set (nft
        // prints an immediate tag in hex: "web", "db").
        #expect(listed.contains(#""db" . "web" . tcp . 5432 comment "db/pg-from-web""#))
        #expect(listed.contains(#"0x77656200000000000000000000000000 [invalid type] . ip saddr @members4 0x64620000000000000000000000000000 [invalid type] . 0x77656200000000000000000000000000 [invalid type] . meta l4proto . th dport @rules4-in-grp-pp counter packets 0 bytes 0 accept comment "rules from/to group web: elements of @rules4-in-grp-pp""#))
        #expect(listed.contains(#""web" . 10.0.1.11 comment "web""#))
        // The slot layout: instances reach their groups through `inst-groups`, named in comments.
        #expect(listed.contains(#"oifname @inst-ifaces jump dispatch-in"#))
        #expect(listed.contains(#""tapdb1" . 0x00000001 comment "db-1" : 0"#))
    }

    @Test func membershipChangeTouchesNoChain() throws {
        let ns = try TestNamespace(prefix: "be")
        let nl = try NFTablesConnection(namespace: .named(ns.name))
        let backend = NFTablesBackend(client: nl)
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        let before = try #require(try nl.readTable(family: .inet, name: "rampart"))
        var web3 = Instance(host: "hv2", groups: ["web"], ips: [IPAddress("10.0.5.5")!, IPAddress("fd00::55")!])
        web3.interface = nil
        let plan = try engine.membersChanged(group: "web", added: ["web-3": web3])
        let result = try backend.commit(plan, result: engine.planned)
        #expect(result.generation == before.generation + 1)  // one commit
        let after = try #require(try nl.readTable(family: .inet, name: "rampart"))
        // Every rule kept its handle: no chain was flushed or rewritten.
        #expect(after.rules == before.rules)
        #expect(after.elements["members4"]?.filter { $0.comment == "web" }.count == 3)
        #expect(after.elements["members6"]?.filter { $0.comment == "web" }.count == 2)
        #expect(after.elements["members4"]?.count == (before.elements["members4"]?.count ?? 0) + 1)
    }

    @Test func driftIsRepairedAndForeignTablesAreLeftAlone() throws {
        let ns = try TestNamespace(prefix: "be")
        try ns.nft("add", "table", "inet", "foreign")
        try ns.nft("add", "chain", "inet", "foreign", "c", "{ type filter hook forward priority 5; policy accept; }")
        try ns.nft("add", "rule", "inet", "foreign", "c", "tcp", "dport", "9", "drop")
        let foreignBefore = try ns.nft("list", "table", "inet", "foreign").stdout
        #expect(try cli(ns, ["apply", Self.examplePath]).status == 0)
        let clean = try ns.nft("list", "table", "inet", "rampart").stdout

        try ns.nft("flush", "chain", "inet", "rampart", "gin-web")
        try ns.nft("delete", "element", "inet", "rampart", "members4", #"{ "web" . 10.0.1.12 }"#)
        try ns.nft("add", "element", "inet", "rampart", "members4", #"{ "admin" . 192.0.2.1 }"#)
        try ns.nft("add", "rule", "inet", "rampart", "gin-db", "accept")
        try ns.nft("add", "chain", "inet", "rampart", "extra")
        try ns.nft("add", "rule", "inet", "rampart", "extra", "jump", "gin-db")
        // Rules with anonymous sets (nft's `{ … }`): the sets go with their rules; planning to
        // delete them by name would make every apply fail (ENOENT) and the drift permanent.
        try ns.nft("add", "rule", "inet", "rampart", "input", "tcp", "dport", "{ 1, 2 }", "drop")
        try ns.nft("add", "rule", "inet", "rampart", "extra", "udp", "dport", "{ 3, 4 }", "accept")

        let diff = try cli(ns, ["diff", Self.examplePath])
        #expect(diff.stdout.contains("flush chain inet rampart gin-web"))
        #expect(diff.stdout.contains("delete chain inet rampart extra"))
        let repair = try cli(ns, ["apply", Self.examplePath])
        #expect(repair.status == 0, "\(repair.stderr)")
        #expect(try ns.nft("list", "table", "inet", "rampart").stdout == clean)
        #expect(try ns.nft("list", "table", "inet", "foreign").stdout == foreignBefore)
        #expect(try cli(ns, ["diff", Self.examplePath]).stdout.contains("in sync"))

        // A base chain's policy changed by hand: the table is rebuilt, in one transaction.
        try ns.nft("chain", "inet", "rampart", "egress", "{ policy drop; }")
        #expect(try cli(ns, ["diff", Self.examplePath]).stdout.contains("table rebuilt"))
        #expect(try cli(ns, ["apply", Self.examplePath]).status == 0)
        #expect(try ns.nft("list", "table", "inet", "rampart").stdout == clean)
        #expect(try ns.nft("list", "table", "inet", "foreign").stdout == foreignBefore)
    }

    @Test func invalidDocumentChangesNothing() throws {
        let ns = try TestNamespace(prefix: "be")
        #expect(try cli(ns, ["apply", Self.examplePath]).status == 0)
        let before = try ns.nft("list", "ruleset").stdout
        let nl = try NFTablesConnection(namespace: .named(ns.name))
        let g = try nl.generation()
        var text = try String(contentsOfFile: Self.examplePath, encoding: .utf8)
        text = text.replacingOccurrences(of: #""ports": "5432""#, with: #""ports": "70000""#)
        let r = try cli(ns, ["apply", "-"], input: text)
        #expect(r.status == 1)
        #expect(r.stderr.contains("groups.db.rules[0].ports: 70000 is out of range 1-65535"), "\(r.stderr)")
        #expect(try nl.generation() == g)
        #expect(try ns.nft("list", "ruleset").stdout == before)
    }

    /// A table held by another process (owner flag) cannot be changed: the kernel refuses, the
    /// CLI says which operation and errno, exits 2, and nothing changed.
    @Test func kernelRefusalExitsTwoAndChangesNothing() throws {
        let ns = try TestNamespace(prefix: "be")
        let squatter = try NFTablesConnection(namespace: .named(ns.name))
        try squatter.commit(Batch([.addTable(NFTTable(family: .inet, name: "rampart", flags: 0x2))]))
        let before = try ns.nft("list", "ruleset").stdout
        let r = try cli(ns, ["apply", Self.examplePath])
        #expect(r.status == 2, "\(r.stdout) \(r.stderr)")
        #expect(r.stderr.contains("EPERM"), "\(r.stderr)")
        #expect(r.stderr.contains("operation #"), "\(r.stderr)")
        #expect(try ns.nft("list", "ruleset").stdout == before)
        withExtendedLifetime(squatter) {}
    }

    @Test func dryRunChangesNothingAndFlushRemovesOnlyOurTable() throws {
        let ns = try TestNamespace(prefix: "be")
        try ns.nft("add", "table", "ip", "other")
        let dry = try cli(ns, ["apply", "--dry-run", Self.examplePath])
        #expect(dry.status == 0)
        #expect(dry.stdout.contains("add table inet rampart"))
        #expect(dry.stdout.contains("add rule inet rampart gin-db"))
        #expect(!(try ns.nft("list", "tables").stdout.contains("rampart")))
        #expect(try cli(ns, ["apply", Self.examplePath]).status == 0)
        let show = try cli(ns, ["show", "--json"])
        let json = try JSONSerialization.jsonObject(with: Data(show.stdout.utf8)) as? [String: Any]
        let instances = (json?["instances"] as? [[String: Any]])?.map { $0["instance"] as? String }
        #expect(instances == ["db-1", "web-1", "web-2"])
        let flushed = try cli(ns, ["flush"])
        #expect(flushed.status == 0)
        #expect(try ns.nft("list", "tables").stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "table ip other")
    }
}
