import RampartCore
import RampartNetlink

/// What the kernel holds, as IR: the read-back table translated back, so the differ can plan
/// the repair of anything someone else changed in Rampart's table.
///
/// Sets and maps translate back exactly. Rules are compared by their bytecode: a chain whose
/// rules are exactly the bytecode of the reference (desired) chain reads back as that chain;
/// any other chain reads back as a chain that can equal nothing Rampart compiles (its rules carry
/// a comment starting with a control character, which rule comments never contain), with the
/// jumps it really makes, so the differ rewrites or deletes it in a safe order.
enum Observe {
    /// Marks a rule that is not what Rampart would have written.
    static let driftMarker = "\u{1}drift"

    static func ir(_ snap: TableSnapshot, reference: RulesetIR?, layout: NFTLayout = .instanceChains) -> RulesetIR {
        read(snap, reference: reference, layout: layout).ir
    }

    /// The layout a table was written in (what `explain` and `show` read, whatever the backend's).
    static func layout(of snap: TableSnapshot) -> NFTLayout {
        snap.set(Slots.instanceGroups) != nil || snap.chain(Slots.Direction.out.dispatchChain) != nil ? .slots : .instanceChains
    }

    /// The table as the core's IR, and in the slot layout what the kernel holds of its own
    /// objects. Anything of the slot layout that is not exactly what Rampart writes (or objects
    /// of the other layout) reads back as a base chain with another hook, which makes the differ
    /// rebuild the table in one transaction: that is also how a table written by an earlier
    /// release is converted.
    ///
    /// `rulesAsElements`: group chains are expected as `RuleShapes` writes them (their rules as
    /// elements of the shapes' sets), and those sets belong to the layout.
    static func read(_ snap: TableSnapshot, reference: RulesetIR?, layout: NFTLayout,
                     rulesAsElements: Bool = false) -> (ir: RulesetIR, slots: SlotState) {
        var ir = RulesetIR()
        let lowered = layout == .slots ? Slots.objectNames : []
        let shapes = layout == .slots && rulesAsElements ? ShapeElements(snap) : nil
        // An anonymous set (someone's `tcp dport { 1, 2 }` in our table) is part of the rule that
        // uses it: repairing that rule's chain removes it; planning its deletion would be refused.
        for def in snap.sets where !def.isAnonymous && !lowered.contains(def.name) && !(shapes != nil && RuleShapes.isShapeSet(def.name)) {
            let raw = snap.elements[def.name] ?? []
            if def.isVerdictMap {
                var m = VerdictMap(name: def.name)
                for e in raw {
                    // An element whose verdict the IR cannot hold reads back as a drop, which
                    // no compiled map contains: the differ replaces it.
                    m.elements[Translate.ifname(e.key)] = e.verdict.flatMap { Translate.verdict($0) } ?? .drop
                }
                ir.maps[def.name] = m
            } else {
                guard let type = Translate.keyType(def.keyType) else {
                    // A set of a type Rampart never makes: as an empty set of the closest type,
                    // under its own name, which no desired IR has, so the differ deletes it.
                    ir.sets[def.name] = NamedSet(name: def.name, keyType: .ifname)
                    continue
                }
                let elements = raw.compactMap { Translate.element($0.key, def.keyType) }
                ir.sets[def.name] = NamedSet(name: def.name, keyType: type, elements: Set(elements))
            }
        }
        for c in snap.chains where !lowered.contains(c.name) {
            let header = ChainHeader(name: c.name, base: c.base.map(baseSpec))
            let rules = snap.rules[c.name] ?? []
            if let shapes, case .group(let d, let g)? = Slots.role(of: c.name), header.base == nil {
                // As lowered, or with the emptied shape rules the backend keeps (`RuleShapes.retaining`).
                let held = shapes.held(c.name, rules: rules)
                if let want = reference?.chains[c.name], want.header == header,
                   case let lowered = RuleShapes.lower(want.rules, group: g, direction: d, plain: { Translate.expressions($0, layout: layout) }),
                   lowered == held || RuleShapes.retaining(held, into: lowered, group: g, direction: d) == held {
                    ir.chains[c.name] = want
                } else {
                    ir.chains[c.name] = Chain(name: c.name, base: header.base, rules: rules.map(drifted))
                }
            } else if let want = reference?.chains[c.name], want.header == header,
               want.rules.count == rules.count,
               zip(want.rules, rules).allSatisfy({ w, got in
                   Translate.expressions(w, layout: layout) == Translate.withoutCounts(got.expressions) && w.comment == got.comment
               }) {
                ir.chains[c.name] = want
            } else {
                ir.chains[c.name] = Chain(name: c.name, base: header.base, rules: rules.map(drifted))
            }
        }
        guard layout == .slots else {
            // A table of the slot layout read by the other: rebuilt in one transaction (its
            // objects reference each other in ways the differ's deletion order does not know:
            // a groups map's elements jump to chains, which cannot go first).
            if Observe.layout(of: snap) == .slots {
                markForRebuild(&ir)
            }
            return (ir, SlotState())
        }
        guard var slots = liftSlots(snap, reference: reference, into: &ir), shapes?.isWellFormed ?? true else {
            markForRebuild(&ir)
            // The rebuilt table keeps the secret, so that its group keys stay the same.
            var st = SlotState()
            if let s = snap.table.tag, s.count == 16 { st.keys = SlotKeys(secret: s) }
            return (ir, st)
        }
        SetSizes.read(snap, into: &slots)
        if let shapes {
            slots.shapeSets = shapes.sets
            for c in snap.chains where c.base == nil {
                if case .group? = Slots.kind(of: c.name) { slots.groupChains[c.name] = shapes.held(c.name, rules: snap.rules[c.name] ?? []) }
            }
        }
        return (ir, slots)
    }

