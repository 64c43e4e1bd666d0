/// One operation of a Plan. Operations are backend-neutral; the nftables backend turns each into
/// netlink messages of one batch (one transaction), the renderer into `nft -f` lines.
public enum PlanOp: Hashable, Sendable {
    case createTable
    /// Removes the table and everything in it (`flush`).
    case deleteTable
    case createSet(SetHeader)
    case deleteSet(String)
    case addElements(String, [SetElement])
    case removeElements(String, [SetElement])
    /// Creates an empty interface → verdict map.
    case createMap(String)
    case deleteMap(String)
    case addMapElements(String, [String: Verdict])
    case removeMapElements(String, [String])
    /// Creates an empty chain (a base chain with its hook).
    case createChain(ChainHeader)
    /// Flush the chain and add all these rules, in one op: a changed chain is always rewritten
    /// whole, so there are no rule handles to track and no moment where the chain is half-done.
    case rewriteChain(String, [IRRule])
    case deleteChain(String)
}

/// An ordered list of operations that takes the committed ruleset to the desired one.
///
/// Order (see `PlanBuilder`): table, sets, maps, set elements, empty chains, chain rewrites,
/// map element removals then additions, chain deletions, set element removals, map and set
/// deletions. So everything a rule or map element references exists before it is referenced,
/// and nothing is deleted while a rule or map element still references it.
public struct Plan: Hashable, Sendable {
    /// The operations, in the order they must be executed.
    public var ops: [PlanOp]

    public init(ops: [PlanOp] = []) { self.ops = ops }

    /// True when nothing needs to change.
    public var isEmpty: Bool { ops.isEmpty }

    /// Counts by kind, for the CLI's one-line output.
    public var summary: PlanSummary { PlanSummary(self) }
}

/// How much a Plan changes, by kind.
public struct PlanSummary: Hashable, Sendable, CustomStringConvertible {
    // Counts per kind of operation; element counts are summed over all sets (or maps).
    /// Chains created (each new chain, empty at first).
    public var chainsCreated = 0
    /// Chains flushed and re-filled.
    public var chainsRewritten = 0
    /// Chains deleted.
    public var chainsDeleted = 0
    /// Rules written by rewrites (each rewrite re-adds all rules of its chain, unless the
    /// backend edits the chain rule by rule: then only the new rules).
    public var rulesWritten = 0
    /// Rules deleted one by one by rewrites that a backend sent as edits (nftables' group
    /// chains); 0 for a rewrite sent whole.
    public var rulesDeleted = 0
    /// Sets and maps created.
    public var setsCreated = 0
    /// Sets and maps deleted.
    public var setsDeleted = 0
    /// Set elements added.
    public var elementsAdded = 0
    /// Set elements removed.
    public var elementsRemoved = 0
    /// Dispatch-map entries added.
    public var mapElementsAdded = 0
    /// Dispatch-map entries removed.
    public var mapElementsRemoved = 0
    /// The table is created (or, with `tableDeleted`, rebuilt).
    public var tableCreated = false
    /// The table is deleted.
    public var tableDeleted = false

    public init(_ plan: Plan) {
        for op in plan.ops { count(op) }
    }

    /// No operations yet.
    public init() {}

    /// Adds one op to the counts.
    public mutating func count(_ op: PlanOp) {
        switch op {
        case .createTable: tableCreated = true
        case .deleteTable: tableDeleted = true
        case .createSet, .createMap: setsCreated += 1
        case .deleteSet, .deleteMap: setsDeleted += 1
        case .addElements(_, let e): elementsAdded += e.count
        case .removeElements(_, let e): elementsRemoved += e.count
        case .addMapElements(_, let e): mapElementsAdded += e.count
        case .removeMapElements(_, let k): mapElementsRemoved += k.count
        case .createChain: chainsCreated += 1
        case .rewriteChain(_, let r): chainsRewritten += 1; rulesWritten += r.count
        case .deleteChain: chainsDeleted += 1
        }
    }

