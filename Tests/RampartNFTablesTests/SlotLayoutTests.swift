import Foundation
import Testing
import RampartCore
import RampartHarness
@testable import RampartNFTables
import RampartNetlink
import RampartTestSupport

/// The slot layout (`NFTLayout.slots`): instance changes are data-map elements only, and what the
/// kernel holds always reads back as the core's IR.
@Suite("The slot layout") struct SlotLayoutTests {
    /// Whether a batch creates, rewrites or deletes a chain or rule, or adds a jump element:
    /// anything that makes the kernel walk the table at commit.
    static func touchesChainsOrJumps(_ b: Batch) -> Bool {
        b.operations.contains { op in
            switch op {
            case .addChain, .deleteChain, .flushChain, .addRule: true
            case .addElements(_, _, _, let e): e.contains { if case .jump? = $0.verdict { true } else if case .goto? = $0.verdict { true } else { false } }
            default: false
            }
        }
    }

    @Test func plugUnplugAndGroupsChangesAreElementsOnly() throws {
        let fake = RecordingNFTables()
        let backend = NFTablesBackend(client: fake, layout: .slots)
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        let vm = Instance(host: "hv1", groups: ["web", "db"], ips: [IPAddress("10.0.7.7")!], interface: "tapnew")
        var other = vm
        other.interface = "tapother"
        other.ips = [IPAddress("10.0.7.8")!]
        // The table was created with instances of one group: two groups need a second slot
        // rule once; after that, plugs and changes with up to two groups touch no chain.
        var e2 = engine
        let fake2 = fake
        let b2 = backend
        try b2.commit(try e2.instancePlugged(id: "first", instance: vm), result: e2.planned)
        #expect(Self.touchesChainsOrJumps(try #require(fake2.committed.last)))
        for step in 0..<4 {
            let plan: Plan
            switch step {
            case 0: plan = try e2.instancePlugged(id: "new", instance: other)
            case 1: plan = try e2.instanceGroupsChanged(id: "new", groups: ["db"])
            case 2: plan = try e2.instanceGroupsChanged(id: "new", groups: ["db", "web"])
            default: plan = try e2.instanceUnplugged(id: "new")
            }
            try b2.commit(plan, result: e2.planned)
            let batch = try #require(fake2.committed.last)
            #expect(!Self.touchesChainsOrJumps(batch), "step \(step): \(batch.operations.map(\.description))")
            #expect(try NFTablesBackend(client: fake2, layout: .slots).readBack(reference: e2.planned) == e2.planned)
        }
    }

