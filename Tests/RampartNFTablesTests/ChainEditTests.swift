import Foundation
import Testing
import RampartCore
import RampartHarness
@testable import RampartNFTables
import RampartNetlink
import RampartTestSupport
import RampartCoreTestSupport

/// A group chain's rewrite sent as the rules that differ (`ChainEdit`): a revoked rule is one
/// rule deleted by handle (no table validation at commit), an added one is inserted in its
/// place, and the other rules keep their handles and counters.
@Suite("Group chains edited rule by rule") struct ChainEditTests {
    /// A rule that stands for `label` (its comment), with a handle when held by the kernel.
    static func rule(_ label: String, handle: UInt64? = nil) -> NFTRule {
        NFTRule(family: .inet, table: "rampart", chain: "gin-g", expressions: [.counter(packets: 9, bytes: 99), .verdict(.accept)],
                comment: label, handle: handle)
    }

    /// What the kernel does with the edit's operations, on a list of labels with handles.
    static func applied(_ ops: [BatchOperation], to held: [NFTRule]) throws -> [String] {
        var list = held.map { ($0.comment!, $0.handle) }
        for op in ops {
            switch op {
            case .deleteRule(_, _, _, let h):
                let i = try #require(list.firstIndex { $0.1 == h }, "delete of an unknown handle \(h)")
                list.remove(at: i)
            case .insertRule(let r, let before):
                let i = try #require(list.firstIndex { $0.1 == before }, "insert before an unknown handle \(before)")
                list.insert((r.comment!, nil), at: i)
            case .addRule(let r):
                list.append((r.comment!, nil))
            default:
                Issue.record("unexpected operation \(op)")
            }
        }
        return list.map(\.0)
    }

    @Test func randomEditsLeadToTheWantedChainKeepingTheLongestCommonRun() throws {
        var rng = SplitMix64(state: 0x15)
        for round in 0..<2_000 {
            let labels = (0..<8).map { "r\($0)" }
            let held = (0..<Int.random(in: 0...8, using: &rng)).map { i in Self.rule(labels.randomElement(using: &rng)!, handle: UInt64(100 + i)) }
            let wanted = (0..<Int.random(in: 0...8, using: &rng)).map { _ in Self.rule(labels.randomElement(using: &rng)!) }
            guard let edit = ChainEdit.between(held: held, wanted: wanted) else {
                // Nothing in common (or an empty side): the chain is rewritten whole.
                let common = Set(held.map { $0.comment }).intersection(wanted.map { $0.comment })
                #expect(held.isEmpty || wanted.isEmpty || common.isEmpty, "round \(round)")
                continue
            }
            let ops = edit.operations(wanted: wanted)
            #expect(try Self.applied(ops, to: held) == wanted.map { $0.comment! }, "round \(round)")
            // Only what differs moves: kept = held − deleted = wanted − inserted, and kept is the
            // longest run the two have in common.
            let kept = held.count - edit.deletions.count
            #expect(kept == wanted.count - edit.insertions.count, "round \(round)")
            #expect(kept == Self.lcs(held.map { $0.comment! }, wanted.map { $0.comment! }), "round \(round)")
        }
    }

    static func lcs(_ a: [String], _ b: [String]) -> Int {
        var t = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
        for i in a.indices { for j in b.indices { t[i + 1][j + 1] = a[i] == b[j] ? t[i][j] + 1 : max(t[i][j + 1], t[i + 1][j]) } }
        return t[a.count][b.count]
    }

    @Test func aRuleWithoutHandleOrNothingInCommonIsARewrite() {
        #expect(ChainEdit.between(held: [Self.rule("a")], wanted: [Self.rule("a")]) == nil)
        #expect(ChainEdit.between(held: [Self.rule("a", handle: 1)], wanted: [Self.rule("b")]) == nil)
        #expect(ChainEdit.between(held: [], wanted: [Self.rule("b")]) == nil)
        // Counter values do not make two rules differ.
        var fresh = Self.rule("a")
        fresh.expressions[0] = .counter(packets: 0, bytes: 0)
        #expect(ChainEdit.between(held: [Self.rule("a", handle: 1)], wanted: [fresh]) == ChainEdit())
    }

