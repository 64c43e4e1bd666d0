import Foundation
import Testing
@testable import RampartCore
import RampartHarness
@testable import RampartNFTables
import RampartNetlink
import RampartTestSupport
import RampartCoreTestSupport

/// Group chains' rules as elements of the shapes' sets (`RuleShapes`, the slot layout's default):
/// a rule edit of a shape the group already uses is an element delta, and what the kernel holds
/// always reads back (and decodes, with no document) as the compiled rules.
@Suite("Group rules as elements") struct RuleShapesTests {
    /// Every group rule the compiler can make, at random: a port range (or an ICMPv6 type
    /// range) stays a rule; everything else becomes one element that reads back as the rule.
    @Test func everyRuleIsAnElementThatReadsBackOrStaysARule() throws {
        var rng = SplitMix64(state: 11)
        var elements = 0, rules = 0
        for n in 0..<5_000 {
            let r = Self.randomRule(n, &rng)
            let group = ["web", "a-group-with-a-long-id:1"].randomElement(using: &rng)!
            for k in Compiler.kernelRules(group: group, rule: r, index: n) {
                let d: Slots.Direction = r.direction == .ingress ? .in : .out
                if let (shape, e) = RuleShapes.element(k, direction: d, group: group) {
                    elements += 1
                    #expect(RuleShapes.rule(of: shape, e) == k)
                    #expect(e.key.starts(with: Slots.Members.tag(group)))
                    #expect(RuleShapes.parse(setName: shape.setName).map { $0.fields == shape.fields && $0.family == shape.family } == true)
                    // The shape rule reads itself back, remote group and all.
                    #expect(RuleShapes.shape(ofRule: shape.rule(group: group), comment: shape.ruleComment, group: group, direction: d) == shape)
                } else {
                    rules += 1
                    let ranged = k.matches.contains { if case .thDport(let p) = $0 { p.lowerBound != p.upperBound } else { false } }
                    #expect(ranged, "\(k) stayed a rule")
                }
            }
        }
        #expect(elements > 1_000 && rules > 100)
    }

    /// A lowered chain's shape rules carry their shape (`KernelRule.shape`), which spares
    /// `retaining` reading it back from the expressions: each is the shape the expressions say
    /// (none on a rule no shape holds), and `retaining` answers the same whether the rules carry
    /// their shapes or not (as when read back from the kernel), over random rule lists, held and
    /// wanted.
    @Test func aLoweredRulesShapeIsTheOneItsExpressionsSay() throws {
        var rng = SplitMix64(state: 29)
        func lowered(_ n: Int, _ group: String, _ d: Slots.Direction) -> RuleShapes.Lowered {
            let rules = (0..<Int.random(in: 0..<8, using: &rng)).flatMap { k in
                Compiler.kernelRules(group: group, rule: Self.randomRule(n * 10 + k, &rng), index: k)
            }
            return RuleShapes.lower(rules, group: group, direction: d) { Translate.expressions($0, layout: .slots) }
        }
        func withoutShapes(_ l: RuleShapes.Lowered) -> RuleShapes.Lowered {
            var out = l
            out.rules = l.rules.map { RuleShapes.Lowered.KernelRule(expressions: $0.expressions, comment: $0.comment) }
            return out
        }
        var carried = 0, kept = 0
        for n in 0..<1_000 {
            let group = ["web", "a-group-with-a-long-id:1"].randomElement(using: &rng)!
            let d: Slots.Direction = Bool.random(using: &rng) ? .in : .out
            let held = lowered(n, group, d), want = lowered(n + 5_000, group, d)
            for r in held.rules + want.rules {
                #expect(r.shape == RuleShapes.shape(ofRule: r.expressions, comment: r.comment, group: group, direction: d))
                if r.shape != nil { carried += 1 }
            }
            let fast = RuleShapes.retaining(held, into: want, group: group, direction: d)
            let slow = RuleShapes.retaining(withoutShapes(held), into: withoutShapes(want), group: group, direction: d)
            #expect(fast == slow && fast.rules.map(\.comment) == slow.rules.map(\.comment))
            if fast.rules.count > want.rules.count { kept += 1 }
        }
        #expect(carried > 1_000 && kept > 100, "carried \(carried), kept in \(kept)")
    }

