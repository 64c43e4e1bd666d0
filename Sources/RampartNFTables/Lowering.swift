import RampartCore
import RampartNetlink

extension Translate {
    /// A rule's bytecode in `layout`: in the slot layout the dispatch (`iifname vmap @from-inst`)
    /// becomes the jump into the direction's dispatch chain, for instance interfaces only.
    /// Member-set lookups become lookups of the group's tag in the family's `members` set.
    static func expressions(_ r: IRRule, layout: NFTLayout) -> [NFTExpr] {
        guard layout == .slots else { return expressions(r) }
        var x = r
        var entry: Slots.Direction?
        if case .vmap(_, let map) = r.verdict, let d = Slots.Direction(logicalMap: map) {
            x.verdict = .accept
            entry = d
        }
        var out = expressions(x)
        if r.matches.contains(where: { if case .saddrInSet = $0 { true } else if case .daddrInSet = $0 { true } else { false } }) {
            out = membersLookups(out)
        }
        guard let d = entry else { return out }
        return out.dropLast() + Slots.entryRule(d)
    }

    /// `payload → r1, lookup m4-<g>` pairs rewritten as `Slots.Members.lookup`.
    private static func membersLookups(_ exprs: [NFTExpr]) -> [NFTExpr] {
        var out: [NFTExpr] = []
        var i = 0
        while i < exprs.count {
            if i + 1 < exprs.count, case .payload(.network, let offset, _, .r1) = exprs[i],
               case .lookup(let s, .r1, nil, false) = exprs[i + 1], let (f, g) = Slots.Members.group(ofSet: s) {
                let (source, _) = NFTMatch.AddressField.source.location(ipv6: f == .ipv6)
                out += Slots.Members.lookup(f, group: g, field: offset == source ? .source : .destination)
                i += 2
            } else {
                out.append(exprs[i])
                i += 1
            }
        }
        return out
    }

    static func rule(_ r: IRRule, chain: String, table: String, layout: NFTLayout) -> NFTRule {
        NFTRule(family: family, table: table, chain: chain, expressions: expressions(r, layout: layout), comment: r.comment)
    }
}

/// A core Plan as one batch in the slot layout (`Slots`), in time proportional to the Plan.
///
/// The core plans per-instance chains and interface → jump maps; here they become elements of
/// `inst-groups`: every op on them only marks an interface, and at the end of the batch each
/// marked interface's elements are brought from what the kernel holds (`SlotState`) to what
/// `desired` says (its `out-<id>` chain's group jumps), deletions first. Group chains gain and
/// lose their `groups-in`/`groups-out` element with the chain. Everything else is sent 1:1.
struct SlotLowering {
    let table: String
    let desired: RulesetIR?
    /// What the kernel holds before the batch; after `batch` returns, what it will hold once the
    /// batch commits.
    var state: SlotState
    /// The rules (with handles) the kernel holds in a group chain that the plan rewrites and may
    /// edit rule by rule (`ChainEdit`), read when first asked for; nil: flush and re-fill it.
    var heldRules: (String) -> [NFTRule]? = { _ in nil }
    /// Group chains' rules as elements of the shapes' sets (`RuleShapes`), not as rules.
    var rulesAsElements = true
    /// With `rulesAsElements`: a group chain that accepts all of a family, or nothing, has no
    /// chain of its own (`GroupForm`); off, every group chain is its own (to measure the
    /// difference).
    var sharesGroupChains = true
    /// Whether the large sets are created with a size (`SetSizes`), and the smallest one.
    var sizesSets = true
    var minimumSetSize = SetSizes.defaultMinimum
    /// After `batch`: the existing sets it would take past their size (empty: it fits). The
    /// batch cannot be sent then; the table must be rebuilt (`NFTablesBackend`).
    private(set) var outgrown: [String] = []

    private var b = Batch()
    private var previousSecret: [UInt8]?
    private var interfaces = Set<String>()
    private var instances = Set<String>()

    init(table: String, desired: RulesetIR?, state: SlotState) {
        self.table = table
        self.desired = desired
        self.state = state
    }

    /// The batch for `plan`. Throws if `desired` breaks the core's invariants (an instance whose
    /// two chains disagree on its groups): nothing is sent then.
    mutating func batch(_ plan: Plan) throws(NetlinkError) -> Batch {
        for op in Self.perInterfaceObjectsFirst(plan.ops) { try lower(op) }
        finishShapeElements()
        finishMembers()
        try finishInterfaces()
        finishDispatch()
        if sizesSets { outgrown = SetSizes.fit(&b, &state, minimum: minimumSetSize) }
        return b
    }

