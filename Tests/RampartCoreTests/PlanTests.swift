import Testing
@testable import RampartCore

@Suite struct PlanTests {
    let chainA = Chain(name: "a", rules: [IRRule([], .jump("b"))])
    let chainB = Chain(name: "b", rules: [IRRule([.saddrInSet(.ipv4, "s")], .accept)])

    func base() throws -> RulesetIR {
        try #require(try apply(Plan(ops: [.createTable, .createSet(SetHeader(name: "s", keyType: .ipv4Addr)), .createChain(ChainHeader(name: "b")),
                                          .createChain(ChainHeader(name: "a")), .rewriteChain("b", chainB.rules), .rewriteChain("a", chainA.rules)]), to: nil))
    }

    func rejects(_ ops: [PlanOp], on ir: RulesetIR?) -> String? {
        do {
            _ = try apply(Plan(ops: ops), to: ir)
            return nil
        } catch { return error.reason }
    }

    @Test func applyRejectsWhatTheKernelWould() throws {
        let ir = try base()
        #expect(rejects([.createChain(ChainHeader(name: "c")), .rewriteChain("c", [IRRule([], .jump("zz"))])], on: ir) == "chain c jumps to missing chain zz")
        #expect(rejects([.rewriteChain("a", [IRRule([.saddrInSet(.ipv4, "nope")], .accept)])], on: ir) == "chain a references missing set nope")
        #expect(rejects([.deleteChain("b")], on: ir) == "chain b deleted while chain a jumps to it")
        #expect(rejects([.deleteSet("s")], on: ir) == "set s deleted while chain b references it")
        #expect(rejects([.createTable], on: ir) == "table exists")
        #expect(rejects([.createChain(ChainHeader(name: "a"))], on: ir) == "chain a exists")
        #expect(rejects([.removeElements("s", [.ipv4(IPv4Address(raw: 1))])], on: ir) == "element 0.0.0.1 not in set s")
        #expect(rejects([.addElements("s", [.ifname("x")])], on: ir) == #"element "x" has the wrong type for set s"#)
        #expect(rejects([.createMap("m"), .addMapElements("m", ["t": .jump("nope")])], on: ir) == "map m element t jumps to missing chain nope")
        #expect(rejects([.createMap("m"), .addMapElements("m", ["t": .jump("a")]), .deleteChain("a")], on: ir) == "chain a deleted while map m key t jumps to it")
        #expect(rejects([.createChain(ChainHeader(name: "c"))], on: nil) == "no table")
        // Deleting in the right order is accepted.
        #expect(rejects([.deleteChain("a"), .deleteChain("b"), .deleteSet("s")], on: ir) == nil)
    }

    @Test func differOrdersDeletionsAndCreations() throws {
        let ir = try base()
        var empty = ir
        empty.chains = [:]
        empty.sets = [:]
        let down = diff(from: ir, to: empty)
        #expect(down.ops == [.deleteChain("a"), .deleteChain("b"), .deleteSet("s")])
        #expect(try apply(down, to: ir) == empty)
        let up = diff(from: empty, to: ir)
        #expect(up.ops == [.createSet(SetHeader(name: "s", keyType: .ipv4Addr)), .createChain(ChainHeader(name: "a")), .createChain(ChainHeader(name: "b")),
                           .rewriteChain("a", chainA.rules), .rewriteChain("b", chainB.rules)])
        #expect(try apply(up, to: empty) == ir)
        #expect(diff(from: ir, to: ir).isEmpty)
        #expect(diff(from: ir, to: nil).ops == [.deleteTable])
    }

    @Test func headerDriftRebuildsTheTableInOnePlan() throws {
        let ir = Compiler.compile(try twoTier())
        var drift = ir
        drift.chains["egress"]!.header.base!.policy = .drop
        let p = diff(from: drift, to: ir)
        #expect(p.ops.first == .deleteTable)
        #expect(p.ops.dropFirst().first == .createTable)
        #expect(try apply(p, to: drift) == ir)
        #expect(p.summary.description.hasPrefix("table rebuilt"))
    }

    @Test func summaryAndRender() throws {
        let ir = Compiler.compile(try twoTier())
        let p = diff(from: nil, to: ir)
        let s = p.summary
        #expect(s.tableCreated)
        #expect(s.chainsCreated == 15)
        #expect(s.chainsRewritten == 15)
        // 3 interfaces, 5 member addresses, 4 anti-spoofing address pairs, 1 MAC pair and its
        // interface, 1 neighbour-advertisement target (web-1's IPv6 address).
        #expect(s.elementsAdded == 15)
        #expect(s.mapElementsAdded == 6)
        let text = Render.plan(p)
        #expect(text.hasPrefix("add table inet rampart\nadd set inet rampart inst-ifaces { type ifname; }\n"))
        #expect(text.contains(#"add element inet rampart from-inst { "tapdb1" : jump out-db-1, "tapweb1" : jump out-web-1, "tapweb2" : jump out-web-2 }"#))
        #expect(text.contains("add chain inet rampart egress { type filter hook forward priority -1; policy accept; }\n"))
        #expect(text.contains("flush chain inet rampart gin-db\nadd rule inet rampart gin-db ip saddr @m4-web meta l4proto tcp th dport 5432 counter accept comment \"db/pg-from-web\"\n"))
        #expect(Render.ruleset(ir).contains("\tset m4-admin {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.9.5 }\n\t}\n"))
        // The target set is typed by its raw-payload lookup in nft text; elements are integers.
        #expect(text.contains("add set inet rampart inst-nd-targets { typeof iifname . @th,64,128; }\n"))
        #expect(text.contains(#"add element inet rampart inst-nd-targets { "tapweb1" . 0xfd000000000000000000000000000011 }"#))
    }
}
