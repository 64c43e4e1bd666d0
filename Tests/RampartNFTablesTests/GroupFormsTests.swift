import Foundation
import Testing
import RampartCore
import RampartHarness
@testable import RampartNFTables
import RampartNetlink
import RampartTestSupport

/// Group chains only where they are needed (`GroupForm`): a group whose rules of a direction
/// accept all of a family has no chain of its own (its element jumps to a shared chain), a group
/// without rules in a direction has neither chain nor element, and a change of form is sent as
/// the chain and element it needs, read back as the IR after every step.
@Suite("Group forms") struct GroupFormsTests {
    static func prefix(_ text: String) -> IPPrefix {
        guard case .ok(let p) = IPPrefix.parse(text) else { fatalError(text) }
        return p
    }

    static let all4 = Rule(id: "all4", direction: .egress, proto: .any, remote: .cidr(prefix("0.0.0.0/0")))
    static let all6 = Rule(id: "all6", direction: .egress, proto: .any, remote: .cidr(prefix("::/0")))
    static let https = Rule(id: "https", direction: .egress, proto: .tcp, ports: 443...443, remote: .cidr(prefix("0.0.0.0/0")))

    /// Chains and groups-out elements of the table.
    static func layout(_ client: some NFTablesClient) throws -> (chains: Set<String>, out: [String: NFTVerdict]) {
        let snap = try #require(try client.readTable(family: .inet, name: "rampart"))
        var out: [String: NFTVerdict] = [:]
        for e in snap.elements[Slots.Direction.out.groupsMap] ?? [] { if let g = e.comment, let v = e.verdict { out[g] = v } }
        return (Set(snap.chains.map(\.name)), out)
    }

    static func forms(client: some NFTablesClient) throws {
        let backend = NFTablesBackend(client: client, layout: .slots)
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        func check(_ step: String) throws {
            #expect(try NFTablesBackend(client: client, layout: .slots).readBack(reference: engine.planned) == engine.planned, "\(step)")
            #expect(try NFTablesBackend(client: client, layout: .slots).converge(to: engine.planned).isEmpty, "\(step)")
        }
        // The example: web's egress accepts all of IPv4 (db's is a rule of its own).
        var t = try layout(client)
        #expect(!t.chains.contains("gout-web") && t.chains.isSuperset(of: ["all-ipv4-out", "gin-web", "gout-db"]))
        #expect(t.out["web"] == .jump("all-ipv4-out") && t.out["db"] == .jump("gout-db"))
        try check("example")

        let ingress = exampleDocument.groups["web"]!.rules.filter { $0.direction == .ingress }
        // Own chain: a rule that is not "all of a family".
        var change = try backend.commit(try engine.rulesChanged(group: "web", rules: ingress + [Self.all4, Self.https]), result: engine.planned)
        #expect(change.summary.contains("chains: 1 created") && change.summary.contains(", 0 deleted"), "\(change.summary)")
        t = try layout(client)
        #expect(t.chains.contains("gout-web") && t.out["web"] == .jump("gout-web"))
        try check("own")
        // Back to shared, now both families: the own chain goes, after its element.
        change = try backend.commit(try engine.rulesChanged(group: "web", rules: ingress + [Self.all6, Self.all4]), result: engine.planned)
        // gout-web deleted, all-out created: the summary counts what the kernel gets.
        #expect(change.summary.contains("chains: 1 created") && change.summary.contains(", 1 deleted"), "\(change.summary)")
        t = try layout(client)
        #expect(!t.chains.contains("gout-web") && t.out["web"] == .jump("all-out"))
        try check("shared, both families")
        // No egress rules: no element at all, so web's members' egress meets their next slot.
        try backend.commit(try engine.rulesChanged(group: "web", rules: ingress), result: engine.planned)
        t = try layout(client)
        #expect(!t.chains.contains("gout-web") && t.out["web"] == nil)
        try check("none")
        // And a membership change still touches no chain (every form).
        try backend.commit(try engine.rulesChanged(group: "web", rules: ingress + [Self.all4]), result: engine.planned)
        var bastion = exampleDocument.instances["bastion"]!
        bastion.ips.append(IPAddress("10.0.9.6")!)
        try backend.commit(try engine.membersChanged(group: "admin", added: ["bastion": bastion]), result: engine.planned)
        try check("members")
        // `rampart show` names the shared rule and says its counter is shared.
        let view = EnforcementView(try #require(try client.readTable(family: .inet, name: "rampart")))
        let web = try #require(view.instances.first { $0.instance == "web-1" }?.groups.first { $0.group == "web" })
        let egress = web.rules.filter { $0.direction == "egress" }
        #expect(egress.count == 1 && egress[0].comment == "shared: all-ipv4-out" && egress[0].counterSharedByGroups == 1)
    }

    @Test func formsWithTheFake() throws {
        try Self.forms(client: RecordingNFTables())
    }

    @Test(.tags(.kernel), .rootOnly) func formsInTheKernel() throws {
        let ns = try TestNamespace(prefix: "gform")
        try Self.forms(client: try NFTablesConnection(namespace: .named(ns.name)))
    }

    /// A shared chain that is not exactly what Rampart writes, or an element that jumps to one of
    /// another direction, makes the read-back rebuild the table (keys kept); a shared element
    /// removed is put back.
    @Test func aTamperedSharedChainRebuildsTheTable() throws {
        let fake = RecordingNFTables()
        let desired = Compiler.compile(exampleDocument)
        try NFTablesBackend(client: fake, layout: .slots).converge(to: desired)
        fake.mutateTable(family: .inet, name: "rampart") { t in
            t.rules["all-ipv4-out"] = [NFTRule(family: .inet, table: "rampart", chain: "all-ipv4-out", expressions: [.verdict(.accept)])]
        }
        #expect(try NFTablesBackend(client: fake, layout: .slots).converge(to: desired).summary.hasPrefix("table rebuilt"))
        #expect(try NFTablesBackend(client: fake, layout: .slots).converge(to: desired).isEmpty)
        fake.mutateTable(family: .inet, name: "rampart") { t in
            t.elements[Slots.Direction.out.groupsMap] = t.elements[Slots.Direction.out.groupsMap]!.map { e in
                var x = e
                if e.comment == "web" { x.verdict = .jump("all-in") }
                return x
            }
        }
        #expect(try NFTablesBackend(client: fake, layout: .slots).converge(to: desired).summary.hasPrefix("table rebuilt"))
        #expect(try NFTablesBackend(client: fake, layout: .slots).converge(to: desired).isEmpty)
        // A shared element removed by hand: web's members' egress would meet the next slot
        // (and the end's drop); the repair puts the element back, nothing else.
        fake.mutateTable(family: .inet, name: "rampart") { t in
            t.elements[Slots.Direction.out.groupsMap]!.removeAll { $0.comment == "web" }
        }
        let repair = try NFTablesBackend(client: fake, layout: .slots).converge(to: desired)
        #expect(!repair.isEmpty && !repair.summary.hasPrefix("table rebuilt"), "\(repair.summary)")
        #expect(try Self.layout(fake).out["web"] == .jump("all-ipv4-out"))
        #expect(try NFTablesBackend(client: fake, layout: .slots).converge(to: desired).isEmpty)
    }
}