    private var family: NFTFamily { Translate.family }

    /// `ops` with, when they create the table, the sets and maps a plug touches created right
    /// after it. Why: the kernel finds an element message's set by walking the table's sets in
    /// creation order, comparing names (`nft_set_lookup`), and a Plan creates sets by name and
    /// maps after sets, so `inst-groups` and `mac-ifaces` came last. With a set per group that
    /// was two walks of ~400 names per plug (its commit: 50.8 → 40 µs at host-1k); with the
    /// `members` sets the table holds a dozen, and the plug's sets still come first. Creation
    /// before use still holds: these ops only create sets, the maps' end elements and the empty
    /// dispatch chains.
    static func perInterfaceObjectsFirst(_ ops: [PlanOp]) -> [PlanOp] {
        guard let table = ops.lastIndex(of: .createTable) else { return ops }
        let fixed = Set(Compiler.fixedSets.map(\.0))
        func early(_ op: PlanOp) -> Bool {
            switch op {
            case .createMap: true
            case .createSet(let h): fixed.contains(h.name)
            default: false
            }
        }
        let rest = ops[(table + 1)...]
        return ops[...table] + rest.filter(early) + rest.filter { !early($0) }
    }

    private func keys() throws(NetlinkError) -> SlotKeys {
        guard let k = state.keys else { throw .protocolError("slot layout: the table has no secret (read it back first)") }
        return k
    }

