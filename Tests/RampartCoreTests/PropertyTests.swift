import PropertyBased
import Testing
@testable import RampartCore

/// One random edit, applied through the Engine's incremental event.
func randomEdit(_ engine: inout Engine, _ gen: inout DocGen) throws -> (String, Plan) {
    let d = engine.document
    let groups = d.groups.keys.sorted()
    let ids = d.instances.keys.sorted()
    let local = ids.filter { d.instances[$0]!.host == d.host }
    switch gen.int(0...6) {
    case 0:
        // A members refresh: some members leave, some join or change.
        let g = gen.pick(groups)
        let current = ids.filter { d.instances[$0]!.groups.contains(g) }
        let removed = current.filter { _ in gen.chance(0.3) }
        var added: [String: Instance] = [:]
        for _ in 0..<gen.int(0...3) {
            if gen.chance(0.5) || ids.isEmpty {
                var inst = gen.instance(host: gen.pick(["hv2", "hv3"]), groups: groups)
                inst.groups.append(g)
                added[gen.newInstanceID()] = inst
            } else {
                let id = gen.pick(ids)
                guard !removed.contains(id) else { continue }
                var inst = d.instances[id]!
                if !inst.groups.contains(g) { inst.groups.append(g) }
                if inst.host != d.host && gen.chance(0.5) { inst.ips = [gen.address(fresh: false)] }
                added[id] = inst
            }
        }
        return ("membersChanged \(g)", try engine.membersChanged(group: g, added: added, removed: removed))
    case 1:
        // The full-list form of the same call.
        let g = gen.pick(groups)
        var members: [String: Instance] = [:]
        for id in ids where d.instances[id]!.groups.contains(g) && gen.chance(0.7) { members[id] = d.instances[id]! }
        if gen.chance(0.5) {
            var inst = gen.instance(host: "hv2", groups: groups)
            inst.groups.append(g)
            members[gen.newInstanceID()] = inst
        }
        return ("membersChanged(full) \(g)", try engine.membersChanged(group: g, members: members))
    case 2:
        let g = gen.chance(0.1) ? "gnew" : gen.pick(groups)
        return ("rulesChanged \(g)", try engine.rulesChanged(group: g, rules: gen.rules(groups: groups + [g])))
    case 3:
        let id = gen.newInstanceID()
        return ("plug \(id)", try engine.instancePlugged(id: id, instance: gen.instance(host: "hv1", groups: groups)))
    case 4:
        guard !local.isEmpty else { return ("none", Plan()) }
        let id = gen.pick(local)
        return ("unplug \(id)", try engine.instanceUnplugged(id: id))
    default:
        guard !ids.isEmpty else { return ("none", Plan()) }
        let id = gen.pick(ids)
        return ("groupsChanged \(id)", try engine.instanceGroupsChanged(id: id, groups: gen.groupSubset(groups)))
    }
}

/// Runs a property body and records a thrown error as an issue. PropertyBased runs bodies under
/// `try?`, so an error thrown from a body would otherwise pass silently.
func recording(_ seed: UInt64, _ body: () throws -> Void) {
    do { try body() } catch { Issue.record("seed \(seed): \(error)") }
}