    /// A rule of another group, direction, family or remote group never finds the element:
    /// keys carry the group's tag (and the remote group's), sets the rest.
    @Test func elementsOfOneGroupAreNotAnothers() throws {
        let r = Rule(id: "ssh", proto: .tcp, ports: 22...22, remote: .group("admin"))
        let web = try #require(Compiler.kernelRules(group: "web", rule: r, index: 0).first)
        let db = try #require(Compiler.kernelRules(group: "db", rule: r, index: 0).first)
        let (s1, e1) = try #require(RuleShapes.element(web, direction: .in, group: "web"))
        let (s2, e2) = try #require(RuleShapes.element(db, direction: .in, group: "db"))
        #expect(s1 == s2 && e1.key != e2.key)
        var fromOps = r
        fromOps.remote = .group("ops")
        let webFromOps = try #require(Compiler.kernelRules(group: "web", rule: fromOps, index: 0).first)
        let (s3, e3) = try #require(RuleShapes.element(webFromOps, direction: .in, group: "web"))
        #expect(s3 != s1 && s3.setName == s1.setName && e3.key != e1.key)
        #expect(RuleShapes.rules(of: s1, group: "web", in: [e1, e2, e3]) == [web])
        // A prefix's length is its set's: 10.0.0.0/8 and 10.0.0.0/16 never share one.
        func prefix(_ l: UInt8) throws -> RuleShapes.Shape {
            let x = Rule(id: "p", proto: .tcp, ports: 80...80, remote: .cidr(.v4(IPv4Prefix(address: IPv4Address("10.0.0.0")!, length: l))))
            let k = try #require(Compiler.kernelRules(group: "web", rule: x, index: 0).first)
            return try #require(RuleShapes.element(k, direction: .in, group: "web")).0
        }
        #expect(try prefix(8).setName != prefix(16).setName)
    }

    /// The example document committed to the recording fake by a slot-layout backend.
    static func exampleOnTheFake() throws -> (RecordingNFTables, NFTablesBackend, Engine) {
        let fake = RecordingNFTables()
        let backend = NFTablesBackend(client: fake, layout: .slots)
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        return (fake, backend, engine)
    }

