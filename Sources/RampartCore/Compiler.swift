/// Model → Ruleset IR. Every object is compiled by its own function from the model alone, so
/// that the full compile and the incremental events produce identical objects by construction.
public enum Compiler {
    /// Compiles a whole (valid) document: the IR the kernel should hold for `document.host`.
    public static func compile(_ document: Document) -> RulesetIR {
        HostModel(document).compileAll()
    }

    static let ctEstablished = CTStates([.established, .related])

    /// The four base chains. They never change, so they are compiled once per table.
    ///
    /// Everything that is the same for every instance lives here, once, instead of in each
    /// instance's chains: conntrack, NDP, DHCP, and anti-spoofing through sets of (interface .
    /// address) pairs. The kernel re-validates every rule reachable from the base chains on each
    /// commit that adds a rule, so rules per instance are what makes a rule change or a plug cost
    /// more on a bigger host (measured: `docs/nftables-bench.md`).
    static func baseChains() -> [Chain] {
        let ndp: [Match] = [.l4proto(58), .icmpv6Type(133...136)]
        func egress() -> [IRRule] {
            let mine: Match = .iifnameInSet(Naming.instanceInterfaces)
            return [
                IRRule([mine, .ctState(ctEstablished)], .accept),
                IRRule([mine, .ctState(.invalid)], .drop),
                // NDP before anti-spoofing: its sources are link-local.
                IRRule([mine] + ndp, .accept),
                // A DHCP request's source may be 0.0.0.0.
                IRRule([mine, .nfproto(.ipv4), .udpSport(68), .udpDport(67)], .accept),
                IRRule([.iifnameInSet(Naming.macInterfaces), .ifaceEtherSaddrNotInSet(Naming.sourceMACs)], .drop),
                IRRule([mine, .ifaceSaddrNotInSet(.ipv4, Naming.sources4)], .drop),
                IRRule([mine, .ifaceSaddrNotInSet(.ipv6, Naming.sources6)], .drop),
                IRRule([], .vmap(.iifname, Naming.fromInstanceMap)),
            ]
        }
        func ingress() -> [IRRule] {
            let mine: Match = .oifnameInSet(Naming.instanceInterfaces)
            return [
                IRRule([mine, .ctState(ctEstablished)], .accept),
                IRRule([mine, .ctState(.invalid)], .drop),
                IRRule([mine] + ndp, .accept),
                IRRule([mine, .nfproto(.ipv4), .udpSport(67), .udpDport(68)], .accept),
                IRRule([], .vmap(.oifname, Naming.toInstanceMap)),
            ]
        }
        // Egress before ingress on the forward hook (priority -1 < 0): the sender's accept ends
        // only its own base chain, so the receiver's ingress chain still sees the packet.
        return [
            Chain(name: Naming.egressChain, base: BaseChainSpec(hook: .forward, priority: -1, policy: .accept), rules: egress()),
            Chain(name: Naming.ingressChain, base: BaseChainSpec(hook: .forward, priority: 0, policy: .accept), rules: ingress()),
            Chain(name: Naming.inputChain, base: BaseChainSpec(hook: .input, priority: 0, policy: .accept), rules: egress()),
            Chain(name: Naming.outputChain, base: BaseChainSpec(hook: .output, priority: 0, policy: .accept), rules: ingress()),
        ]
    }

    /// Groups in document order without repeats (a repeated group would only jump twice).
    static func uniqueGroups(_ groups: [String]) -> [String] {
        var seen = Set<String>()
        return groups.filter { seen.insert($0).inserted }
    }

    /// `out-<id>`: egress of one instance on this host, after the base chain's checks.
    static func instanceOut(_ id: String, _ inst: Instance) -> Chain {
        let rules = uniqueGroups(inst.groups).map { IRRule([], .jump(Naming.groupOut($0))) } + [IRRule([], .drop)]
        return Chain(name: Naming.instanceOut(id), rules: rules)
    }

