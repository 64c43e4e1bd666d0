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

    static func ir(_ snap: TableSnapshot, reference: RulesetIR?) -> RulesetIR {
        var ir = RulesetIR()
        // An anonymous set (someone's `tcp dport { 1, 2 }` in our table) is part of the rule that
        // uses it: repairing that rule's chain removes it; planning its deletion would be refused.
        for def in snap.sets where !def.isAnonymous {
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
        for c in snap.chains {
            let header = ChainHeader(name: c.name, base: c.base.map(baseSpec))
            let rules = snap.rules[c.name] ?? []
            if let want = reference?.chains[c.name], want.header == header,
               want.rules.count == rules.count,
               zip(want.rules, rules).allSatisfy({ w, got in
                   Translate.expressions(w) == Translate.withoutCounts(got.expressions) && w.comment == got.comment
               }) {
                ir.chains[c.name] = want
            } else {
                ir.chains[c.name] = Chain(name: c.name, base: header.base, rules: rules.map(drifted))
            }
        }
        return ir
    }

    /// A base chain spec the IR can hold; hooks Rampart never uses map to a priority no compiled
    /// chain has, so such a chain never compares equal to a desired one.
    static func baseSpec(_ b: NFTBaseChainSpec) -> BaseChainSpec {
        let policy: ChainPolicy = b.policy == .accept ? .accept : .drop
        switch b.hook {
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