    /// A port changed, a rule added beside one of its shape, a rule removed while another of
    /// its shape stays: elements only (no chain, no rule, no jump), and the table reads back.
    @Test func aRuleEditOfAKnownShapeIsElementsOnly() throws {
        var (fake, backend, engine) = try Self.exampleOnTheFake()
        var rules = engine.document.groups["web"]!.rules
        let http = try #require(rules.firstIndex { $0.id == "http" })
        var steps: [[Rule]] = []
        rules[http].ports = 8080...8080
        steps.append(rules)
        var extra = rules[http]
        extra.id = "alt"
        extra.ports = 8443...8443
        rules.append(extra)
        steps.append(rules)
        rules.removeAll { $0.id == "alt" }
        steps.append(rules)
        for (i, step) in steps.enumerated() {
            let change = try backend.commit(try engine.rulesChanged(group: "web", rules: step), result: engine.planned)
            // `apply` says what went: the chain counted rewritten, no rule written, the elements.
            #expect(change.summary.contains("1 rewritten (0 rules"), "step \(i): \(change.summary)")
            #expect(change.summary.contains(["elements: +1 -1", "elements: +1 -0", "elements: +0 -1"][i]), "step \(i): \(change.summary)")
            let batch = try #require(fake.committed.last)
            #expect(!SlotLayoutTests.touchesChainsOrJumps(batch), "step \(i): \(batch.operations.map(\.description))")
            #expect(!batch.operations.contains { if case .deleteRule = $0 { true } else if case .insertRule = $0 { true } else { false } })
            #expect(batch.operations.allSatisfy { if case .addElements = $0 { true } else if case .deleteElements = $0 { true } else { false } },
                    "step \(i): \(batch.operations.map(\.description))")
            #expect(try NFTablesBackend(client: fake, layout: .slots).readBack(reference: engine.planned) == engine.planned, "step \(i)")
        }
    }

    /// A rule of a new shape revoked leaves its shape rule in the chain, empty (no rule
    /// deleted), so that authorizing it again is an element: no rule added, so no walk of the
    /// table at commit. At most `retainedLimit` are kept; a remote group's shape is not. Each
    /// state reads back as what was planned (no drift), also by a backend that starts afresh.
    @Test func anEmptiedShapeRuleStaysSoItsRuleComesBackAsAnElement() throws {
        var (fake, backend, engine) = try Self.exampleOnTheFake()
        let base = engine.document.groups["web"]!.rules
        func cidr(_ id: String, _ text: String) -> Rule {
            Rule(id: id, proto: .tcp, ports: 8080...8080, remote: .cidr(try! Validate.parseCIDR(text, at: "t").get()))
        }
        func chainRules() throws -> [NFTRule] { try fake.readTable(family: .inet, name: "rampart")?.rules["gin-web"] ?? [] }
        func addsOrDeletesRules(_ b: Batch) -> Bool {
            b.operations.contains { if case .addRule = $0 { true } else if case .insertRule = $0 { true } else if case .deleteRule = $0 { true } else { false } }
        }
        func readsBackAsPlanned(_ what: String) throws {
            #expect(try backend.readBack(reference: engine.planned) == engine.planned, "\(what)")
            #expect(try NFTablesBackend(client: fake, layout: .slots).converge(to: engine.planned).isEmpty, "\(what): a fresh backend finds drift")
        }
        let bench = cidr("bench", "10.1.0.0/16")  // a prefix length web has no rule of: a new shape
        try backend.commit(try engine.rulesChanged(group: "web", rules: base + [bench]), result: engine.planned)
        #expect(try addsOrDeletesRules(#require(fake.committed.last)), "a new shape adds its rule")
        let withShape = try chainRules().count
        try readsBackAsPlanned("added")
        for round in 0..<2 {
            try backend.commit(try engine.rulesChanged(group: "web", rules: base), result: engine.planned)
            #expect(try !addsOrDeletesRules(#require(fake.committed.last)), "round \(round): the revoke deletes only the element")
            #expect(try chainRules().count == withShape, "round \(round): the emptied shape rule stays")
            try readsBackAsPlanned("round \(round) revoked")
            try backend.commit(try engine.rulesChanged(group: "web", rules: base + [bench]), result: engine.planned)
            let batch = try #require(fake.committed.last)
            #expect(!SlotLayoutTests.touchesChainsOrJumps(batch) && !addsOrDeletesRules(batch), "round \(round): \(batch.operations.map(\.description))")
            try readsBackAsPlanned("round \(round) authorized again")
        }
        // A kept shape rule twice, side by side (by hand), is drift: kept once.
        try backend.commit(try engine.rulesChanged(group: "web", rules: base), result: engine.planned)
        let held = try chainRules()
        let at = try #require(held.firstIndex { $0.comment?.contains("net16") == true })
        fake.mutateTable(family: .inet, name: "rampart") { t in var r = held[at]; r.handle = nil; t.rules["gin-web"]!.insert(r, at: at + 1) }
        #expect(try !NFTablesBackend(client: fake, layout: .slots).converge(to: engine.planned).isEmpty, "a kept shape rule twice: drift")
        #expect(try chainRules().count == withShape)
        try readsBackAsPlanned("a shape rule twice, repaired")
        // Six new shapes at once, all revoked: the limit's worth stay (with bench's: the first
        // ones in the chain's order), the rest go.
        let many = (9...14).map { cidr("p\($0)", "10.0.0.0/\($0)") }
        try backend.commit(try engine.rulesChanged(group: "web", rules: base + many), result: engine.planned)
        try backend.commit(try engine.rulesChanged(group: "web", rules: base), result: engine.planned)
        #expect(try chainRules().count == withShape - 1 + RuleShapes.retainedLimit)
        try readsBackAsPlanned("six revoked")
        // A remote group's shape goes with its last rule.
        let fromDB = Rule(id: "from-db", proto: .tcp, ports: 9000...9000, remote: .group("db"))
        let before = try chainRules().count
        try backend.commit(try engine.rulesChanged(group: "web", rules: base + [fromDB]), result: engine.planned)
        #expect(try chainRules().count > before, "its shape rules (one per family db has members of) added")
        try backend.commit(try engine.rulesChanged(group: "web", rules: base), result: engine.planned)
        #expect(try chainRules().count == before)
        try readsBackAsPlanned("remote group revoked")
        // More emptied shape rules than a chain keeps (made by hand) are drift, repaired.
        var extra = try #require(try chainRules().first { $0.comment?.contains("net10") == true })
        for l in [17, 18] as [UInt8] {
            let shape = RuleShapes.Shape(family: .ipv4, direction: .in, remote: .prefix(l), fields: try #require(RuleShapes.parse(setName: "rules4-in-net10-pp")).fields)
            extra.expressions = shape.rule(group: "web")
            extra.comment = shape.ruleComment
            extra.handle = nil
            let rule = extra
            fake.mutateTable(family: .inet, name: "rampart") { t in t.rules["gin-web", default: []].append(rule) }
        }
        #expect(try !NFTablesBackend(client: fake, layout: .slots).converge(to: engine.planned).isEmpty, "six emptied shapes: drift")
        try readsBackAsPlanned("repaired")
    }

    /// A table whose group chains hold rules (the encoding before) reads back as drifted group
    /// chains and is converted by the repair, in one transaction; and back again.
    @Test func aTableOfTheOtherEncodingIsConverted() throws {
        let fake = RecordingNFTables()
        let desired = Compiler.compile(exampleDocument)
        let plain = NFTablesBackend(client: fake, layout: .slots)
        plain.groupRulesAsElements = false
        try plain.converge(to: desired)
        #expect(try !NFTablesBackend(client: fake, layout: .slots).converge(to: desired).isEmpty)
        #expect(try NFTablesBackend(client: fake, layout: .slots).converge(to: desired).isEmpty)
        let back = NFTablesBackend(client: fake, layout: .slots)
        back.groupRulesAsElements = false
        #expect(try !back.converge(to: desired).isEmpty)
        #expect(try back.converge(to: desired).isEmpty)
    }

    /// An element added by hand for a group that has a chain is drift of that chain (repaired);
    /// one whose tag names no chain makes the table rebuilt.
    @Test func handMadeElementsAreRepaired() throws {
        let fake = RecordingNFTables()
        let desired = Compiler.compile(exampleDocument)
        try NFTablesBackend(client: fake, layout: .slots).converge(to: desired)
        let set = "rules4-in-any-pp"
        let stray = NFTSetElement(key: Slots.Members.tag("web") + [6, 0, 0, 0, 0x1a, 0x0a, 0, 0], comment: "by hand")
        fake.mutateTable(family: .inet, name: "rampart") { t in t.elements[set, default: []].append(stray) }
        let repaired = try NFTablesBackend(client: fake, layout: .slots).converge(to: desired)
        #expect(!repaired.isEmpty)
        #expect(try fake.readTable(family: .inet, name: "rampart")?.elements[set]?.contains(stray) == false)
        #expect(try NFTablesBackend(client: fake, layout: .slots).converge(to: desired).isEmpty)
        let orphan = NFTSetElement(key: Slots.Members.tag("nobody") + [6, 0, 0, 0, 0x1a, 0x0a, 0, 0], comment: "nobody")
        fake.mutateTable(family: .inet, name: "rampart") { t in t.elements[set, default: []].append(orphan) }
        #expect(try NFTablesBackend(client: fake, layout: .slots).converge(to: desired).summary.hasPrefix("table rebuilt"))
        #expect(try fake.readTable(family: .inet, name: "rampart")?.elements[set]?.contains(orphan) == false)
    }

    /// The real kernel: random rule lists for web, as in ChainEditTests but with rules as
    /// elements; after each change the table reads back, and decodes with no document, as
    /// the compiled IR; most changes add no rule.
    @Test(.tags(.kernel), .rootOnly) func randomRuleChangesInTheKernel() throws {
        let ns = try TestNamespace(prefix: "shape")
        let nl = try NFTablesConnection(namespace: .named(ns.name))
        let tap = ChainEditTests.Tap(nl)
        let backend = NFTablesBackend(client: tap, layout: .slots)
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        let seed = UInt64.random(in: 0...UInt64.max)
        var rng = SplitMix64(state: seed)
        var rules = engine.document.groups["web"]!.rules
        var addedRules = 0
        for step in 0..<60 {
            switch Int.random(in: 0..<3, using: &rng) {
            case 0: rules.insert(Self.randomRule(step, &rng), at: Int.random(in: 0...rules.count, using: &rng))
            case 1 where rules.count > 1: rules.remove(at: Int.random(in: 0..<rules.count, using: &rng))
            default:
                let i = Int.random(in: 0..<rules.count, using: &rng)
                var r = Self.randomRule(step, &rng)
                r.id = rules[i].id
                rules[i] = r
            }
            try backend.commit(try engine.rulesChanged(group: "web", rules: rules), result: engine.planned)
            let sent = try #require(tap.batches.last).operations
            if sent.contains(where: { if case .addRule = $0 { true } else if case .insertRule = $0 { true } else { false } }) { addedRules += 1 }
            #expect(try NFTablesBackend(client: nl, layout: .slots).readBack(reference: engine.planned) == engine.planned, "seed \(seed) step \(step)")
            let policy = try NFTablesBackend(client: nl, layout: .slots).enforcedPolicy()
            let decoded = try #require(policy)
            #expect(decoded.undecoded.isEmpty, "seed \(seed) step \(step): \(decoded.undecoded)")
            // Decoding makes implied family and protocol checks explicit: compare both sides
            // in that form (what a rule decodes to when it is written as a rule).
            func explicit(_ r: IRRule) -> IRRule? {
                Decode.rule(NFTRule(family: .inet, table: "rampart", chain: "c", expressions: Translate.expressions(r, layout: .slots), comment: r.comment))
            }
            for d in [Slots.Direction.in, .out] {
                let name = d.groupPrefix + "web"
                // A group whose rules accept all of a family has no chain of its own: the shared
                // chain holds its rules, with that chain's comments (`GroupForm`).
                let shared = if case .acceptsAll = GroupForm(engine.planned?.chains[name]?.rules) { true } else { false }
                func held(_ r: IRRule) -> IRRule? {
                    var x = explicit(r)
                    if shared { x?.comment = nil }
                    return x
                }
                #expect(Set((decoded.ir.chains[name]?.rules ?? []).map(held)) == Set((engine.planned?.chains[name]?.rules ?? []).map(held)),
                        "seed \(seed) step \(step) \(name)")
            }
        }
        #expect(addedRules < 45, "seed \(seed): \(addedRules) of 60 changes added a rule")
    }

    /// A group rule the compiler can make, from a small space so that shapes repeat.
    static func randomRule(_ n: Int, _ rng: inout SplitMix64) -> Rule {
        let v6 = Int.random(in: 0..<4, using: &rng) == 0
        let remote: Remote
        switch Int.random(in: 0..<3, using: &rng) {
        case 0: remote = .group(["admin", "db", "web"].randomElement(using: &rng)!)
        case 1: remote = v6 ? .cidr(.v6(IPv6Prefix(address: IPv6Address("fd00::")!, length: [8, 64, 128].randomElement(using: &rng)!)))
                            : .cidr(.v4(IPv4Prefix(address: IPv4Address("10.\(Int.random(in: 0..<4, using: &rng)).0.0")!, length: 16)))
        default: remote = v6 ? .cidr(.v6(IPv6Prefix(address: IPv6Address("::")!, length: 0))) : .cidr(.v4(IPv4Prefix(address: IPv4Address(raw: 0), length: 0)))
        }
        let direction: Direction = Bool.random(using: &rng) ? .ingress : .egress
        switch Int.random(in: 0..<5, using: &rng) {
        case 0:
            return Rule(id: "r\(n)", direction: direction, proto: .any, remote: remote)
        case 1:
            let icmp: RuleProtocol = v6 ? .icmpv6 : .icmp
            let t = UInt8.random(in: 0...3, using: &rng)
            return Rule(id: "r\(n)", direction: direction, proto: icmp, icmpType: t, icmpCode: Bool.random(using: &rng) ? 0 : nil, remote: remote)
        case 2:
            let lo = UInt16.random(in: 1...4, using: &rng) * 1000
            return Rule(id: "r\(n)", direction: direction, proto: .udp, ports: lo...(lo + 10), remote: remote)
        default:
            let port = UInt16.random(in: 1...4, using: &rng) * 1000
            return Rule(id: "r\(n)", direction: direction, proto: [RuleProtocol.tcp, .udp].randomElement(using: &rng)!, ports: port...port, remote: remote)
        }
    }
}