    /// Makes the read-back IR one the differ can only repair by rebuilding the table in one
    /// transaction: its egress chain becomes a base chain no compiled table has.
    static func markForRebuild(_ ir: inout RulesetIR) {
        ir.chains[Naming.egressChain] = Chain(name: Naming.egressChain, base: BaseChainSpec(hook: .forward, priority: Int32.min, policy: .accept))
    }

    /// The elements of the shapes' sets (`RuleShapes`), by the group chain they belong to: an
    /// element's first 16 bytes are its group's tag, and its set says the direction.
    struct ShapeElements {
        /// The shapes' sets the table holds.
        private(set) var sets: Set<String> = []
        /// Group chain → set → elements.
        private var byChain: [String: [String: Set<NFTSetElement>]] = [:]
        /// False when a shape set is not what Rampart writes, or holds an element of no group
        /// chain of the table: the table is then rebuilt (nothing can name such an element for
        /// removal otherwise).
        private(set) var isWellFormed = true

        init(_ snap: TableSnapshot) {
            var chainOfTag: [Slots.Direction: [[UInt8]: String]] = [:]
            for c in snap.chains where c.base == nil {
                if case .group(let d, let g)? = Slots.role(of: c.name) { chainOfTag[d, default: [:]][Slots.Members.tag(g)] = c.name }
            }
            for def in snap.sets where RuleShapes.isShapeSet(def.name) {
                guard let shape = RuleShapes.parse(setName: def.name), def.keyType == shape.keyType,
                      def.keyLength == UInt32(shape.keyLength), !def.isVerdictMap, def.dataType == nil, !def.isInterval, !def.isAnonymous else {
                    isWellFormed = false
                    continue
                }
                sets.insert(def.name)
                for e in snap.elements[def.name] ?? [] {
                    guard e.key.count == shape.keyLength, let chain = chainOfTag[shape.direction]?[Array(e.key[0..<16])] else {
                        isWellFormed = false
                        continue
                    }
                    byChain[chain, default: [:]][def.name, default: []].insert(NFTSetElement(key: e.key, comment: e.comment))
                }
            }
        }

        /// What a group chain holds, in the form `RuleShapes.lower` gives.
        func held(_ chain: String, rules: [NFTRule]) -> RuleShapes.Lowered {
            var l = RuleShapes.Lowered()
            l.rules = rules.map { .init(expressions: Translate.withoutCounts($0.expressions), comment: $0.comment) }
            l.elements = byChain[chain] ?? [:]
            return l
        }
    }