    @Test func aChainOnlyAppendedToCountsAsEditedAndAFlushedOneDoesNot() {
        let r = Self.rule("a")
        var other = r
        other.chain = "gout-g"
        let batch = Batch([.addRule(r), .flushChain(family: .inet, table: "rampart", name: "gout-g"), .addRule(other), .addRule(other),
                           .deleteRule(family: .inet, table: "rampart", chain: "gin-h", handle: 7)])
        let counts = SlotRender.EditedChains(batch).counts
        #expect(counts.keys.sorted() == ["gin-g", "gin-h"])
        #expect(counts["gin-g"]! == (1, 0) && counts["gin-h"]! == (0, 1))
    }

    /// Records every batch sent through a real connection.
    final class Tap: NFTablesClient {
        let inner: NFTablesConnection
        var batches: [Batch] = []
        init(_ inner: NFTablesConnection) { self.inner = inner }
        func generation() throws(NetlinkError) -> UInt32 { try inner.generation() }
        func commit(_ batch: Batch, expectedGeneration: UInt32?) throws(NetlinkError) -> CommitResult {
            batches.append(batch)
            return try inner.commit(batch, expectedGeneration: expectedGeneration)
        }
        func readTable(family: NFTFamily, name: String) throws(NetlinkError) -> TableSnapshot? { try inner.readTable(family: family, name: name) }
        /// Makes every `readRules` fail, as a broken dump would.
        var failRuleReads = false
        func readRules(family: NFTFamily, table: String, chain: String) throws(NetlinkError) -> [NFTRule]? {
            if failRuleReads { throw .protocolError("injected rule-read failure") }
            return try inner.readRules(family: family, table: table, chain: chain)
        }
    }

    /// The chain's rules as (comment, handle), in order.
    static func handles(_ nl: NFTablesConnection, _ chain: String) throws -> [Held] {
        try #require(try nl.readRules(family: .inet, table: "rampart", chain: chain)).map { Held(comment: $0.comment ?? "?", handle: $0.handle!) }
    }
    struct Held: Equatable { var comment: String; var handle: UInt64 }

    static func counter(_ nl: NFTablesConnection, _ chain: String, comment: String) throws -> (packets: UInt64, bytes: UInt64) {
        let rules = try #require(try nl.readRules(family: .inet, table: "rampart", chain: chain))
        let r = try #require(rules.first { $0.comment == comment }, "no rule \(comment) in \(chain): \(rules.map(\.comment))")
        for e in r.expressions { if case .counter(let p, let b) = e { return (p, b) } }
        throw HarnessError("rule \(comment) has no counter")
    }

    /// A backend that keeps group chains' rules as rules (`groupRulesAsElements` off): what
    /// these tests exercise is the rule-by-rule edit, which the default encoding uses only when
    /// a chain's shape rules change (RuleShapesTests covers that encoding).
    static func plain(_ client: some NFTablesClient) -> NFTablesBackend {
        let b = NFTablesBackend(client: client, layout: .slots)
        b.groupRulesAsElements = false
        return b
    }

    /// A namespace holding the example document's table, committed through a `Tap`.
    static func exampleTable(_ prefix: String) throws -> (TestNamespace, NFTablesConnection, Tap, NFTablesBackend, Engine) {
        let ns = try TestNamespace(prefix: prefix)
        let nl = try NFTablesConnection(namespace: .named(ns.name))
        let tap = Tap(nl)
        let backend = Self.plain(tap)
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        return (ns, nl, tap, backend, engine)
    }