    public var description: String {
        if tableDeleted && !tableCreated { return "table deleted" }
        var parts: [String] = []
        if tableCreated { parts.append(tableDeleted ? "table rebuilt" : "table created") }
        let rules = rulesDeleted == 0 ? "\(rulesWritten) rules" : "\(rulesWritten) rules written, \(rulesDeleted) deleted"
        parts.append("chains: \(chainsCreated) created, \(chainsRewritten) rewritten (\(rules)), \(chainsDeleted) deleted")
        parts.append("sets/maps: \(setsCreated) created, \(setsDeleted) deleted")
        parts.append("elements: +\(elementsAdded) -\(elementsRemoved)")
        parts.append("dispatch: +\(mapElementsAdded) -\(mapElementsRemoved)")
        return parts.joined(separator: "; ")
    }
}

/// Collects operations by kind and emits them in the one safe order. Both the whole-document
/// differ and the incremental events build their Plans through it, so they cannot disagree on
/// ordering.
struct PlanBuilder {
    var createTable = false
    var deleteTable = false
    var createSets: [SetHeader] = []
    var createMaps: [String] = []
    var addElements: [String: [SetElement]] = [:]
    var createChains: [ChainHeader] = []
    var rewrites: [String: [IRRule]] = [:]
    var removeMapElements: [String: [String]] = [:]
    var addMapElements: [String: [String: Verdict]] = [:]
    /// Chains to delete, with the chains their rules jump to (deletion order depends on it).
    var deleteChains: [String: [String]] = [:]
    var removeElements: [String: [SetElement]] = [:]
    var deleteMaps: [String] = []
    var deleteSets: [String] = []

    /// The Plan, each kind sorted by name so that equal inputs give identical Plans.
    func build() -> Plan {
        if deleteTable { return Plan(ops: [.deleteTable]) }
        var ops: [PlanOp] = []
        if createTable { ops.append(.createTable) }
        ops += createSets.sorted { $0.name < $1.name }.map { .createSet($0) }
        ops += createMaps.sorted().map { .createMap($0) }
        for (n, e) in addElements.sorted(by: { $0.key < $1.key }) where !e.isEmpty { ops.append(.addElements(n, e.sorted())) }
        ops += createChains.sorted { $0.name < $1.name }.map { .createChain($0) }
        for (n, r) in rewrites.sorted(by: { $0.key < $1.key }) { ops.append(.rewriteChain(n, r)) }
        for (n, k) in removeMapElements.sorted(by: { $0.key < $1.key }) where !k.isEmpty { ops.append(.removeMapElements(n, k.sorted())) }
        for (n, e) in addMapElements.sorted(by: { $0.key < $1.key }) where !e.isEmpty { ops.append(.addMapElements(n, e)) }
        ops += deletionOrder().map { .deleteChain($0) }
        for (n, e) in removeElements.sorted(by: { $0.key < $1.key }) where !e.isEmpty { ops.append(.removeElements(n, e.sorted())) }
        ops += deleteMaps.sorted().map { .deleteMap($0) }
        ops += deleteSets.sorted().map { .deleteSet($0) }
        return Plan(ops: ops)
    }

    /// Deleted chains ordered so that a chain goes only after every deleted chain that jumps to it
    /// (the kernel refuses to delete a chain that is still a jump target).
    func deletionOrder() -> [String] {
        var incoming: [String: Int] = [:]
        for (name, targets) in deleteChains { for t in Set(targets) where deleteChains[t] != nil && t != name { incoming[t, default: 0] += 1 } }
        var ready = deleteChains.keys.filter { incoming[$0, default: 0] == 0 }.sorted(by: >)
        var out: [String] = []
        while let c = ready.popLast() {
            out.append(c)
            var next: [String] = []
            for t in Set(deleteChains[c]!) where deleteChains[t] != nil && t != c {
                incoming[t]! -= 1
                if incoming[t]! == 0 { next.append(t) }
            }
            ready = (ready + next).sorted(by: >)
        }
        // Jump loops are impossible in a valid ruleset; should one appear, still delete everything.
        if out.count < deleteChains.count { out += deleteChains.keys.filter { !out.contains($0) }.sorted() }
        return out
    }