    /// Adds the core's logical dispatch (maps `from-inst`/`to-inst`, chains `out-<id>`/`in-<id>`)
    /// for what the slot layout's objects hold; nil when they are not exactly what Rampart writes.
    static func liftSlots(_ snap: TableSnapshot, reference: RulesetIR?, into ir: inout RulesetIR) -> SlotState? {
        var st = SlotState()
        // Objects of the instance-chains layout (or of this one before the `members` sets)
        // have no place here.
        if snap.set(Naming.fromInstanceMap) != nil || snap.set(Naming.toInstanceMap) != nil { return nil }
        if snap.sets.contains(where: { Slots.Members.group(ofSet: $0.name) != nil }) { return nil }
        guard liftMembers(snap, reference: reference, into: &ir, &st) else { return nil }
        for c in snap.chains { if case .instance? = Slots.kind(of: c.name) { return nil } }
        guard let secret = snap.table.tag, secret.count == 16 else { return nil }
        let keys = SlotKeys(secret: secret)
        st.keys = keys
        let present = Slots.Direction.allCases.map { snap.set($0.groupsMap) != nil }
        guard present[0] == present[1] else { return nil }
        guard present[0] else {
            let orphan = snap.set(Slots.instanceGroups) != nil || Slots.Direction.allCases.contains { snap.chain($0.dispatchChain) != nil }
            return orphan ? nil : st
        }
        guard let ig = snap.set(Slots.instanceGroups), ig.keyType == .ifnameMark, ig.dataType == .integer,
              ig.dataLength == UInt32(Slots.keyBytes), !ig.isVerdictMap,
              let entries = SlotState.entries(snap.elements[Slots.instanceGroups] ?? []) else { return nil }
        st.hasInstanceGroups = true
        let chainNames = Set(snap.chains.map(\.name))
        // The shared accept-all chains: exactly as Rampart writes them, or the table is rebuilt.
        for name in Slots.AcceptAll.chainNames {
            guard let c = snap.chain(name) else { continue }
            let (d, f) = Slots.AcceptAll.parse(name)!
            let want = Slots.AcceptAll.kernelRules(d, f, table: snap.table.name), held = snap.rules[name] ?? []
            guard c.base == nil, held.count == want.count, zip(held, want).allSatisfy({ h, w in
                Translate.withoutCounts(h.expressions) == w.expressions && h.comment == w.comment
            }) else { return nil }
            st.acceptAllChains.insert(name)
        }
        for d in Slots.Direction.allCases {
            guard let def = snap.set(d.groupsMap), def.keyType == .integer, def.keyLength == UInt32(Slots.groupKeyBytes),
                  def.isVerdictMap, def.dataType == nil else { return nil }
            var groups = Set<String>()
            var end = false
            for e in snap.elements[d.groupsMap] ?? [] {
                if e.key == SlotKeys.endElement.key {
                    guard e.verdict == .drop, !end else { return nil }
                    end = true
                    continue
                }
                guard let g = e.comment, !groups.contains(g), e.key == keys.mapKey(g) else { return nil }
                if e.verdict == .jump(d.groupPrefix + g), chainNames.contains(d.groupPrefix + g) {
                    // Its own chain.
                } else if case .jump(let c)? = e.verdict, let (cd, f) = Slots.AcceptAll.parse(c), cd == d,
                          st.acceptAllChains.contains(c), !chainNames.contains(d.groupPrefix + g) {
                    st.acceptsAll[d, default: [:]][g] = f
                } else {
                    return nil
                }
                groups.insert(g)
            }
            guard end else { return nil }
            for c in chainNames { if case .group(d, let g)? = Slots.role(of: c), !groups.contains(g) { return nil } }
            st.groups[d] = groups
            // The dispatch chain: slot rules 0 … S-1, then the drop.
            let rules = (snap.rules[d.dispatchChain] ?? []).map { Translate.withoutCounts($0.expressions) }
            guard let chain = snap.chain(d.dispatchChain), chain.base == nil, rules.count >= 2,
                  rules == Slots.dispatchRules(d, slots: rules.count - 1) else { return nil }
            st.dispatchSlots[d] = rules.count - 1
            ir.maps[d.logicalMap] = VerdictMap(name: d.logicalMap)
        }
        var named: [Slots.Direction: Set<String>] = [:]
        for (iface, e) in entries {
            guard let (id, groups) = SlotState.decode(e, keys: keys), st.interfaceOf[id] == nil else { return nil }
            st.interfaceOf[id] = iface
            st.entries[iface] = e
            for d in Slots.Direction.allCases {
                guard groups.count < st.dispatchSlots[d]! else { return nil }
                let name = d.instancePrefix + id
                ir.maps[d.logicalMap]!.elements[iface] = .jump(name)
                ir.chains[name] = Chain(name: name, rules: groups.map { IRRule([], .jump(d.groupPrefix + $0)) } + [IRRule([], .drop)])
                named[d, default: []].formUnion(groups)
            }
        }
        liftGroupsWithoutChains(chainNames, reference: reference, st, named: named, into: &ir)
        return st
    }

