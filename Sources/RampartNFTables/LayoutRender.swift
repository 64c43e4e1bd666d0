import RampartCore
import RampartNetlink

/// `rampart diff` in the slot layout: the Plan's ops that are sent as they are, in nft syntax
/// (`Render.plan`), then what the slot layout sends for the per-instance part, in nft-like
/// syntax. Not loadable with `nft -f` (nft cannot write chained lookups), but it says exactly
/// which elements and rules change.
enum SlotRender {
    /// The Plan's ops that the slot layout sends as they are (the dispatch rules of base chains
    /// shown as sent); the per-instance part is left out.
    static func sentAsIs(_ plan: Plan) -> Plan {
        var kept = Plan()
        for op in plan.ops where isSentAsIs(op) {
            if case .rewriteChain(let n, let rules) = op {
                kept.ops.append(.rewriteChain(n, rules.map(entry)))
            } else {
                kept.ops.append(op)
            }
        }
        return kept
    }

    /// Whether the slot layout sends `op` as it is (a rewrite with its dispatch rules replaced),
    /// rather than as elements of its own objects.
    static func isSentAsIs(_ op: PlanOp) -> Bool {
        switch op {
        case .createMap(let m), .deleteMap(let m), .addMapElements(let m, _), .removeMapElements(let m, _):
            return Slots.Direction(logicalMap: m) == nil
        case .createChain(let h):
            if case .instance? = Slots.kind(of: h.name), h.base == nil { return false }
            return true
        case .deleteChain(let n), .rewriteChain(let n, _):
            if case .instance? = Slots.kind(of: n) { return false }
            return true
        case .createSet(let h):
            return Slots.Members.group(ofSet: h.name) == nil
        case .deleteSet(let n), .addElements(let n, _), .removeElements(let n, _):
            return Slots.Members.group(ofSet: n) == nil
        default:
            return true
        }
    }

    /// The `members` sets: their elements count (and print) as set elements.
    static func isMembers(_ set: String) -> Bool { set == Slots.Members.set4 || set == Slots.Members.set6 }

    /// What the batch changes, counted as `apply` prints it: the slot layout's elements count as
    /// dispatch entries, its chains and maps as chains and maps. Counted in place: this runs on
    /// every commit (a plug's hot path), so no Plan is copied.
    static func summary(_ plan: Plan, batch: Batch) -> PlanSummary {
        var s = PlanSummary()
        let edits = EditedChains(batch)
        for op in plan.ops where isSentAsIs(op) {
            if case .rewriteChain(let n, _) = op, let e = edits.counts[n] {
                s.chainsRewritten += 1
                s.rulesWritten += e.written
                s.rulesDeleted += e.deleted
            } else if case .rewriteChain(let n, _) = op, case .group? = Slots.kind(of: n), !edits.touched.contains(n) {
                // Its rules as elements, and none of its rules changed: the elements are counted below.
                s.chainsRewritten += 1
            } else if isGroupChainCreatedOrDeleted(op) {
                // Counted below from the batch: a group chain may have no chain of its own (`GroupForm`).
            } else {
                s.count(op)
            }
        }
        for op in batch.operations {
            switch op {
            case .addSet(let d) where Slots.objectNames.contains(d.name): s.setsCreated += 1
            case .deleteSet(_, _, let n) where Slots.objectNames.contains(n): s.setsDeleted += 1
            case .addElements(_, _, let set, let e) where isMembers(set) || RuleShapes.isShapeSet(set): s.elementsAdded += e.count
            case .deleteElements(_, _, let set, let e) where isMembers(set) || RuleShapes.isShapeSet(set): s.elementsRemoved += e.count
            case .addSet(let d) where RuleShapes.isShapeSet(d.name): s.setsCreated += 1
            case .addElements(_, _, let set, let e) where Slots.objectNames.contains(set): s.mapElementsAdded += e.count
            case .deleteElements(_, _, let set, let e) where Slots.objectNames.contains(set): s.mapElementsRemoved += e.count
            case .addChain(let c) where Slots.objectNames.contains(c.name) || Slots.isGroupChain(c.name): s.chainsCreated += 1
            case .deleteChain(_, _, let n) where Slots.isGroupChain(n): s.chainsDeleted += 1
            case .flushChain(_, _, let n) where Slots.objectNames.contains(n): s.chainsRewritten += 1
            case .addRule(let r) where Slots.objectNames.contains(r.chain): s.rulesWritten += 1
            case .deleteChain(_, _, let n) where Slots.objectNames.contains(n): s.chainsDeleted += 1
            default: break
            }
        }
        return s
    }