    /// Records the change of one chain from `old` to `new` (either may be absent).
    mutating func chain(old: Chain?, new: Chain?) {
        switch (old, new) {
        case (nil, let n?):
            createChains.append(n.header)
            if !n.rules.isEmpty { rewrites[n.name] = n.rules }
        case (let o?, nil):
            deleteChains[o.name] = o.rules.compactMap(\.verdict.chainReference)
        case (let o?, let n?):
            // Headers never differ here: `diff` rebuilds the table when one does.
            if o.rules != n.rules {
                rewrites[n.name] = n.rules
            }
        case (nil, nil):
            break
        }
    }

    /// Records the change of one set.
    mutating func set(old: NamedSet?, new: NamedSet?) {
        switch (old, new) {
        case (nil, let n?):
            createSets.append(n.header)
            if !n.elements.isEmpty { addElements[n.name] = Array(n.elements) }
        case (let o?, nil):
            deleteSets.append(o.name)
        case (let o?, let n?):
            let add = n.elements.subtracting(o.elements)
            let del = o.elements.subtracting(n.elements)
            if !add.isEmpty { addElements[n.name, default: []] += add }
            if !del.isEmpty { removeElements[n.name, default: []] += del }
        case (nil, nil):
            break
        }
    }

    /// Records the change of one map key.
    mutating func mapKey(_ map: String, _ key: String, old: Verdict?, new: Verdict?) {
        guard old != new else { return }
        // A changed value is a removal and an addition: the kernel refuses to add a key that exists.
        if old != nil { removeMapElements[map, default: []].append(key) }
        if let n = new { addMapElements[map, default: [:]][key] = n }
    }
}

/// Why `apply` refused a Plan.
public struct PlanError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Index of the offending operation.
    public var index: Int
    /// What the kernel would have refused.
    public var reason: String
    public var description: String { "plan op \(index): \(reason)" }
}