    private mutating func lower(_ op: PlanOp) throws(NetlinkError) {
        switch op {
        case .createTable:
            // A rebuilt table keeps its secret (and so its group keys): only a new one gets one.
            let secret = state.keys?.secret ?? previousSecret ?? Slots.newSecret()
            b.append(.addTable(NFTTable(family: family, name: table, comment: Translate.tableComment, tag: secret)))
            state = SlotState(keys: SlotKeys(secret: secret))
            shapeRemovals = [:]
            shapeAdditions = [:]
            settled = []
        case .deleteTable:
            Translate.append(op, to: &b, table: table, desired: desired)
            previousSecret = state.keys?.secret
            state = SlotState()
            shapeRemovals = [:]
            shapeAdditions = [:]
            settled = []
        case .createMap(let m):
            guard let d = Slots.Direction(logicalMap: m) else { return Translate.append(op, to: &b, table: table, desired: desired) }
            if !state.hasInstanceGroups {
                b.append(.addSet(Slots.instanceGroupsDefinition(table: table)))
                state.hasInstanceGroups = true
            }
            b.append(.addSet(Slots.groupsMapDefinition(d, table: table)))
            b.append(.addElements(family: family, table: table, set: d.groupsMap, elements: [SlotKeys.endElement]))
            state.groups[d] = []
            b.append(.addChain(NFTChain(family: family, table: table, name: d.dispatchChain)))
            state.dispatchSlots[d] = 0
        case .deleteMap(let m):
            guard let d = Slots.Direction(logicalMap: m) else { return Translate.append(op, to: &b, table: table, desired: desired) }
            if state.dispatchSlots.removeValue(forKey: d) != nil {
                b.append(.deleteChain(family: family, table: table, name: d.dispatchChain))
            }
            if state.groups.removeValue(forKey: d) != nil {
                b.append(.deleteSet(family: family, table: table, name: d.groupsMap))
            }
            if state.groups.isEmpty && state.hasInstanceGroups {
                b.append(.deleteSet(family: family, table: table, name: Slots.instanceGroups))
                state.hasInstanceGroups = false
                state.entries = [:]
                state.interfaceOf = [:]
            }
        case .createSet(let h):
            guard let (f, _) = Slots.Members.group(ofSet: h.name) else { return Translate.append(op, to: &b, table: table, desired: desired) }
            if !state.hasMembers.contains(f) {
                b.append(.addSet(Slots.Members.definition(f, table: table)))
                state.hasMembers.insert(f)
            }
            if state.memberSets[h.name] == nil { state.memberSets[h.name] = [] }
        case .addElements(let n, let e):
            guard let (f, g) = Slots.Members.group(ofSet: n) else { return Translate.append(op, to: &b, table: table, desired: desired) }
            guard state.memberSets[n] != nil else { throw .protocolError("slot layout: elements for member set \(n), which does not exist") }
            addMembers(f, Slots.Members.elements(g, e))
            state.memberSets[n]!.formUnion(e)
        case .removeElements(let n, let e):
            guard let (f, g) = Slots.Members.group(ofSet: n) else { return Translate.append(op, to: &b, table: table, desired: desired) }
            removeMembers(f, Slots.Members.elements(g, e))
            state.memberSets[n]?.subtract(e)
        case .deleteSet(let n):
            guard let (f, g) = Slots.Members.group(ofSet: n) else { return Translate.append(op, to: &b, table: table, desired: desired) }
            // The set is the group's elements in `members`: each is named (the kernel has no
            // "delete by tag"); the `members` set itself stays while the table lives.
            if let gone = state.memberSets.removeValue(forKey: n) {
                removeMembers(f, Slots.Members.elements(g, gone.sorted()))
            }
        case .addMapElements(let m, let e) where Slots.Direction(logicalMap: m) != nil:
            interfaces.formUnion(e.keys)
        case .removeMapElements(let m, let keys) where Slots.Direction(logicalMap: m) != nil:
            interfaces.formUnion(keys)
        case .createChain(let h) where h.base == nil:
            switch Slots.role(of: h.name) {
            case .instance(_, let id)?: instances.insert(id)
            case .group(let d, let g)?:
                if rulesAsElements { return try settleGroupChain(h.name, d, g) }
                Translate.append(op, to: &b, table: table, desired: desired)
                if state.groups[d]?.contains(g) == false {
                    b.append(.addElements(family: family, table: table, set: d.groupsMap, elements: [try keys().groupElement(d, g)]))
                    state.groups[d]?.insert(g)
                }
            case nil: Translate.append(op, to: &b, table: table, desired: desired)
            }
        case .rewriteChain(let n, _):
            if case .instance(_, let id)? = Slots.role(of: n), desired?.chains[n]?.base == nil {
                instances.insert(id)
                return
            }
            if rulesAsElements, case .group(let d, let g)? = Slots.role(of: n) {
                return try settleGroupChain(n, d, g)
            }
            if let held = heldRules(n), case .rewriteChain(_, let rules) = op {
                let wanted = rules.map { Translate.rule($0, chain: n, table: table, layout: .slots) }
                if let edit = ChainEdit.between(held: held, wanted: wanted) {
                    b.operations += edit.operations(wanted: wanted)
                    return
                }
            }
            Translate.append(op, to: &b, table: table, desired: desired) { r, c in
                Translate.rule(r, chain: c, table: table, layout: .slots)
            }
        case .deleteChain(let n):
            switch Slots.role(of: n) {
            case .instance(_, let id)?: instances.insert(id)
            case .group(let d, let g)?:
                if rulesAsElements { return try settleGroupChain(n, d, g) }
                if state.groups[d]?.contains(g) == true {
                    b.append(.deleteElements(family: family, table: table, set: d.groupsMap, elements: [NFTSetElement(key: try keys().mapKey(g))]))
                    state.groups[d]?.remove(g)
                }
                Translate.append(op, to: &b, table: table, desired: desired)
            case nil: Translate.append(op, to: &b, table: table, desired: desired)
            }
        default:
            Translate.append(op, to: &b, table: table, desired: desired)
        }
    }

    /// Group chains this batch has brought to what `desired` holds (see `settleGroupChain`).
    private var settled = Set<String>()