    /// A plan's creation or deletion of a group chain (which the batch may send as no chain).
    static func isGroupChainCreatedOrDeleted(_ op: PlanOp) -> Bool {
        switch op {
        case .createChain(let h): Slots.isGroupChain(h.name)
        case .deleteChain(let n): Slots.isGroupChain(n)
        default: false
        }
    }

    static func text(_ plan: Plan, batch: Batch, table: String) -> String {
        let kept = sentAsIs(plan)
        var lines = [Render.plan(kept, table: table)]
        let t = "inet \(table)"
        // A chain edited rule by rule is shown whole above (what it will hold); say how it goes.
        let edited = EditedChains(batch)
        for (n, e) in edited.counts.sorted(by: { $0.key < $1.key }) {
            lines.append("# \(n): sent as \(e.deleted) rules deleted and \(e.written) added; its other rules stay (handles and counters kept)\n")
        }
        // Group rules as elements: which rules each shape set gains and loses (by comment).
        var shapeChanges: [String] = []
        for op in batch.operations {
            switch op {
            case .addElements(_, _, let set, let e) where RuleShapes.isShapeSet(set):
                shapeChanges.append("# \(set): +\(e.count) (\(e.compactMap(\.comment).joined(separator: ", ")))\n")
            case .deleteElements(_, _, let set, let e) where RuleShapes.isShapeSet(set):
                shapeChanges.append("# \(set): -\(e.count) (\(e.compactMap(\.comment).joined(separator: ", ")))\n")
            default: break
            }
        }
        // Groups without a chain of their own (`GroupForm`): their chain above is not sent.
        for op in batch.operations {
            guard case .addElements(_, _, let set, let e) = op, Slots.Direction.allCases.contains(where: { $0.groupsMap == set }) else { continue }
            for x in e {
                if case .jump(let c)? = x.verdict, Slots.AcceptAll.parse(c) != nil, let g = x.comment {
                    lines.append("# group \(g): its rules accept all of a family and nothing else: no chain of its own, its element in \(set) jumps to the shared chain \(c)\n")
                }
            }
        }
        if !shapeChanges.isEmpty {
            lines.append("# group rules sent as elements of the shapes' sets (a chain above whose rules did not change is not rewritten):\n")
            lines += shapeChanges
        }
        for op in batch.operations {
            switch op {
            case .addSet(let d) where isMembers(d.name):
                lines.append("add set \(t) \(d.name) { type \(d.keyType); }   # group tag . address\n")
            case .addSet(let d) where Slots.objectNames.contains(d.name):
                lines.append(d.name == Slots.instanceGroups
                    ? "add map \(t) \(d.name) { type ifname . mark : integer; }   # values: \(Slots.keyBytes)-byte group keys\n"
                    : "add map \(t) \(d.name) { type integer : verdict; }   # keys: \(Slots.groupKeyBytes)-byte group keys\n")
            case .deleteSet(_, _, let n) where Slots.objectNames.contains(n):
                lines.append("delete map \(t) \(n)\n")
            case .addElements(_, _, let set, let elements) where Slots.objectNames.contains(set):
                lines.append("add element \(t) \(set) { \(elements.map { element($0, set: set) }.joined(separator: ", ")) }\n")
            case .deleteElements(_, _, let set, let elements) where Slots.objectNames.contains(set):
                lines.append("delete element \(t) \(set) { \(elements.map { key($0.key, set: set) }.joined(separator: ", ")) }\n")
            case .addChain(let c) where Slots.objectNames.contains(c.name):
                lines.append("add chain \(t) \(c.name)\n")
            case .flushChain(_, _, let n) where Slots.objectNames.contains(n):
                lines.append("flush chain \(t) \(n)\n")
            case .deleteChain(_, _, let n) where Slots.objectNames.contains(n):
                lines.append("delete chain \(t) \(n)\n")
            case .addRule(let r) where Slots.objectNames.contains(r.chain):
                let body = r.expressions == [.verdict(.drop)] ? "drop"
                    : Slots.AcceptAll.parse(r.chain) != nil ? Describe.rule(r.expressions)
                    : (r.comment.map { String($0.drop { $0 != ":" }.dropFirst(2)) } ?? "?")
                lines.append("add rule \(t) \(r.chain) \(body)\n")
            default:
                break
            }
        }
        return lines.joined()
    }