    @Test(.tags(.kernel), .rootOnly) func aRevokeDeletesOneRuleAndTheOthersKeepHandlesAndCounters() throws {
        var (ns, nl, tap, backend, engine) = try Self.exampleTable("cedit")
        let before = try Self.handles(nl, "gin-web")
        // A kept rule with a non-zero counter, which the edit must leave as it is: a SYN from the
        // namespace to web-1:80 leaves through web-1's interface (one end of a veth pair here), so the output
        // hook offers it to web's chain, whose `http` rule counts and accepts it.
        try ns.run(["ip", "link", "add", "tapweb1", "type", "veth", "peer", "name", "web1peer"], check: true)
        try ns.run(["ip", "link", "set", "tapweb1", "up"], check: true)
        try ns.run(["ip", "link", "set", "web1peer", "up"], check: true)
        try ns.run(["ip", "route", "add", "10.0.1.11/32", "dev", "tapweb1"], check: true)
        try ns.run(["ip", "neigh", "add", "10.0.1.11", "lladdr", "02:00:00:00:01:11", "dev", "tapweb1"], check: true)
        try ns.run(["nc", "-z", "-w", "1", "10.0.1.11", "80"])
        let counted = try Self.counter(nl, "gin-web", comment: "web/http")
        #expect(counted.packets >= 1)
        let webRules = engine.document.groups["web"]!.rules
        let revoked = webRules.filter { $0.id != "ssh-from-admin" }
        let change = try backend.commit(try engine.rulesChanged(group: "web", rules: revoked), result: engine.planned)
        // ssh-from-admin is one kernel rule per family of admin's members (IPv4 and IPv6).
        let gone = before.filter { $0.comment == "web/ssh-from-admin" }
        #expect(gone.count == 2)
        let sent = try #require(tap.batches.last).operations
        #expect(sent == gone.map { .deleteRule(family: .inet, table: "rampart", chain: "gin-web", handle: $0.handle) }, "sent \(sent)")
        #expect(change.summary.contains("1 rewritten (0 rules written, 2 deleted)"), "\(change.summary)")
        var after = try Self.handles(nl, "gin-web")
        #expect(after == before.filter { $0.comment != "web/ssh-from-admin" })
        #expect(try Self.counter(nl, "gin-web", comment: "web/http") == counted, "the kept rule's counter")
        #expect(try Self.plain(nl).readBack(reference: engine.planned) == engine.planned)

        // Given back: the two rules inserted where the IR has them, the others untouched.
        try backend.commit(try engine.rulesChanged(group: "web", rules: webRules), result: engine.planned)
        let sent2 = try #require(tap.batches.last).operations
        #expect(sent2.count == 2)
        for op in sent2 {
            switch op {
            case .insertRule(let r, _), .addRule(let r): #expect(r.chain == "gin-web" && r.comment == "web/ssh-from-admin")
            default: Issue.record("sent \(op)")
            }
        }
        after = try Self.handles(nl, "gin-web")
        #expect(after.map(\.comment) == before.map(\.comment))
        #expect(after.filter { $0.comment != "web/ssh-from-admin" } == before.filter { $0.comment != "web/ssh-from-admin" })
        #expect(try Self.plain(nl).readBack(reference: engine.planned) == engine.planned)
        #expect(try Self.counter(nl, "gin-web", comment: "web/http") == counted, "the kept rule's counter")
    }