@Suite struct PropertyTests {
    @Test func incrementalPlansEqualFullCompile() async {
        await propertyCheck(count: 150, input: Gen.uint64(in: 0...UInt64.max)) { (seed: UInt64) in recording(seed) { () throws in
            var gen = DocGen(seed: seed)
            let doc = gen.document()
            #expect(doc.issues() == [], "generator made an invalid document (seed \(seed))")
            var engine = Engine(host: "hv1")
            let first = try engine.apply(document: doc)
            #expect(try apply(first, to: nil) == Compiler.compile(doc))
            for step in 0..<25 {
                let before = engine.planned
                let (what, plan) = try randomEdit(&engine, &gen)
                let want = Compiler.compile(engine.document)
                #expect(engine.document.issues() == [], "edit made the document invalid: seed \(seed) step \(step) \(what)")
                // The incremental Plan, applied with every kernel check, gives the full compile.
                let got = try #require(try apply(plan, to: before), "seed \(seed) step \(step) \(what)")
                #expect(got == want, "seed \(seed) step \(step) \(what)")
                #expect(engine.planned == want)
                // Who each chain serves (what revocation looks at when it narrows): the engine's
                // indexes answer what a walk of the IR answers, for every chain before and after
                // the edit (deleted ones included), base chains and a name that is no chain.
                var names = Set((before?.chains.keys).map(Array.init) ?? []).union(want.chains.keys)
                names.formUnion(["gin-nowhere", "out-nobody", "in-"])
                let walked = IRLocalInstances(want)
                #expect(engine.localAddresses(reaching: names) == walked.localAddresses(reaching: names), "seed \(seed) step \(step) \(what)")
                // So do the interfaces and addresses, for every interface and address either IR has.
                #expect(engine.everyAddress == walked.everyAddress, "seed \(seed) step \(step) \(what)")
                let old = before.map(IRLocalInstances.init)
                for a in walked.everyAddress.union(old?.everyAddress ?? []) {
                    #expect(engine.interface(of: a) == walked.interface(of: a), "seed \(seed) step \(step) \(what): \(a)")
                }
                for iface in Set(want.maps[Naming.fromInstanceMap]?.elements.keys.map { $0 } ?? []).union(before?.maps[Naming.fromInstanceMap]?.elements.keys.map { $0 } ?? []).union(["nowhere"]) {
                    #expect(engine.addresses(onInterface: iface) == walked.addresses(onInterface: iface), "seed \(seed) step \(step) \(what): \(iface)")
                }
                // The index's count of local instances follows every edit.
                #expect(engine.localInstanceCount == engine.document.instances.values.filter { $0.host == "hv1" }.count, "seed \(seed) step \(step) \(what)")
                // So does the whole-document differ, and the two agree on what changes.
                let full = diff(from: before, to: want)
                #expect(try apply(full, to: before) == want)
                // Touching only the affected objects loses nothing: the event's Plan is exactly the
                // minimal Plan the whole differ finds.
                #expect(plan == full, "seed \(seed) step \(step) \(what)")
            }
            // An unchanged document gives an empty Plan.
            #expect(try engine.apply(document: engine.document).isEmpty)
            #expect(diff(from: engine.planned, to: engine.planned).isEmpty)
        } }
    }

    @Test func differBetweenRandomDocuments() async {
        await propertyCheck(count: 200, input: Gen.uint64(in: 0...UInt64.max)) { (seed: UInt64) in recording(seed) { () throws in
            var gen = DocGen(seed: seed)
            let a = Compiler.compile(gen.document()), b = Compiler.compile(gen.document())
            #expect(try apply(diff(from: a, to: b), to: a) == b)
            #expect(try apply(diff(from: nil, to: b), to: nil) == b)
            #expect(try apply(diff(from: a, to: nil), to: a) == nil)
            #expect(diff(from: b, to: b).isEmpty)
        } }
    }

    @Test func rejectedEventsChangeNothing() throws {
        var gen = DocGen(seed: 7)
        var engine = Engine(host: "hv1")
        _ = try engine.apply(document: gen.document())
        let before = engine
        #expect(throws: DocumentError.self) { try engine.instancePlugged(id: "bad", instance: Instance(host: "hv1", ips: [])) }
        #expect(throws: DocumentError.self) { try engine.rulesChanged(group: "g0", rules: [Rule(proto: .tcp, remote: .group("missing"))]) }
        #expect(throws: DocumentError.self) { try engine.instanceUnplugged(id: "nope") }
        #expect(engine.document == before.document)
        #expect(engine.planned == before.planned)
    }
}
