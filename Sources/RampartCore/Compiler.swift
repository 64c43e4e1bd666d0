/// Model → Ruleset IR. Every object is compiled by its own function from the model alone, so
/// that the full compile and the incremental events produce identical objects by construction.
public enum Compiler {
    /// Compiles a whole (valid) document: the IR the kernel should hold for `document.host`.
    public static func compile(_ document: Document) -> RulesetIR {
        HostModel(document).compileAll()
    }

    static let ctEstablished = CTStates([.established, .related])

    /// The four base chains. They depend only on the guarded prefixes, so they are compiled
    /// once per table and rewritten only when those change.
    ///
    /// Everything that is the same for every instance lives here, once, instead of in each
    /// instance's chains: source checks, the link's own protocols, conntrack. The kernel
    /// re-validates every rule reachable from the base chains on each commit that adds a rule,
    /// so rules per instance are what makes a rule change or a plug cost more on a bigger host
    /// (measured: `docs/nftables-bench.md`).
    ///
    /// The order is the security argument (contract rules 1, 4, 5, 9; docs/nftables.md):
    /// 1. Source checks (MAC, then `ifname . address`) come before conntrack itself, for every
    ///    packet: they are the prerouting chain, below conntrack's priority. Conntrack is not
    ///    tied to an interface, so a spoofed packet that reached it would be taken for another
    ///    instance's connection — accepted as `established`, or changing its state (a RST
    ///    closing it) even when a later check drops it.
    /// 2. The link's protocols (NDP, DHCPv4) exist only between an instance and its host: the
    ///    input and output chains accept them (with hop limit 255, checked sources and targets);
    ///    the forward chains drop them whatever the group rules say.
    /// 3. A TCP packet that conntrack sees as new must be an initial SYN, so a connection whose
    ///    entry was removed cannot be picked up mid-stream (`nf_conntrack_tcp_loose`).
    /// 4. Every accept is scoped to instance interfaces; after the dispatch (whose instance
    ///    chains end in drop) only other interfaces remain, and the guarded prefixes drop those
    ///    that look like instance devices, established connections included.
    static func baseChains(guardedPrefixes: [String] = []) -> [Chain] {
        let fromMine: Match = .iifnameInSet(Naming.instanceInterfaces)
        let toMine: Match = .oifnameInSet(Naming.instanceInterfaces)
        let icmpv6: Match = .l4proto(58)
        let guarded = uniqued(guardedPrefixes)

        // Source checks of packets arriving from an instance (the prerouting chain, below).
        let sourceChecks = [
            IRRule([.iifnameInSet(Naming.macInterfaces), .ifaceEtherSaddrNotInSet(Naming.sourceMACs)], .drop),
            IRRule([.nfproto(.ipv4), .ifaceSaddrNotInSet(.ipv4, Naming.sources4)], .drop),
            IRRule([.nfproto(.ipv6), .ifaceSaddrNotInSet(.ipv6, Naming.sources6)], .drop),
        ]
        // Conntrack, then the instance's own chain, then the guard, for one direction.
        //
        // From an instance, `related` is accepted only for a connection the instance is an end
        // of (its interface and one of its addresses as the source of the connection's original
        // or reply direction): conntrack relates an ICMP error to a connection by the header it
        // quotes and checks that the error goes to that connection's end, never who sends it,
        // so an instance with no egress could otherwise send errors quoting anyone's connection
        // through this host (a channel out of an isolated instance, and errors into other
        // instances' flows past their ingress rules). Any other related packet from an
        // instance is left to its group rules, like a new one.
        func stateAndDispatch(_ mine: Match, _ key: InterfaceKey, _ map: String) -> [IRRule] {
            let accepted: [IRRule]
            if key == .iifname {
                accepted = [IRRule([mine, .ctState(.established)], .accept)]
                    + [(IPFamily.ipv4, Naming.sources4), (.ipv6, Naming.sources6)].flatMap { f, set in
                        [false, true].map { reply in
                            IRRule([mine, .ctState(.related), .nfproto(f), .ifaceCtSaddrInSet(f, reply: reply, set)], .accept)
                        }
                    }
            } else {
                accepted = [IRRule([mine, .ctState(ctEstablished)], .accept)]
            }
            return [
                IRRule([mine, .ctState(.invalid)], .drop),
                IRRule([mine, .l4proto(6), .ctState(.new), .tcpNotInitialSYN], .drop),
            ] + accepted + [IRRule([], .vmap(key, map))]
                + guarded.map { IRRule([key == .iifname ? .iifnamePrefix($0) : .oifnamePrefix($0)], .drop) }
        }
        let fromState = stateAndDispatch(fromMine, .iifname, Naming.fromInstanceMap)
        let toState = stateAndDispatch(toMine, .oifname, Naming.toInstanceMap)

        // Forwarded from an instance (its source already checked): the link's protocols never
        // leave the link.
        let egress: [IRRule] = [
                IRRule([fromMine, icmpv6, .icmpv6Type(133...137)], .drop),
                IRRule([fromMine, .nfproto(.ipv4), .udpSport(68), .udpDport(67)], .drop),
                IRRule([fromMine, .nfproto(.ipv4), .udpSport(67)], .drop),
            ] + fromState
        // Forwarded to an instance: no NDP and no DHCP reply from anywhere but its host.
        let ingress = [
            IRRule([toMine, icmpv6, .icmpv6Type(133...137)], .drop),
            IRRule([toMine, .nfproto(.ipv4), .udpSport(67), .udpDport(68)], .drop),
        ] + toState
        // The link's protocols that may come from outside the instance's addresses (rule 4):
        // NDP from a link-local or the unspecified address, DHCP from 0.0.0.0 (prerouting lets
        // them past the address check; forward then drops them, input takes them below).
        let linkSources = [
            IRRule([.ip6Saddr(IPv6Prefix.linkLocal), icmpv6, .icmpv6Type(133...133)], .accept),
            IRRule([.ip6Saddr(IPv6Prefix.linkLocal), icmpv6, .icmpv6Type(135...136)], .accept),
            IRRule([.ip6Saddr(IPv6Prefix.unspecified), icmpv6, .icmpv6Type(133...133)], .accept),
            IRRule([.ip6Saddr(IPv6Prefix.unspecified), icmpv6, .icmpv6Type(135...135)], .accept),
            IRRule([.ip4Saddr(IPv4Prefix.unspecified), .udpSport(68), .udpDport(67)], .accept),
        ]
        // From an instance to the host (its source already checked, the link's own sources
        // let through): NDP (hop limit 255; RA and redirects refused; a neighbour
        // advertisement names only its own addresses or a link-local one) and DHCP requests.
        let input = [
                IRRule([fromMine, icmpv6, .icmpv6Type(134...134)], .drop),
                IRRule([fromMine, icmpv6, .icmpv6Type(137...137)], .drop),
                IRRule([fromMine, icmpv6, .icmpv6Type(133...136), .ip6HopLimitNot(255)], .drop),
                IRRule([fromMine, icmpv6, .icmpv6Type(136...136), .ndTargetNotLinkLocal, .ifaceNDTargetNotInSet(Naming.ndTargets)], .drop),
            ]
            + [
                IRRule([fromMine, icmpv6, .icmpv6Type(133...133)], .accept),
                IRRule([fromMine, icmpv6, .icmpv6Type(135...136)], .accept),
                IRRule([fromMine, .nfproto(.ipv4), .udpSport(68), .udpDport(67)], .accept),
                IRRule([fromMine, .nfproto(.ipv4), .udpSport(67)], .drop),
            ] + fromState
        // From the host to an instance: its NDP (hop limit 255) and DHCP replies.
        let output = [
            IRRule([toMine, icmpv6, .icmpv6Type(133...137), .ip6HopLimit(255)], .accept),
            IRRule([toMine, .nfproto(.ipv4), .udpSport(67), .udpDport(68)], .accept),
        ] + toState
        // The source checks, on the prerouting hook before defragmentation (-400) and conntrack
        // (-200). They were the first rules of forward and input until 2026-12-04, after
        // conntrack had taken the packet: a spoofed in-window RST in another instance's name,
        // dropped there, had already closed that instance's connection in conntrack. A packet
        // from no instance leaves after one lookup (the gate); the accepts (the gate, the
        // link's own sources) end only this chain. A guarded interface that is no instance's
        // (rule 9) is dropped here first, for the same reason: its packets pass nowhere, so
        // they must not move anyone's conntrack entry either (until 2026-12-04 they passed
        // the gate, and a reset from such a device in an instance's name closed its entry).
        let prerouting = guarded.map { IRRule([.iifnamePrefix($0), .iifnameNotInSet(Naming.instanceInterfaces)], .drop) }
            + [IRRule([.iifnameNotInSet(Naming.instanceInterfaces)], .accept), sourceChecks[0]]
            + linkSources + sourceChecks[1...]
        // Egress before ingress on the forward hook (priority -1 < 0): the sender's accept ends
        // only its own base chain, so the receiver's ingress chain still sees the packet.
        return [
            Chain(name: Naming.preroutingChain, base: BaseChainSpec(hook: .prerouting, priority: Self.preroutingPriority, policy: .accept),
                  rules: prerouting),
            Chain(name: Naming.egressChain, base: BaseChainSpec(hook: .forward, priority: -1, policy: .accept), rules: egress),
            Chain(name: Naming.ingressChain, base: BaseChainSpec(hook: .forward, priority: 0, policy: .accept), rules: ingress),
            Chain(name: Naming.inputChain, base: BaseChainSpec(hook: .input, priority: 0, policy: .accept), rules: input),
            Chain(name: Naming.outputChain, base: BaseChainSpec(hook: .output, priority: 0, policy: .accept), rules: output),
        ]
    }

    /// Before defragmentation (`NF_IP_PRI_CONNTRACK_DEFRAG`, -400): a fragment is checked by
    /// its own header, before it can join a reassembly queue another instance's packet is in.
    public static let preroutingPriority: Int32 = -450

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
            case .v6(let x):
                out.append((Naming.sources6, .ifaceIPv6(iface, x)))
                out.append((Naming.ndTargets, .ifaceNDTarget(iface, x)))
            }
        }
        if let mac = inst.mac {
            out.append((Naming.sourceMACs, .ifaceEther(iface, mac)))
            out.append((Naming.macInterfaces, .ifname(iface)))
        }
        return out
    }

    /// The fixed sets every table has, with their key types.
    public static let fixedSets: [(String, SetKeyType)] = [
        (Naming.instanceInterfaces, .ifname), (Naming.sources4, .ifnameIPv4), (Naming.sources6, .ifnameIPv6),
        (Naming.sourceMACs, .ifnameEther), (Naming.macInterfaces, .ifname), (Naming.ndTargets, .ifnameNDTarget),
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