    /// Random rule lists for web (rules added, removed, changed anywhere in the list, from a
    /// CIDR or a group, both directions): after each change the table reads back as the IR,
    /// and a chain that kept any rule was edited, not flushed.
    @Test(.tags(.kernel), .rootOnly) func randomRuleChangesReadBackAsTheirIR() throws {
        var (ns, nl, tap, backend, engine) = try Self.exampleTable("cedr")
        defer { withExtendedLifetime(ns) {} }  // the namespace lives as long as the test
        let seed = UInt64.random(in: 0...UInt64.max)
        var rng = SplitMix64(state: seed)
        func randomRule(_ n: Int) -> Rule {
            let remote: Remote = Bool.random(using: &rng) ? .group(["admin", "db", "web"].randomElement(using: &rng)!)
                : .cidr(.v4(IPv4Prefix(address: IPv4Address("10.\(Int.random(in: 0..<4, using: &rng)).0.0")!, length: 16)))
            let port = UInt16.random(in: 1...4, using: &rng) * 1000
            return Rule(id: "r\(n)", direction: Bool.random(using: &rng) ? .ingress : .egress, proto: .tcp,
                        ports: port...port, remote: remote)
        }
        var rules = engine.document.groups["web"]!.rules
        var edited = 0
        for step in 0..<40 {
            switch Int.random(in: 0..<3, using: &rng) {
            case 0: rules.insert(randomRule(step), at: Int.random(in: 0...rules.count, using: &rng))
            case 1 where rules.count > 1: rules.remove(at: Int.random(in: 0..<rules.count, using: &rng))
            default:
                let i = Int.random(in: 0..<rules.count, using: &rng)
                var r = randomRule(step)
                r.id = rules[i].id
                rules[i] = r
            }
            try backend.commit(try engine.rulesChanged(group: "web", rules: rules), result: engine.planned)
            let sent = try #require(tap.batches.last).operations
            if sent.contains(where: { if case .deleteRule = $0 { true } else if case .insertRule = $0 { true } else { false } }) { edited += 1 }
            let flushed = Set(sent.compactMap { if case .flushChain(_, _, let n) = $0 { n } else { nil } })
            let editedChains = Set(sent.compactMap { op -> String? in
                switch op {
                case .deleteRule(_, _, let c, _): c
                case .insertRule(let r, _): r.chain
                default: nil
                }
            })
            #expect(flushed.isDisjoint(with: editedChains), "seed \(seed) step \(step): \(flushed.intersection(editedChains)) flushed and edited at once")
            #expect(try Self.plain(nl).readBack(reference: engine.planned) == engine.planned,
                    "seed \(seed) step \(step)")
            #expect(engine.planned == Compiler.compile(engine.document), "seed \(seed) step \(step)")
        }
        #expect(edited > 10, "seed \(seed): only \(edited) of 40 changes were edits")
    }

    /// A chain whose rules cannot be read is rewritten whole: the commit still goes through.
    @Test(.tags(.kernel), .rootOnly) func aFailedRuleReadFallsBackToTheWholeRewrite() throws {
        var (ns, nl, tap, backend, engine) = try Self.exampleTable("cedf")
        defer { withExtendedLifetime(ns) {} }
        tap.failRuleReads = true
        try backend.commit(try engine.rulesChanged(group: "web", rules: engine.document.groups["web"]!.rules.filter { $0.id != "http" }),
                           result: engine.planned)
        let sent = try #require(tap.batches.last).operations
        #expect(sent.contains(.flushChain(family: .inet, table: "rampart", name: "gin-web")))
        #expect(!sent.contains { if case .deleteRule = $0 { true } else { false } })
        #expect(try Self.plain(nl).readBack(reference: engine.planned) == engine.planned)
    }

    /// A rule someone added by hand to a group chain goes at the next edit of that chain; a
    /// commit planned before someone else's is refused whatever the edit read.
    @Test(.tags(.kernel), .rootOnly) func aHandAddedRuleGoesAndAStaleEditIsRefused() throws {
        var (ns, nl, _, backend, engine) = try Self.exampleTable("cedh")
        try ns.nft("insert", "rule", "inet", "rampart", "gin-web", "tcp", "dport", "6666", "accept")
        // The hand-made commit moved the generation: the backend's next commit reads back first.
        let error = #expect(throws: NetlinkError.self) {
            try backend.commit(try engine.rulesChanged(group: "web", rules: engine.document.groups["web"]!.rules.filter { $0.id != "http" }),
                               result: engine.planned)
        }
        guard case .generationChanged = error else { Issue.record("expected generationChanged, got \(String(describing: error))"); return }
        // `rampart diff` (pending) shows the chain whole and says how it is sent; it changes nothing.
        let held = try #require(try nl.readRules(family: .inet, table: "rampart", chain: "gin-web")).filter { $0.comment != nil }
        let pending = try Self.plain(nl).pending(to: engine.planned)
        #expect(pending.text.contains("# gin-web: sent as 2 rules deleted and 0 added"), "\(pending.text)")
        #expect(pending.text.contains("flush chain inet rampart gin-web"))
        // Converging edits gin-web: the intruder and the dropped rule go, the rest stays.
        let change = try backend.converge(to: engine.planned)
        #expect(change.summary.contains("1 rewritten (0 rules written, 2 deleted)"),
                "\(change.summary)")
        let now = try #require(try nl.readRules(family: .inet, table: "rampart", chain: "gin-web"))
        #expect(!now.contains { $0.comment == nil })
        #expect(Set(now.map(\.handle)).isSubset(of: Set(held.map(\.handle))))
        #expect(try Self.plain(nl).readBack(reference: engine.planned) == engine.planned)
        #expect(!(try ns.nft("list", "chain", "inet", "rampart", "gin-web").stdout.contains("6666")))
    }
}
