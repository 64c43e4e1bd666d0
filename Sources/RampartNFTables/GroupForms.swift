import RampartCore
import RampartNetlink

/// How the slot layout holds one group's rules of one direction (docs/nftables.md, "Group
/// chains only where they are needed").
///
/// Why not always a chain: every commit walks every chain of the namespace to publish the next
/// generation (`nf_tables_commit`, a few nanoseconds a chain), whatever it changes, so the chain
/// count is what separates a membership change at host-10k from one at host-1k. Most groups'
/// egress is the cloud default — all of IPv4 (and IPv6) to anywhere — which needs no chain of
/// its own: such a group's `groups-out` element jumps to a chain every such group shares. A
/// group without rules in a direction needs nothing at all: no element, so the dispatch moves on
/// to the instance's next slot, as it does after an empty chain.
enum GroupForm: Hashable, Sendable {
    /// Its own chain (`gin-<g>`/`gout-<g>`), its rules as `RuleShapes` writes them.
    case own
    /// Its rules accept every packet of these families and nothing else: the groups map's
    /// element jumps to the shared chain `Slots.AcceptAll.chain(d, families)`.
    case acceptsAll(Set<IPFamily>)
    /// No rules: no chain, no element.
    case none

    /// The form of a group chain with these rules (nil: the chain is not there).
    init(_ rules: [IRRule]?) {
        guard let rules, !rules.isEmpty else { self = .none; return }
        self = Slots.AcceptAll.families(acceptedBy: rules).map { .acceptsAll($0) } ?? .own
    }

    /// The verdict of the group's element in the groups map (nil: no element).
    func target(_ d: Slots.Direction, _ group: String) -> NFTVerdict? {
        switch self {
        case .own: .jump(d.groupPrefix + group)
        case .acceptsAll(let f): .jump(Slots.AcceptAll.chain(d, f))
        case .none: nil
        }
    }
}

extension Slots {
    /// The chains shared by every group whose rules of a direction accept all of one or both
    /// families (`GroupForm.acceptsAll`): `all-ipv4-out`, `all-ipv6-out`, `all-out` and the
    /// `-in` three. Each holds one `meta nfproto <family> counter accept` per family (the
    /// counter counts every such group's packets). Created when first needed, kept while the
    /// table lives (at most six).
    enum AcceptAll {
        static func chain(_ d: Direction, _ families: Set<IPFamily>) -> String {
            let dir = d == .out ? "out" : "in"
            switch (families.contains(.ipv4), families.contains(.ipv6)) {
            case (true, false): return "all-ipv4-\(dir)"
            case (false, true): return "all-ipv6-\(dir)"
            default: return "all-\(dir)"
            }
        }

        static let familySets: [Set<IPFamily>] = [[.ipv4], [.ipv6], [.ipv4, .ipv6]]

        /// Every shared chain's name.
        static let chainNames: Set<String> = Set(Direction.allCases.flatMap { d in familySets.map { chain(d, $0) } })

        /// (direction, families) of a shared chain's name.
        static func parse(_ name: String) -> (Direction, Set<IPFamily>)? {
            for d in Direction.allCases { for f in familySets where chain(d, f) == name { return (d, f) } }
            return nil
        }

        /// The families `rules` accept whole, when that is all they do: each rule is an accept of
        /// one family with no other term (what a rule of any protocol from or to `0.0.0.0/0` or
        /// `::/0` compiles to). nil for anything else.
        static func families(acceptedBy rules: [IRRule]) -> Set<IPFamily>? {
            var out = Set<IPFamily>()
            for r in rules {
                guard r.verdict == .accept, r.matches.count == 1, case .nfproto(let f) = r.matches[0] else { return nil }
                out.insert(f)
            }
            return out.isEmpty ? nil : out
        }

        /// The shared chain's rules as IR: what every group of that form holds, which is also
        /// what a read-back without a reference says such a group's chain is.
        static func rules(_ d: Direction, _ families: Set<IPFamily>) -> [IRRule] {
            IPFamily.allCases.filter(families.contains).map { f in
                IRRule([.nfproto(f)], counter: true, .accept, comment: comment(d, f))
            }
        }

        static func comment(_ d: Direction, _ f: IPFamily) -> String {
            "every group whose \(d == .out ? "egress" : "ingress") rules accept all of \(f == .ipv4 ? "IPv4" : "IPv6")"
        }

        /// The shared chain's rules as the kernel holds them.
        static func kernelRules(_ d: Direction, _ families: Set<IPFamily>, table: String) -> [NFTRule] {
            rules(d, families).map { Translate.rule($0, chain: chain(d, families), table: table, layout: .slots) }
        }
    }
}

extension SlotState {
    /// How the kernel holds group `g`'s chain of direction `d` now.
    func form(_ d: Slots.Direction, _ g: String, chain: String) -> GroupForm {
        if groupChains[chain] != nil { return .own }
        if let f = acceptsAll[d]?[g] { return .acceptsAll(f) }
        return .none
    }
}