    /// The IR chains of the groups that have no chain of their own (`GroupForm`): a group whose
    /// element jumps to a shared accept-all chain holds that chain's rules, a group with no
    /// element holds none. Each reads back as the reference's chain when the reference's rules
    /// have that form (their comments are not in the kernel), else as the rules it holds, which
    /// the differ then rewrites. `named`: the groups some instance's slots name, by direction
    /// (an instance in a group without rules still jumps to its empty chain in the IR).
    /// `chainNames`: the chains the table holds.
    static func liftGroupsWithoutChains(_ chainNames: Set<String>, reference: RulesetIR?, _ st: SlotState,
                                        named: [Slots.Direction: Set<String>], into ir: inout RulesetIR) {
        for d in Slots.Direction.allCases {
            var groups = named[d] ?? []
            groups.formUnion(st.acceptsAll[d]?.keys ?? [:].keys)
            for n in reference?.chains.keys ?? [:].keys where Slots.kind(of: n) == .group(d) {
                groups.insert(String(n.dropFirst(d.groupPrefix.count)))
            }
            for g in groups {
                let n = d.groupPrefix + g
                guard !chainNames.contains(n) else { continue }
                let held = st.acceptsAll[d]?[g]
                let form: GroupForm = held.map { .acceptsAll($0) } ?? .none
                if let want = reference?.chains[n], want.base == nil, GroupForm(want.rules) == form {
                    ir.chains[n] = want
                } else if form != .none || named[d]?.contains(g) == true {
                    ir.chains[n] = Chain(name: n, rules: held.map { Slots.AcceptAll.rules(d, $0) } ?? [])
                }
            }
        }
    }

    /// The core's member sets from the `members` sets: each element belongs to the group its
    /// tag names (`Slots.Members.parse`: the comment's group, or the group a short tag spells).
    /// A member set with no element exists when the reference has it and the family's `members`
    /// set exists. False when a set, or an element whose tag names no group, is not what Rampart
    /// writes: the caller rebuilds the table.
    static func liftMembers(_ snap: TableSnapshot, reference: RulesetIR?, into ir: inout RulesetIR, _ st: inout SlotState) -> Bool {
        for f in IPFamily.allCases {
            guard let def = snap.set(Slots.Members.set(f)) else { continue }
            let want = Slots.Members.definition(f, table: snap.table.name)
            guard def.keyType == want.keyType, !def.isVerdictMap, def.dataType == nil, !def.isAnonymous else { return false }
            st.hasMembers.insert(f)
            var tags: [String: [UInt8]] = [:]
            for e in snap.elements[def.name] ?? [] {
                guard let (g, x) = Slots.Members.parse(e, f, tags: &tags) else { return false }
                st.memberSets[Slots.Members.logicalSet(f, g), default: []].insert(x)
            }
            for name in reference?.sets.keys ?? [:].keys where st.memberSets[name] == nil {
                if let (sf, _) = Slots.Members.group(ofSet: name), sf == f { st.memberSets[name] = [] }
            }
        }
        for (name, elements) in st.memberSets {
            let (f, _) = Slots.Members.group(ofSet: name)!
            ir.sets[name] = NamedSet(name: name, keyType: reference?.sets[name]?.header.keyType ?? (f == .ipv4 ? .ipv4Addr : .ipv6Addr), elements: elements)
        }
        return true
    }

    /// A base chain spec the IR can hold; hooks Rampart never uses map to a priority no compiled
    /// chain has, so such a chain never compares equal to a desired one.
    static func baseSpec(_ b: NFTBaseChainSpec) -> BaseChainSpec {
        let policy: ChainPolicy = b.policy == .accept ? .accept : .drop
        switch b.hook {
        case .prerouting where b.type == "filter": return .init(hook: .prerouting, priority: b.priority, policy: policy)
        case .forward where b.type == "filter": return .init(hook: .forward, priority: b.priority, policy: policy)
        case .input where b.type == "filter": return .init(hook: .input, priority: b.priority, policy: policy)
        case .output where b.type == "filter": return .init(hook: .output, priority: b.priority, policy: policy)
        default: return .init(hook: .forward, priority: Int32.min, policy: policy)
        }
    }

    private static func drifted(_ r: NFTRule) -> IRRule {
        var verdict: Verdict = .drop
        for e in r.expressions {
            if case .verdict(let v) = e, let t = Translate.verdict(v) { verdict = t }
        }
        return IRRule([], verdict, comment: driftMarker + (r.comment.map { " " + $0 } ?? ""))
    }
}