    /// Brings group `g`'s chain of direction `d` (named `n`) from the form the kernel holds it
    /// in to the form of its rules in `desired` (`GroupForm`), at the first op of the plan that
    /// creates, rewrites or deletes it; later ops for it in the same batch (a daemon's drain
    /// joins several plans) find it settled. Its own chain is created before the element that
    /// jumps to it and deleted after the element is gone (the kernel refuses to delete a chain
    /// something jumps to); an element that changes target is removed and added again.
    private mutating func settleGroupChain(_ n: String, _ d: Slots.Direction, _ g: String) throws(NetlinkError) {
        guard settled.insert(n).inserted else { return }
        let rules = desired?.chains[n]?.rules
        let old = state.form(d, g, chain: n)
        let new = sharesGroupChains ? GroupForm(rules) : (rules == nil ? .none : .own)
        if new == .own {
            if old != .own {
                b.append(.addChain(NFTChain(family: family, table: table, name: n)))
                state.groupChains[n] = RuleShapes.Lowered()
            }
            try rewriteGroupChain(n, d, g, rules ?? [], created: old != .own)
        }
        let (was, target) = (old.target(d, g), new.target(d, g))
        if was != target, state.groups[d] != nil {
            if was != nil {
                b.append(.deleteElements(family: family, table: table, set: d.groupsMap, elements: [NFTSetElement(key: try keys().mapKey(g))]))
                state.groups[d]?.remove(g)
            }
            if let target {
                if case .acceptsAll(let f) = new { addAcceptAllChain(d, f) }
                b.append(.addElements(family: family, table: table, set: d.groupsMap,
                                      elements: [NFTSetElement(key: try keys().mapKey(g), verdict: target, comment: g)]))
                state.groups[d]?.insert(g)
            }
        }
        if case .acceptsAll(let f) = new { state.acceptsAll[d, default: [:]][g] = f } else { state.acceptsAll[d]?[g] = nil }
        if old == .own && new != .own {
            // Its elements live in the shared sets: each is named, or it would outlive the chain.
            guard let have = state.groupChains.removeValue(forKey: n) else {
                throw .protocolError("slot layout: group chain \(n) is deleted but what it holds is not known (read it back first)")
            }
            for (set, elements) in have.elements { removeShapeElements(set, elements) }
            b.append(.deleteChain(family: family, table: table, name: n))
        }
    }

    /// Creates the shared chain for groups of direction `d` that accept all of `families`, if
    /// the table does not have it yet.
    private mutating func addAcceptAllChain(_ d: Slots.Direction, _ families: Set<IPFamily>) {
        let name = Slots.AcceptAll.chain(d, families)
        guard state.acceptAllChains.insert(name).inserted else { return }
        b.append(.addChain(NFTChain(family: family, table: table, name: name)))
        for r in Slots.AcceptAll.kernelRules(d, families, table: table) { b.append(.addRule(r)) }
    }

    /// A group chain's new rules as shape rules and elements (`RuleShapes`): only what differs
    /// from what the kernel holds is sent — the chain's rules only when its shapes changed (edited
    /// rule by rule when they can be read, else flushed and re-filled), its elements as a delta.
    /// `created`: the chain is new in this batch (nothing to read, nothing to flush).
    private mutating func rewriteGroupChain(_ n: String, _ d: Slots.Direction, _ g: String, _ rules: [IRRule],
                                            created: Bool) throws(NetlinkError) {
        guard let have = state.groupChains[n] else {
            throw .protocolError("slot layout: group chain \(n) is rewritten but what it holds is not known (read it back first)")
        }
        // Emptied shape rules stay (up to a few): adding a rule of that shape again is then an
        // element, which costs the kernel no walk of the table (`RuleShapes.retaining`).
        let want = RuleShapes.retaining(have, into: RuleShapes.lower(rules, group: g, direction: d) { Translate.expressions($0, layout: .slots) },
                                        group: g, direction: d)
        // In name order: the same plan creates the sets in the same order (`nft list` lists them so).
        // A set's definition is all in its name (`RuleShapes.parse`).
        for set in want.elements.keys.sorted() where !state.shapeSets.contains(set) {
            guard let shape = RuleShapes.parse(setName: set) else { throw .protocolError("slot layout: no shape is named \(set)") }
            b.append(.addSet(shape.definition(table: table)))
            state.shapeSets.insert(set)
        }
        if have.rules != want.rules {
            let wanted = want.rules.map { NFTRule(family: family, table: table, chain: n, expressions: $0.expressions, comment: $0.comment) }
            if created {
                for r in wanted { b.append(.addRule(r)) }
            } else if let held = heldRules(n), let edit = ChainEdit.between(held: held, wanted: wanted) {
                b.operations += edit.operations(wanted: wanted)
            } else {
                b.append(.flushChain(family: family, table: table, name: n))
                for r in wanted { b.append(.addRule(r)) }
            }
        }
        for set in Set(have.elements.keys).union(want.elements.keys) {
            let old = have.elements[set] ?? [], new = want.elements[set] ?? []
            removeShapeElements(set, old.subtracting(new))
            addShapeElements(set, new.subtracting(old))
        }
        state.groupChains[n] = want
    }

    /// Shape-set elements to remove and to add, by set, sent at the end of the batch as the net
    /// change (as the member elements are, for the same reason: a drain joins several plans).
    private var shapeRemovals: [String: NetElements] = [:]
    private var shapeAdditions: [String: NetElements] = [:]