    /// The chains a batch edits rule by rule (`ChainEdit`: rules deleted by handle, inserted or
    /// appended, and the chain neither flushed nor created in the batch: every other rewrite
    /// flushes first), with the rules added and deleted in each.
    struct EditedChains {
        var counts: [String: (written: Int, deleted: Int)] = [:]
        /// Chains the batch flushes or adds, inserts or deletes a rule in.
        var touched: Set<String> = []
        init(_ batch: Batch) {
            var flushed = Set<String>()  // or created in the batch: filled, not edited
            var edited = Set<String>()
            var written: [String: Int] = [:], deleted: [String: Int] = [:]
            for op in batch.operations {
                switch op {
                case .flushChain(_, _, let n): flushed.insert(n)
                case .addChain(let c): flushed.insert(c.name)
                case .addRule(let r): written[r.chain, default: 0] += 1; edited.insert(r.chain)
                case .insertRule(let r, _): written[r.chain, default: 0] += 1; edited.insert(r.chain)
                case .deleteRule(_, _, let c, _): deleted[c, default: 0] += 1; edited.insert(c)
                default: break
                }
            }
            for n in edited where !flushed.contains(n) { counts[n] = (written[n] ?? 0, deleted[n] ?? 0) }
            touched = edited.union(flushed)
        }
    }

    /// The dispatch as the slot layout sends it.
    static func entry(_ r: IRRule) -> IRRule {
        guard case .vmap(let k, let m) = r.verdict, let d = Slots.Direction(logicalMap: m) else { return r }
        return IRRule(r.matches + [k == .iifname ? .iifnameInSet(Naming.instanceInterfaces) : .oifnameInSet(Naming.instanceInterfaces)],
                      .jump(d.dispatchChain), comment: r.comment)
    }

    static func hex(_ b: [UInt8]) -> String {
        "0x" + b.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    static func key(_ k: [UInt8], set: String) -> String {
        if set == Slots.instanceGroups, let (i, s) = Slots.parseKey(k) { return "\"\(i)\" . \(s)" }
        if isMembers(set), k.count == 20 || k.count == 32 {
            let tag = "\"" + String(decoding: k[0..<16].prefix { $0 != 0 }, as: UTF8.self) + "\""
            let address = k.count == 20 ? Translate.ipv4(Array(k[16...])).map { "\($0)" } : Translate.ipv6(Array(k[16...])).map { "\($0)" }
            return tag + " . " + (address ?? hex(Array(k[16...])))
        }
        return hex(k)
    }

    static func element(_ e: NFTSetElement, set: String) -> String {
        let comment = e.comment.map { " comment \"\($0)\"" } ?? ""
        if isMembers(set) { return key(e.key, set: set) + comment }
        if let set = Slots.parseKey(e.key).map({ _ in Slots.instanceGroups }), let data = e.data {
            return key(e.key, set: set) + comment + " : " + hex(data)
        }
        let verdict: String
        switch e.verdict {
        case .jump(let c)?: verdict = "jump \(c)"
        case .drop?: verdict = "drop"
        default: verdict = "?"
        }
        return hex(e.key) + comment + " : " + verdict
    }
}
