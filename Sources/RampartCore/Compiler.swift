/// Model → Ruleset IR. Every object is compiled by its own function from the model alone, so
/// that the full compile and the incremental events produce identical objects by construction.
public enum Compiler {
    /// Compiles a whole (valid) document: the IR the kernel should hold for `document.host`.
    public static func compile(_ document: Document) -> RulesetIR {
        HostModel(document).compileAll()
    }

    static let ctEstablished = CTStates([.established, .related])

    /// The four base chains. They never change, so they are compiled once per table.
    static func baseChains() -> [Chain] {
        func dispatch(_ key: InterfaceKey, _ map: String) -> [IRRule] {
            let inSet: Match = key == .iifname ? .iifnameInSet(Naming.instanceInterfaces) : .oifnameInSet(Naming.instanceInterfaces)
            return [
                IRRule([inSet, .ctState(ctEstablished)], .accept),
                IRRule([inSet, .ctState(.invalid)], .drop),
                IRRule([], .vmap(key, map)),
            ]
        }
        let egress = dispatch(.iifname, Naming.fromInstanceMap)
        let ingress = dispatch(.oifname, Naming.toInstanceMap)
        // Egress before ingress on the forward hook (priority -1 < 0): the sender's accept ends
        // only its own base chain, so the receiver's ingress chain still sees the packet.
        return [
            Chain(name: Naming.egressChain, base: BaseChainSpec(hook: .forward, priority: -1, policy: .accept), rules: egress),
            Chain(name: Naming.ingressChain, base: BaseChainSpec(hook: .forward, priority: 0, policy: .accept), rules: ingress),
            Chain(name: Naming.inputChain, base: BaseChainSpec(hook: .input, priority: 0, policy: .accept), rules: egress),
            Chain(name: Naming.outputChain, base: BaseChainSpec(hook: .output, priority: 0, policy: .accept), rules: ingress),
        ]
    }

    /// NDP (ICMPv6 133–136) passes both ways, before anti-spoofing: its sources are link-local.
    static let ndp = IRRule([.l4proto(58), .icmpv6Type(133...136)], .accept)

    /// Groups in document order without repeats (a repeated group would only jump twice).
    static func uniqueGroups(_ groups: [String]) -> [String] { uniqued(groups) }

    static let dhcpRequest = IRRule([.nfproto(.ipv4), .udpSport(68), .udpDport(67)], .accept)
    static let dhcpReply = IRRule([.nfproto(.ipv4), .udpSport(67), .udpDport(68)], .accept)
    static let finalDrop = IRRule([], .drop)

    /// `out-<id>`: egress of one instance on this host.
    static func instanceOut(_ id: String, _ inst: Instance) -> Chain {
        var rules = [ndp, dhcpRequest]
        rules.reserveCapacity(6 + inst.groups.count)
        if let mac = inst.mac { rules.append(IRRule([.etherSaddrNot(mac)], .drop)) }
        var v4: [IPv4Address] = [], v6: [IPv6Address] = []
        for a in uniqued(inst.ips) {
            switch a {
            case .v4(let x): v4.append(x)
            case .v6(let x): v6.append(x)
            }
        }
        rules.append(v4.isEmpty ? IRRule([.nfproto(.ipv4)], .drop) : IRRule(v4.map { .ip4SaddrNot($0) }, .drop))
        rules.append(v6.isEmpty ? IRRule([.nfproto(.ipv6)], .drop) : IRRule(v6.map { .ip6SaddrNot($0) }, .drop))
        for g in uniqueGroups(inst.groups) { rules.append(IRRule([], .jump(Naming.groupOut(g)))) }
        rules.append(finalDrop)
        return Chain(name: Naming.instanceOut(id), rules: rules)
    }

    /// `in-<id>`: ingress of one instance on this host.
    static func instanceIn(_ id: String, _ inst: Instance) -> Chain {
        var rules = [ndp, dhcpReply]
        rules.reserveCapacity(3 + inst.groups.count)
        for g in uniqueGroups(inst.groups) { rules.append(IRRule([], .jump(Naming.groupIn(g)))) }
        rules.append(finalDrop)
        return Chain(name: Naming.instanceIn(id), rules: rules)
    }

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