    private mutating func addShapeElements(_ set: String, _ elements: Set<NFTSetElement>) {
        for e in elements.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            if !shapeRemovals[set, default: NetElements()].remove(e) { shapeAdditions[set, default: NetElements()].insert(e) }
        }
    }

    private mutating func removeShapeElements(_ set: String, _ elements: Set<NFTSetElement>) {
        for e in elements.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            if !shapeAdditions[set, default: NetElements()].remove(e) { shapeRemovals[set, default: NetElements()].insert(e) }
        }
    }

    /// Removals first: an element whose comment changed is the same key removed and added.
    private mutating func finishShapeElements() {
        for set in shapeRemovals.keys.sorted() {
            if let e = shapeRemovals[set]?.elements, !e.isEmpty { b.append(.deleteElements(family: family, table: table, set: set, elements: e)) }
        }
        for set in shapeAdditions.keys.sorted() {
            if let e = shapeAdditions[set]?.elements, !e.isEmpty { b.append(.addElements(family: family, table: table, set: set, elements: e)) }
        }
    }

    /// The groups `desired` gives the instance on `iface` (its kernel id and group ids), or nil
    /// when no instance is there.
    private func desiredInstance(_ iface: String) throws(NetlinkError) -> (id: String, groups: [String])? {
        guard let ir = desired,
              case .jump(let outChain)? = ir.maps[Naming.fromInstanceMap]?.elements[iface],
              case .jump(let inChain)? = ir.maps[Naming.toInstanceMap]?.elements[iface],
              case .instance(.out, let id)? = Slots.role(of: outChain), inChain == Slots.Direction.in.instancePrefix + id,
              let outRules = ir.chains[outChain]?.rules, let inRules = ir.chains[inChain]?.rules else {
            if desired?.maps[Naming.fromInstanceMap]?.elements[iface] != nil || desired?.maps[Naming.toInstanceMap]?.elements[iface] != nil {
                throw .protocolError("slot layout: interface \(iface) is dispatched in one direction only, or not to its instance's chains")
            }
            return nil
        }
        func groups(_ rules: [IRRule], _ d: Slots.Direction) throws(NetlinkError) -> [String] {
            guard rules.last == IRRule([], .drop) else { throw .protocolError("slot layout: chain of \(id) does not end in drop") }
            var out: [String] = []
            for r in rules.dropLast() {
                guard r.matches.isEmpty, case .jump(let c) = r.verdict, case .group(d, let g)? = Slots.role(of: c) else {
                    throw .protocolError("slot layout: chain of \(id) holds a rule other than a group jump")
                }
                out.append(g)
            }
            return out
        }
        let g = try groups(outRules, .out)
        guard try groups(inRules, .in) == g, g.count <= Instance.maxGroups else {
            throw .protocolError("slot layout: instance \(id) has different or more than \(Instance.maxGroups) groups in its two directions")
        }
        return (id, g)
    }

    /// Brings the marked interfaces' `inst-groups` elements to `desired`.
    private mutating func finishInterfaces() throws(NetlinkError) {
        for id in instances { if let i = state.interfaceOf[id] { interfaces.insert(i) } }
        guard !interfaces.isEmpty else { return }
        var removals: [NFTSetElement] = [], additions: [NFTSetElement] = []
        for iface in interfaces.sorted() {
            let want = try desiredInstance(iface)
            let have = state.entries[iface] ?? [:]
            var wanted: SlotEntries = [:]
            if let w = want { wanted = state.entries(instance: w.id, groups: w.groups, keys: try keys()) }
            for (k, v) in have where wanted[k].map({ $0 != v }) ?? true {
                removals.append(NFTSetElement(key: Slots.key(iface, k)))
            }
            for (k, v) in wanted where have[k].map({ $0 != v }) ?? true {
                additions.append(NFTSetElement(key: Slots.key(iface, k), data: v.value, comment: v.comment))
            }
            // `have` is what this state wrote or checked when it read the table back: its keys
            // need no second check.
            if let old = SlotState.decode(have, keys: nil), state.interfaceOf[old.instance] == iface { state.interfaceOf[old.instance] = nil }
            state.entries[iface] = wanted.isEmpty ? nil : wanted
            if let w = want {
                state.interfaceOf[w.id] = iface
                for d in Slots.Direction.allCases where (state.dispatchSlots[d] ?? 0) < w.groups.count + 1 {
                    needSlots[d] = max(needSlots[d] ?? 0, w.groups.count + 1)
                }
            }
        }
        guard state.hasInstanceGroups || (removals.isEmpty && additions.isEmpty) else {
            throw .protocolError("slot layout: instance dispatch without its maps")
        }
        if !removals.isEmpty { b.append(.deleteElements(family: family, table: table, set: Slots.instanceGroups, elements: removals)) }
        if !additions.isEmpty { b.append(.addElements(family: family, table: table, set: Slots.instanceGroups, elements: additions)) }
    }

    private var needSlots: [Slots.Direction: Int] = [:]

    /// Member elements to remove and to add, by family: sent as one message each per family at
    /// the end of the batch, however many groups the plan touched (a plug of an instance in 5
    /// groups is one message, not 5). Only the net change goes: a daemon's drain concatenates
    /// the plans of several events, so one element can be added by one and removed by the next
    /// (or the reverse); sending both, removals first, made the kernel refuse the batch (ENOENT
    /// for an element it never held) and the daemon repair by a whole converge.
    private var memberRemovals: [IPFamily: NetElements] = [:]
    private var memberAdditions: [IPFamily: NetElements] = [:]

    /// Elements in the order first given, each once (one given, taken away and given again
    /// keeps its first place). One hash lookup per call: a cold apply sends every member and
    /// instance element through here (~40,000 at host-5k).
    struct NetElements {
        private var order: [NFTSetElement] = []
        private var present: [Bool] = []
        private var position: [NFTSetElement: Int] = [:]
        private var count = 0
        var isEmpty: Bool { count == 0 }
        mutating func insert(_ e: NFTSetElement) {
            if let i = position[e] {
                if !present[i] { present[i] = true; count += 1 }
            } else {
                position[e] = order.count
                order.append(e)
                present.append(true)
                count += 1
            }
        }
        /// Removes `e`; true if it was there.
        mutating func remove(_ e: NFTSetElement) -> Bool {
            guard count > 0, let i = position[e], present[i] else { return false }
            present[i] = false
            count -= 1
            return true
        }
        var elements: [NFTSetElement] {
            count == order.count ? order : zip(order, present).compactMap { $1 ? $0 : nil }
        }
    }

    /// `elements` join the kernel's set by the end of the batch: an element this batch removed
    /// (so the kernel holds it) stays as it is.
    private mutating func addMembers(_ f: IPFamily, _ elements: [NFTSetElement]) {
        for e in elements {
            if !memberRemovals[f, default: NetElements()].remove(e) { memberAdditions[f, default: NetElements()].insert(e) }
        }
    }

    /// `elements` leave the kernel's set by the end of the batch: an element this batch added
    /// (so the kernel never held it) is simply not sent.
    private mutating func removeMembers(_ f: IPFamily, _ elements: [NFTSetElement]) {
        for e in elements {
            if !memberAdditions[f, default: NetElements()].remove(e) { memberRemovals[f, default: NetElements()].insert(e) }
        }
    }

    private mutating func finishMembers() {
        for f in IPFamily.allCases {
            if let e = memberRemovals[f]?.elements, !e.isEmpty { b.append(.deleteElements(family: family, table: table, set: Slots.Members.set(f), elements: e)) }
        }
        for f in IPFamily.allCases {
            if let e = memberAdditions[f]?.elements, !e.isEmpty { b.append(.addElements(family: family, table: table, set: Slots.Members.set(f), elements: e)) }
        }
    }

    /// Rewrites a dispatch chain that has fewer slot rules than an instance now needs (or none
    /// yet: a new chain gets at least one, for the end marker of an instance without groups).
    private mutating func finishDispatch() {
        for d in Slots.Direction.allCases {
            guard let have = state.dispatchSlots[d] else { continue }
            let want = max(have, needSlots[d] ?? 0, 1)
            guard want != have else { continue }
            b.append(.flushChain(family: family, table: table, name: d.dispatchChain))
            for (k, x) in Slots.dispatchRules(d, slots: want).enumerated() {
                b.append(.addRule(NFTRule(family: family, table: table, chain: d.dispatchChain, expressions: x,
                                          comment: k < want ? Slots.slotComment(d, k) : "an instance interface without its slots")))
            }
            state.dispatchSlots[d] = want
        }
    }
}