    /// `in-<id>`: ingress of one instance on this host.
    static func instanceIn(_ id: String, _ inst: Instance) -> Chain {
        let rules = uniqueGroups(inst.groups).map { IRRule([], .jump(Naming.groupIn($0))) } + [IRRule([], .drop)]
        return Chain(name: Naming.instanceIn(id), rules: rules)
    }

    /// The anti-spoofing elements of one local instance: (interface . address) pairs, and
    /// (interface . MAC) with the interface in `mac-ifaces` when it has a MAC.
    static func sourceElements(_ inst: Instance) -> [(set: String, element: SetElement)] {
        guard let iface = inst.interface else { return [] }
        var out: [(String, SetElement)] = []
        for a in uniqued(inst.ips) {
            switch a {
            case .v4(let x): out.append((Naming.sources4, .ifaceIPv4(iface, x)))
            case .v6(let x): out.append((Naming.sources6, .ifaceIPv6(iface, x)))
            }
        }
        if let mac = inst.mac {
            out.append((Naming.sourceMACs, .ifaceEther(iface, mac)))
            out.append((Naming.macInterfaces, .ifname(iface)))
        }
        return out
    }

    /// The fixed sets every table has, with their key types.
    static let fixedSets: [(String, SetKeyType)] = [
        (Naming.instanceInterfaces, .ifname), (Naming.sources4, .ifnameIPv4), (Naming.sources6, .ifnameIPv6),
        (Naming.sourceMACs, .ifnameEther), (Naming.macInterfaces, .ifname),
    ]

    /// The kernel rules of one group rule: one per family it applies to (see `Rule.families`).
    static func kernelRules(group: String, rule r: Rule, index: Int) -> [IRRule] {
        let comment = Naming.ruleComment(group: group, ruleID: r.id, index: index)
        let ingress = r.direction == .ingress
        return r.families.map { fam in
            var m: [Match] = []
            switch r.remote {
            case .cidr(.v4(let p)):
                m.append(p.length == 0 ? .nfproto(.ipv4) : (ingress ? .ip4Saddr(p) : .ip4Daddr(p)))
            case .cidr(.v6(let p)):
                m.append(p.length == 0 ? .nfproto(.ipv6) : (ingress ? .ip6Saddr(p) : .ip6Daddr(p)))
            case .group(let g):
                let set = Naming.memberSet(fam, g)
                m.append(ingress ? .saddrInSet(fam, set) : .daddrInSet(fam, set))
            }
            if case .number(let n) = r.proto {
                m.append(.l4proto(n))
                if let p = r.ports { m.append(.thDport(p)) }
                if let t = r.icmpType {
                    if n == 1 {
                        m.append(.icmpType(t))
                        if let c = r.icmpCode { m.append(.icmpCode(c)) }
                    } else {
                        m.append(.icmpv6Type(t...t))
                        if let c = r.icmpCode { m.append(.icmpv6Code(c)) }
                    }
                }
            }
            return IRRule(m, counter: true, .accept, comment: comment)
        }
    }

    /// `gin-<id>` and `gout-<id>`: the group's rules, shared by its members on this host.
    static func groupChains(_ id: String, _ group: Group) -> (ingress: Chain, egress: Chain) {
        var inRules: [IRRule] = [], outRules: [IRRule] = []
        for (i, r) in group.rules.enumerated() {
            let k = kernelRules(group: id, rule: r, index: i)
            if r.direction == .ingress { inRules += k } else { outRules += k }
        }
        return (Chain(name: Naming.groupIn(id), rules: inRules), Chain(name: Naming.groupOut(id), rules: outRules))
    }

    /// Member sets the group's compiled rules read, with how many kernel rules read each.
    static func memberSetReferences(_ id: String, _ group: Group) -> [MemberSetKey: Int] {
        var out: [MemberSetKey: Int] = [:]
        for r in group.rules {
            guard case .group(let g) = r.remote else { continue }
            for f in r.families { out[MemberSetKey(family: f, group: g), default: 0] += 1 }
        }
        return out
    }
}