    /// The kernel finds an element message's set by walking the table's sets in creation order:
    /// a new table creates the sets and maps a plug touches before any member set, whatever
    /// their names sort as (`mac-ifaces` sorts after `m4-…`).
    @Test func aNewTableCreatesThePerInterfaceSetsFirst() throws {
        let fake = RecordingNFTables()
        let backend = NFTablesBackend(client: fake, layout: .slots)
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        let created = try #require(fake.committed.last).operations.compactMap { op -> String? in
            if case .addSet(let d) = op { d.name } else { nil }
        }
        let perInterface = Set(Compiler.fixedSets.map(\.0)).union([Slots.instanceGroups, "groups-in", "groups-out"])
        let firstMemberSet = try #require(created.firstIndex { $0 == Slots.Members.set4 || $0 == Slots.Members.set6 })
        #expect(Set(created[..<firstMemberSet]) == perInterface, "\(created)")
        // No set per group: every group's members are elements of `members4`/`members6`.
        #expect(!created.contains { $0.hasPrefix("m4-") || $0.hasPrefix("m6-") }, "\(created)")
    }

    /// A plug adds the instance to each referenced group's members in one message per family,
    /// whatever the number of its groups.
    @Test func aPlugSendsOneMembersMessagePerFamily() throws {
        let fake = RecordingNFTables()
        let backend = NFTablesBackend(client: fake, layout: .slots)
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        let vm = Instance(host: "hv1", groups: ["web", "admin", "db"], ips: [IPAddress("10.0.7.7")!, IPAddress("fd00::77")!], interface: "tapnew")
        try backend.commit(try engine.instancePlugged(id: "new", instance: vm), result: engine.planned)
        let batch = try #require(fake.committed.last)
        let toMembers = batch.operations.compactMap { op -> (String, [NFTSetElement])? in
            if case .addElements(_, _, let set, let e) = op, set.hasPrefix("members") { (set, e) } else { nil }
        }
        #expect(toMembers.map(\.0).sorted() == ["members4", "members6"])
        // web and admin are referenced by rules here (db is not): two elements per family.
        #expect(toMembers.allSatisfy { $0.1.compactMap(\.comment).sorted() == ["admin", "web"] })
        #expect(!batch.operations.contains { if case .addElements(_, _, let set, _) = $0 { set.hasPrefix("m4-") || set.hasPrefix("m6-") } else { false } })
        #expect(try NFTablesBackend(client: fake, layout: .slots).readBack(reference: engine.planned) == engine.planned)
    }

    /// A daemon's drain concatenates the plans of several events: an instance plugged and
    /// unplugged in one drain adds and removes the same member elements. Only the net change is
    /// sent (before, removals went first and the kernel refused the batch: ENOENT for elements it
    /// never held, then a whole converge); an unplug and a re-plug in one drain send nothing.
    @Test func membersAddedAndRemovedInOneBatchSendOnlyTheNetChange() throws {
        let fake = RecordingNFTables()
        try Self.netMembers(client: fake, lastBatch: { fake.committed.last })
    }

    @Test(.tags(.kernel), .rootOnly) func membersAddedAndRemovedInOneBatchInTheKernel() throws {
        let ns = try TestNamespace(prefix: "slotn")
        // The kernel refuses a batch deleting an element it does not hold: accepted is the check.
        try Self.netMembers(client: try NFTablesConnection(namespace: .named(ns.name)), lastBatch: nil)
    }

    static func netMembers(client: some NFTablesClient, lastBatch: (() -> Batch?)?) throws {
        let backend = NFTablesBackend(client: client, layout: .slots)
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        let vm = Instance(host: "hv1", groups: ["web", "admin"], ips: [IPAddress("10.0.7.7")!, IPAddress("fd00::77")!], interface: "tapnew")
        func membersOps(_ b: Batch) -> [String] {
            b.operations.compactMap { op -> String? in
                switch op {
                case .addElements(_, _, let set, _) where set.hasPrefix("members"): "add \(set)"
                case .deleteElements(_, _, let set, _) where set.hasPrefix("members"): "delete \(set)"
                default: nil
                }
            }
        }
        // Plugged, unplugged, plugged and unplugged again in one drain: nothing to send.
        var ops = try engine.instancePlugged(id: "new", instance: vm).ops
        ops += try engine.instanceUnplugged(id: "new").ops
        ops += try engine.instancePlugged(id: "new", instance: vm).ops
        ops += try engine.instanceUnplugged(id: "new").ops
        try backend.commit(Plan(ops: ops), result: engine.planned)
        if let lastBatch { #expect(membersOps(try #require(lastBatch())) == []) }
        #expect(try NFTablesBackend(client: client, layout: .slots).readBack(reference: engine.planned) == engine.planned)
        // Plugged; then unplugged and plugged again in one drain.
        try backend.commit(try engine.instancePlugged(id: "new", instance: vm), result: engine.planned)
        ops = try engine.instanceUnplugged(id: "new").ops
        ops += try engine.instancePlugged(id: "new", instance: vm).ops
        try backend.commit(Plan(ops: ops), result: engine.planned)
        if let lastBatch { #expect(membersOps(try #require(lastBatch())) == []) }
        #expect(try NFTablesBackend(client: client, layout: .slots).readBack(reference: engine.planned) == engine.planned)
        // Plugged, unplugged and plugged again in one drain (from unplugged): each element once.
        try backend.commit(try engine.instanceUnplugged(id: "new"), result: engine.planned)
        ops = try engine.instancePlugged(id: "new", instance: vm).ops
        ops += try engine.instanceUnplugged(id: "new").ops
        ops += try engine.instancePlugged(id: "new", instance: vm).ops
        try backend.commit(Plan(ops: ops), result: engine.planned)
        if let lastBatch {
            let added = try #require(lastBatch()).operations.flatMap { op -> [NFTSetElement] in
                if case .addElements(_, _, let set, let e) = op, set.hasPrefix("members") { e } else { [] }
            }
            #expect(added.count == 4 && Set(added).count == 4, "\(added.count) member elements sent for 2 groups × 2 families")
        }
        #expect(try NFTablesBackend(client: client, layout: .slots).readBack(reference: engine.planned) == engine.planned)
        #expect(engine.planned == Compiler.compile(engine.document))
    }

    /// A group's tag: its id when it fits an interface name, else `#` and a digest: distinct,
    /// without a NUL (so that nft prints it whole), never an id's own spelling.
    @Test func groupTags() {
        #expect(Slots.Members.tag("web") == Array("web".utf8) + [UInt8](repeating: 0, count: 13))
        #expect(Slots.Members.tag("fifteen-bytes-x").count == 16)
        let long = (0..<2000).map { "a-group-with-a-long-id-\($0)" }
        let tags = long.map(Slots.Members.tag)
        #expect(Set(tags).count == long.count)
        #expect(tags.allSatisfy { $0.count == 16 && $0.first == UInt8(ascii: "#") && !$0.contains(0) })
        #expect(tags.allSatisfy { Slots.Members.literalGroup($0) == nil })
        #expect(Slots.Members.literalGroup(Slots.Members.tag("web")) == "web")
    }

    /// A group whose id does not fit a tag (more than 15 bytes) is found by its digest: the
    /// read-back (`converge` finds nothing to do) and `explain`'s decoding name its members.
    @Test func aLongGroupIdReadsBackAndDecodes() throws {
        var doc = exampleDocument
        let long = "a-group-with-a-long-id:42"
        doc.groups[long] = Group(rules: [])
        for (id, var inst) in doc.instances where inst.groups.contains("admin") {
            inst.groups = inst.groups.map { $0 == "admin" ? long : $0 }
            doc.instances[id] = inst
        }
        for (g, var group) in doc.groups {
            group.rules = group.rules.map { r in
                var r = r
                if case .group("admin") = r.remote { r.remote = .group(long) }
                return r
            }
            doc.groups[g] = group
        }
        doc.groups["admin"] = nil
        try doc.validate()
        let fake = RecordingNFTables()
        let desired = Compiler.compile(doc)
        try NFTablesBackend(client: fake, layout: .slots).converge(to: desired)
        #expect(try NFTablesBackend(client: fake, layout: .slots).converge(to: desired).isEmpty)
        let snap = try #require(try fake.readTable(family: .inet, name: Naming.table))
        let tag = Slots.Members.tag(Naming.kernelID(long))
        #expect(tag.first == UInt8(ascii: "#"))
        #expect(snap.elements[Slots.Members.set4]?.contains { Array($0.key.prefix(16)) == tag } == true)
        let (ir, undecoded) = Decode.ir(snap)
        #expect(undecoded.isEmpty, "\(undecoded)")
        let name = Naming.memberSet(.ipv4, long)
        #expect(ir.sets[name]?.elements == desired.sets[name]?.elements)
        #expect(ir.chains.values.contains { $0.rules.contains { $0.matches.contains(.saddrInSet(.ipv4, name)) } })
    }

    @Test func randomEventsReadBackAsTheirIR() throws {
        try Self.randomEvents(client: RecordingNFTables(), steps: 200)
    }

    /// The same against the kernel, fewer steps.
    @Test(.tags(.kernel), .rootOnly) func randomEventsInTheKernel() throws {
        let ns = try TestNamespace(prefix: "slotr")
        try Self.randomEvents(client: try NFTablesConnection(namespace: .named(ns.name)), steps: 60)
    }

    /// Random plugs, unplugs, groups changes (up to three groups) and rules changes; after each,
    /// the engine's IR equals a full compile of its document and a fresh reader of the table
    /// (a new process) reads exactly that IR back.
    static func randomEvents(client: some NFTablesClient, steps: Int, minimumSetSize: UInt32? = nil) throws {
        let backend = NFTablesBackend(client: client, layout: .slots)
        if let m = minimumSetSize { backend.minimumSetSize = m }
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        var rng = SystemRandomNumberGenerator()
        let groups = ["web", "db", "admin"]
        var plugged: [String: Instance] = [:]
        for step in 0..<steps {
            // With small sets, the first steps plug all six instances: the sets then outgrow
            // their sizes for sure, whatever comes next.
            let growFirst = minimumSetSize != nil && step < 6
            let id = growFirst ? "i\(step)" : "i\(Int.random(in: 0..<6, using: &rng))"
            let picked = groups.filter { _ in Bool.random(using: &rng) }
            let plan: Plan
            switch growFirst ? 0 : Int.random(in: 0..<4, using: &rng) {
            case 0 where plugged[id] == nil:
                let n = Int(id.dropFirst())!
                let inst = Instance(host: "hv1", groups: picked, ips: [IPAddress("10.0.8.\(n + 1)")!], interface: "tapr\(n)")
                plugged[id] = inst
                plan = try engine.instancePlugged(id: id, instance: inst)
            case 1 where plugged[id] != nil:
                plugged[id] = nil
                plan = try engine.instanceUnplugged(id: id)
            case 2 where plugged[id] != nil:
                plan = try engine.instanceGroupsChanged(id: id, groups: picked)
            case 3 where Bool.random(using: &rng):
                // A group's rules in one of the forms the layout holds differently
                // (`GroupForm`): its own chain, a shared accept-all chain, or nothing.
                let g = groups.randomElement(using: &rng)!
                plan = try engine.rulesChanged(group: g, rules: Self.randomForms(exampleDocument.groups[g]!.rules, &rng))
            default:
                var rules = engine.document.groups["db"]!.rules
                if rules.first?.ports == nil { rules = exampleDocument.groups["db"]!.rules }
                rules[0].ports = UInt16(step % 1000 + 1)...UInt16(step % 1000 + 1)
                plan = try engine.rulesChanged(group: "db", rules: rules)
            }
            try backend.commit(plan, result: engine.planned)
            #expect(engine.planned == Compiler.compile(engine.document), "step \(step)")
            let reader = NFTablesBackend(client: client, layout: .slots)
            #expect(try reader.readBack(reference: engine.planned) == engine.planned, "step \(step)")
        }
        if minimumSetSize != nil { #expect(backend.sizeRebuilds > 0, "no set outgrew its size: the rebuild went untested") }
    }

    /// A group's rules with each direction, independently: as they were, accepting all of IPv4,
    /// all of IPv6, all of both, or nothing.
    static func randomForms(_ original: [Rule], _ rng: inout some RandomNumberGenerator) -> [Rule] {
        func prefix(_ text: String) -> IPPrefix {
            guard case .ok(let p) = IPPrefix.parse(text) else { fatalError(text) }
            return p
        }
        var out: [Rule] = []
        for d in [Direction.ingress, .egress] {
            switch Int.random(in: 0..<5, using: &rng) {
            case 0: out += original.filter { $0.direction == d }
            case 1: out.append(Rule(id: "all4-\(d)", direction: d, proto: .any, remote: .cidr(prefix("0.0.0.0/0"))))
            case 2: out.append(Rule(id: "all6-\(d)", direction: d, proto: .any, remote: .cidr(prefix("::/0"))))
            case 3: out += [Rule(id: "all4-\(d)", direction: d, proto: .any, remote: .cidr(prefix("0.0.0.0/0"))),
                            Rule(id: "all6-\(d)", direction: d, proto: .any, remote: .cidr(prefix("::/0")))]
            default: break
            }
        }
        return out
    }

    /// The same with sets created as small as can be, so that they outgrow their sizes and the
    /// table is rebuilt along the way (`SetSizes`).
    @Test func randomEventsWithSetsThatOutgrowTheirSizes() throws {
        try Self.randomEvents(client: RecordingNFTables(), steps: 200, minimumSetSize: 1)
    }

    @Test(.tags(.kernel), .rootOnly) func randomEventsWithSetsThatOutgrowTheirSizesInTheKernel() throws {
        let ns = try TestNamespace(prefix: "slotz")
        try Self.randomEvents(client: try NFTablesConnection(namespace: .named(ns.name)), steps: 60, minimumSetSize: 1)
    }

    /// What `SetSizes` relies on, in the real kernel: a set created with a size refuses an
    /// element past it (ENFILE) and leaves the batch undone; one without a size takes as many
    /// as it is given. The fake does the same.
    @Test(.tags(.kernel), .rootOnly) func aSizedSetRefusesAnElementPastItsSize() throws {
        let ns = try TestNamespace(prefix: "slotn")
        let clients: [any NFTablesClient] = [try NFTablesConnection(namespace: .named(ns.name)), RecordingNFTables()]
        for client in clients {
            func set(_ name: String, size: UInt32?) -> NFTSetDefinition {
                var d = NFTSetDefinition(family: .inet, table: "sized", name: name, keyType: .ipv4Address)
                d.size = size
                return d
            }
            func elements(_ n: Int) -> [NFTSetElement] { (0..<n).map { NFTSetElement(key: [10, 0, 0, UInt8($0)]) } }
            var create = Batch()
            create.append(.addTable(NFTTable(family: .inet, name: "sized")))
            create.append(.addSet(set("small", size: 4)))
            create.append(.addSet(set("open", size: nil)))
            create.append(.addElements(family: .inet, table: "sized", set: "small", elements: elements(3)))
            create.append(.addElements(family: .inet, table: "sized", set: "open", elements: elements(100)))
            _ = try client.commit(create, expectedGeneration: nil)
            var past = Batch()
            past.append(.addElements(family: .inet, table: "sized", set: "small", elements: [NFTSetElement(key: [10, 0, 1, 1]), NFTSetElement(key: [10, 0, 1, 2])]))
            #expect(throws: NetlinkError.self) { try client.commit(past, expectedGeneration: nil) }
            // Room made in the same batch counts, as `SetSizes.fit` counts it.
            var swapped = Batch()
            swapped.append(.deleteElements(family: .inet, table: "sized", set: "small", elements: [NFTSetElement(key: [10, 0, 0, 0])]))
            swapped.append(.addElements(family: .inet, table: "sized", set: "small", elements: [NFTSetElement(key: [10, 0, 1, 1]), NFTSetElement(key: [10, 0, 1, 2])]))
            _ = try client.commit(swapped, expectedGeneration: nil)
            let snap = try #require(try client.readTable(family: .inet, name: "sized"))
            #expect(snap.set("small")?.size == 4)
            #expect(snap.set("open")?.size == nil)
            #expect(snap.elements["small"]?.count == 4)
            #expect(snap.elements["open"]?.count == 100)
        }
    }

    /// A new table's large sets are created at twice what they hold (a power of two, at least
    /// the minimum); the shape sets and maps stay resizable. A plug that fits sends elements
    /// only; the one that would pass a size is sent as one rebuild of the table, which keeps its
    /// secret and gives the outgrown set twice its new count.
    @Test func aSetThatWouldOutgrowItsSizeRebuildsTheTable() throws {
        let fake = RecordingNFTables()
        let backend = NFTablesBackend(client: fake, layout: .slots)
        backend.minimumSetSize = 4
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        let first = try #require(fake.committed.last)
        var sized: [String: UInt32] = [:]
        for case .addSet(let d) in first.operations {
            if SetSizes.names.contains(d.name) {
                let size: UInt32 = try #require(d.size, "\(d.name)")
                sized[d.name] = size
            } else {
                #expect(d.size == nil, "\(d.name)")
            }
        }
        #expect(Set(sized.keys) == SetSizes.names)
        let before = try #require(try fake.readTable(family: .inet, name: "rampart"))
        for (name, size) in sized {
            let n = before.elements[name]?.count ?? 0
            #expect(size == SetSizes.size(for: n, minimum: 4), "\(name) holds \(n)")
        }
        let room = Int(sized[Naming.instanceInterfaces]!) - (before.elements[Naming.instanceInterfaces]?.count ?? 0)
        var plugged = 0
        while backend.sizeRebuilds == 0 {
            let vm = Instance(host: "hv1", groups: ["db"], ips: [IPAddress("10.0.9.\(plugged + 1)")!], interface: "tapz\(plugged)")
            let change = try backend.commit(try engine.instancePlugged(id: "z\(plugged)", instance: vm), result: engine.planned)
            plugged += 1
            let batch = try #require(fake.committed.last)
            let rebuilds = batch.operations.contains { if case .deleteTable = $0 { true } else { false } }
            #expect(rebuilds == (backend.sizeRebuilds > 0), "plug \(plugged)")
            #expect(change.summary.hasPrefix("table rebuilt") == rebuilds, "\(change.summary)")
            #expect(try NFTablesBackend(client: fake, layout: .slots).readBack(reference: engine.planned) == engine.planned)
            try #require(plugged <= room + 1)
        }
        // Not early: the plug that rebuilt took some set past the size it was created with.
        let after = try #require(try fake.readTable(family: .inet, name: "rampart"))
        #expect(SetSizes.names.contains { (after.elements[$0]?.count ?? 0) > Int(sized[$0]!) }, "rebuilt at plug \(plugged) with room to spare")
        #expect(after.table.tag == before.table.tag)
        for name in SetSizes.names {
            let n = after.elements[name]?.count ?? 0
            #expect(after.set(name)?.size == SetSizes.size(for: n, minimum: 4), "\(name) holds \(n)")
        }
        // The next plug fits again: elements only.
        let vm = Instance(host: "hv1", groups: ["db"], ips: [IPAddress("10.0.9.200")!], interface: "tapz200")
        try backend.commit(try engine.instancePlugged(id: "z200", instance: vm), result: engine.planned)
        #expect(backend.sizeRebuilds == 1)
        #expect(!Self.touchesChainsOrJumps(try #require(fake.committed.last)))
    }

    @Test func slotDriftRebuildsTheTableWithItsKeys() throws {
        let fake = RecordingNFTables()
        let desired = Compiler.compile(exampleDocument)
        try NFTablesBackend(client: fake, layout: .slots).converge(to: desired)
        let clean = try #require(try fake.readTable(family: .inet, name: "rampart"))
        fake.mutateTable(family: .inet, name: "rampart") { t in
            // A slot pointed at another group's key by hand.
            let i = t.elements[Slots.instanceGroups]!.firstIndex { $0.comment == "web" }!
            t.elements[Slots.instanceGroups]![i].comment = "db"
        }
        let change = try NFTablesBackend(client: fake, layout: .slots).converge(to: desired)
        #expect(change.summary.hasPrefix("table rebuilt"))
        let repaired = try #require(try fake.readTable(family: .inet, name: "rampart"))
        #expect(repaired.table.tag == clean.table.tag)  // the same secret, so the same keys
        #expect(Set(repaired.elements[Slots.instanceGroups]!) == Set(clean.elements[Slots.instanceGroups]!))
        #expect(try NFTablesBackend(client: fake, layout: .slots).converge(to: desired).isEmpty)
    }

    @Test func aTableOfTheOtherLayoutIsRebuilt() throws {
        let fake = RecordingNFTables()
        let desired = Compiler.compile(exampleDocument)
        try NFTablesBackend(client: fake, layout: .instanceChains).converge(to: desired)
        let change = try NFTablesBackend(client: fake, layout: .slots).converge(to: desired)
        #expect(change.summary.hasPrefix("table rebuilt"))
        #expect(try NFTablesBackend(client: fake, layout: .slots).converge(to: desired).isEmpty)
        // And back: the table is rebuilt in the other layout, in one transaction.
        #expect(try NFTablesBackend(client: fake, layout: .instanceChains).converge(to: desired).summary.hasPrefix("table rebuilt"))
        #expect(try NFTablesBackend(client: fake, layout: .instanceChains).converge(to: desired).isEmpty)
        #expect(try fake.readTable(family: .inet, name: "rampart")?.set(Slots.instanceGroups) == nil)
    }

    @Test func moreGroupsThanSlotsIsRefusedWithItsPath() throws {
        var doc = exampleDocument
        for k in 0..<17 { doc.groups["x\(k)"] = Group(rules: []) }
        doc.instances["web-2"]!.groups = (0..<17).map { "x\($0)" }
        #expect(throws: DocumentError.self) { try doc.validate() }
        do { try doc.validate() } catch {
            #expect("\(error)".contains("instances.web-2.groups: 17 groups; an instance may be in at most 16"))
        }
        // An instance of another host is that host's business.
        doc.instances["web-2"]!.groups = ["web"]
        doc.instances["bastion"]!.groups = (0..<17).map { "x\($0)" }
        try doc.validate()
    }

    /// The real kernel: a plug keeps every rule's handle, `nft list` reads the table, `rampart
    /// show` names instances and groups.
    @Test(.tags(.kernel), .rootOnly) func inTheKernelAPlugTouchesNoRule() throws {
        let ns = try TestNamespace(prefix: "slot")
        let nl = try NFTablesConnection(namespace: .named(ns.name))
        let backend = NFTablesBackend(client: nl, layout: .slots)
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        let before = try #require(try nl.readTable(family: .inet, name: "rampart"))
        let vm = Instance(host: "hv1", groups: ["db"], ips: [IPAddress("10.0.7.7")!], interface: "tapnew")
        try backend.commit(try engine.instancePlugged(id: "new", instance: vm), result: engine.planned)
        try backend.commit(try engine.instanceGroupsChanged(id: "new", groups: ["web"]), result: engine.planned)
        let after = try #require(try nl.readTable(family: .inet, name: "rampart"))
        #expect(after.rules == before.rules)  // every rule kept its handle
        #expect(try NFTablesBackend(client: nl, layout: .slots).readBack(reference: engine.planned) == engine.planned)
        let listed = try ns.nft("list", "ruleset").stdout
        #expect(listed.contains(#""tapnew" . 0x00000000 comment "web""#))
        #expect(listed.contains(#"comment "new""#))
        #expect(listed.contains("jump dispatch-in"))
        let shown = EnforcementView(try #require(try nl.readTable(family: .inet, name: "rampart")))
        #expect(shown.instances.first { $0.instance == "new" }?.groups.map(\.group) == ["web"])
    }
}