/// Applies `plan` to `ir` (nil: no table) as the kernel would, and refuses it as the kernel would:
/// an object created twice, an operation on a missing object, a rule or map element that
/// references a chain/set/map that does not exist (yet), an object deleted while a rule or map
/// element still references it, an element added twice or removed while absent.
/// Used by the property tests and by backends' fakes; cost is proportional to the IR.
public func apply(_ plan: Plan, to ir: RulesetIR?) throws(PlanError) -> RulesetIR? {
    var cur = ir
    for (i, op) in plan.ops.enumerated() {
        func fail(_ r: String) -> PlanError { PlanError(index: i, reason: r) }
        if case .createTable = op {
            guard cur == nil else { throw fail("table exists") }
            cur = RulesetIR()
            continue
        }
        guard var t = cur else { throw fail("no table") }
        func referencedByRules(_ name: String, isChain: Bool) -> String? {
            for c in t.chains.values {
                for r in c.rules {
                    if isChain ? r.verdict.chainReference == name : r.setReferences.contains(name) { return c.name }
                }
            }
            return nil
        }
        switch op {
        case .createTable: break
        case .deleteTable: cur = nil; continue
        case .createSet(let h):
            guard t.sets[h.name] == nil, t.maps[h.name] == nil else { throw fail("set \(h.name) exists") }
            t.sets[h.name] = NamedSet(name: h.name, keyType: h.keyType)
        case .deleteSet(let n):
            guard t.sets[n] != nil else { throw fail("set \(n) does not exist") }
            if let c = referencedByRules(n, isChain: false) { throw fail("set \(n) deleted while chain \(c) references it") }
            t.sets[n] = nil
        case .addElements(let n, let e):
            guard var s = t.sets[n] else { throw fail("set \(n) does not exist") }
            for x in e {
                guard x.keyType == s.keyType else { throw fail("element \(x) has the wrong type for set \(n)") }
                guard s.elements.insert(x).inserted else { throw fail("element \(x) already in set \(n)") }
            }
            t.sets[n] = s
        case .removeElements(let n, let e):
            guard var s = t.sets[n] else { throw fail("set \(n) does not exist") }
            for x in e { guard s.elements.remove(x) != nil else { throw fail("element \(x) not in set \(n)") } }
            t.sets[n] = s
        case .createMap(let n):
            guard t.sets[n] == nil, t.maps[n] == nil else { throw fail("map \(n) exists") }
            t.maps[n] = VerdictMap(name: n)
        case .deleteMap(let n):
            guard t.maps[n] != nil else { throw fail("map \(n) does not exist") }
            if let c = referencedByRules(n, isChain: false) { throw fail("map \(n) deleted while chain \(c) references it") }
            t.maps[n] = nil
        case .addMapElements(let n, let e):
            guard var m = t.maps[n] else { throw fail("map \(n) does not exist") }
            for (k, v) in e {
                guard m.elements[k] == nil else { throw fail("key \(k) already in map \(n)") }
                guard let target = v.chainReference else { throw fail("map \(n) element \(k) is not a jump or goto") }
                guard t.chains[target] != nil else { throw fail("map \(n) element \(k) jumps to missing chain \(target)") }
                m.elements[k] = v
            }
            t.maps[n] = m
        case .removeMapElements(let n, let keys):
            guard var m = t.maps[n] else { throw fail("map \(n) does not exist") }
            for k in keys { guard m.elements.removeValue(forKey: k) != nil else { throw fail("key \(k) not in map \(n)") } }
            t.maps[n] = m
        case .createChain(let h):
            guard t.chains[h.name] == nil else { throw fail("chain \(h.name) exists") }
            t.chains[h.name] = Chain(name: h.name, base: h.base)
        case .rewriteChain(let n, let rules):
            guard t.chains[n] != nil else { throw fail("chain \(n) does not exist") }
            for r in rules {
                if let c = r.verdict.chainReference {
                    guard t.chains[c] != nil else { throw fail("chain \(n) jumps to missing chain \(c)") }
                    guard t.chains[c]!.base == nil else { throw fail("chain \(n) jumps to base chain \(c)") }
                }
                for s in r.matches.compactMap(\.setReference) where t.sets[s] == nil {
                    throw fail("chain \(n) references missing set \(s)")
                }
                if let m = r.verdict.mapReference, t.maps[m] == nil { throw fail("chain \(n) references missing map \(m)") }
            }
            t.chains[n]!.rules = rules
        case .deleteChain(let n):
            guard t.chains[n] != nil else { throw fail("chain \(n) does not exist") }
            if let c = referencedByRules(n, isChain: true), c != n { throw fail("chain \(n) deleted while chain \(c) jumps to it") }
            for m in t.maps.values {
                if let k = m.elements.first(where: { $0.value.chainReference == n })?.key {
                    throw fail("chain \(n) deleted while map \(m.name) key \(k) jumps to it")
                }
            }
            t.chains[n] = nil
        }
        cur = t
    }
    return cur
}

/// Applies a Plan produced by Rampart itself without re-checking references: the Engine keeps
/// its IR in step this way in time proportional to the Plan, not the IR.
func applyUnchecked(_ plan: Plan, to ir: inout RulesetIR) {
    for op in plan.ops {
        switch op {
        case .createTable: ir = RulesetIR()
        case .deleteTable: ir = RulesetIR()
        case .createSet(let h): ir.sets[h.name] = NamedSet(name: h.name, keyType: h.keyType)
        case .deleteSet(let n): ir.sets[n] = nil
        case .addElements(let n, let e): ir.sets[n]!.elements.formUnion(e)
        case .removeElements(let n, let e): ir.sets[n]!.elements.subtract(e)
        case .createMap(let n): ir.maps[n] = VerdictMap(name: n)
        case .deleteMap(let n): ir.maps[n] = nil
        case .addMapElements(let n, let e): ir.maps[n]!.elements.merge(e) { $1 }
        case .removeMapElements(let n, let k): for key in k { ir.maps[n]!.elements[key] = nil }
        case .createChain(let h): ir.chains[h.name] = Chain(name: h.name, base: h.base)
        case .rewriteChain(let n, let r): ir.chains[n]!.rules = r
        case .deleteChain(let n): ir.chains[n] = nil
        }
    }
}
