/// The policy evaluator: what a ruleset IR does with one packet, and why.
///
/// It interprets the IR the way the kernel runs the compiled table (base chains of the packet's
/// hook in priority order; an `accept` ends only its base chain, a `drop` is final; jumps, gotos,
/// returns and verdict-map dispatch), so its answer is the kernel's answer for the same packet,
/// with the path that led to it: the base chain's check that stopped it (anti-spoofing, the link's
/// protocols, the initial-SYN rule, a guarded prefix), or instance → group → rule. Pure and cheap
/// (a walk over the rules the packet meets, set lookups in hash sets): it serves `explain` and
/// the re-evaluation of conntrack entries after a change narrows the policy.
public enum Evaluate {
    /// The verdict for `packet` under `ir`, with the rules that decided it.
    public static func packet(_ packet: PacketDescription, in ir: RulesetIR) -> PolicyVerdict {
        var trace: [TraceStep] = []
        let hook: Hook
        switch (packet.inputInterface, packet.outputInterface) {
        case (.some, .some): hook = .forward
        case (.some, nil): hook = .input
        case (nil, _): hook = .output
        }
        // A packet that arrives meets the prerouting hook first (the source checks before
        // conntrack), then its own.
        let hooks: [Hook] = hook == .output ? [.output] : [.prerouting, hook]
        let bases = hooks.flatMap { h in
            ir.chains.values.filter { $0.base?.hook == h }.sorted { ($0.base!.priority, $0.name) < ($1.base!.priority, $1.name) }
        }
        for base in bases {
            var depth = 0
            // What the prerouting checks let through is not part of the answer (they only drop):
            // their steps are kept only when they stop the packet.
            let mark = trace.count
            switch run(base, packet, ir, &trace, &depth) {
            case .drop: return PolicyVerdict(allowed: false, trace: trace)
            case .accept:
                if base.base?.hook == .prerouting { trace.removeSubrange(mark...) }
                continue
            case .fallThrough:
                if base.base?.policy == .drop {
                    trace.append(TraceStep(chain: base.name, rule: nil, text: "policy drop", comment: nil))
                    return PolicyVerdict(allowed: false, trace: trace)
                }
                if base.base?.hook == .prerouting { trace.removeSubrange(mark...) }
            }
        }
        return PolicyVerdict(allowed: true, trace: trace)
    }

    private enum Outcome { case accept, drop, fallThrough }

    /// Runs one chain; a `return` or the end of a regular chain falls through to the caller.
    private static func run(_ chain: Chain, _ p: PacketDescription, _ ir: RulesetIR, _ trace: inout [TraceStep], _ depth: inout Int) -> Outcome {
        depth += 1
        defer { depth -= 1 }
        // The kernel refuses loops and limits jump depth (16); a hand-made IR could loop.
        guard depth <= 16 else { return .drop }
        for (i, r) in chain.rules.enumerated() where r.matches.allSatisfy({ holds($0, p, ir) }) {
            func step() { trace.append(TraceStep(chain: chain.name, rule: i, text: Render.rule(r), comment: r.comment)) }
            switch r.verdict {
            case .accept: step(); return .accept
            case .drop: step(); return .drop
            case .return: return .fallThrough
            case .jump(let c), .goto(let c):
                guard let target = ir.chains[c] else { continue }
                step()
                let o = run(target, p, ir, &trace, &depth)
                if o != .fallThrough { return o }
                if case .goto = r.verdict { return .fallThrough }
            case .vmap(let key, let map):
                let name = key == .iifname ? p.inputInterface : p.outputInterface
                guard let name, let v = ir.maps[map]?.elements[name], let c = v.chainReference, let target = ir.chains[c] else {
                    if let name, let v = ir.maps[map]?.elements[name] {
                        if v == .accept { step(); return .accept }
                        if v == .drop { step(); return .drop }
                    }
                    continue
                }
                step()
                let o = run(target, p, ir, &trace, &depth)
                if o != .fallThrough { return o }
            }
        }
        return .fallThrough
    }

    /// Whether one match term holds for the packet, with the kernel's semantics (a term on a
    /// header the packet does not have does not hold).
    static func holds(_ m: Match, _ p: PacketDescription, _ ir: RulesetIR) -> Bool {
        func inSet(_ s: String, _ e: SetElement) -> Bool { ir.sets[s]?.elements.contains(e) ?? false }
        let v4 = p.source.v4.flatMap { s in p.destination.v4.map { (s, $0) } }
        let v6 = p.source.v6.flatMap { s in p.destination.v6.map { (s, $0) } }
        switch m {
        case .iifnameInSet(let s): return p.inputInterface.map { inSet(s, .ifname($0)) } ?? false
        case .iifnameNotInSet(let s): return p.inputInterface.map { !inSet(s, .ifname($0)) } ?? false
        case .oifnameInSet(let s): return p.outputInterface.map { inSet(s, .ifname($0)) } ?? false
        case .ctState(let st): return !st.intersection(p.connectionState).isEmpty
        case .nfproto(let f): return p.family == f
        case .l4proto(let n): return p.protocolNumber == n
        case .ip4Saddr(let x): return v4.map { x.contains($0.0) } ?? false
        case .ip4Daddr(let x): return v4.map { x.contains($0.1) } ?? false
        case .ip6Saddr(let x): return v6.map { x.contains($0.0) } ?? false
        case .ip6Daddr(let x): return v6.map { x.contains($0.1) } ?? false
        case .ip4SaddrNot(let a): return v4.map { $0.0 != a } ?? false
        case .ip6SaddrNot(let a): return v6.map { $0.0 != a } ?? false
        case .saddrInSet(let f, let s): return p.family == f && inSet(s, SetElement(p.source))
        case .daddrInSet(let f, let s): return p.family == f && inSet(s, SetElement(p.destination))
        case .thDport(let r): return p.destinationPort.map(r.contains) ?? false
        case .udpSport(let x): return p.protocolNumber == 17 && p.sourcePort == x
        case .udpDport(let x): return p.protocolNumber == 17 && p.destinationPort == x
        case .icmpType(let t): return p.family == .ipv4 && p.protocolNumber == 1 && p.icmpType == t
        case .icmpCode(let c): return p.family == .ipv4 && p.protocolNumber == 1 && p.icmpCode == c
        case .icmpv6Type(let r): return p.family == .ipv6 && p.protocolNumber == 58 && p.icmpType.map(r.contains) ?? false
        case .icmpv6Code(let c): return p.family == .ipv6 && p.protocolNumber == 58 && p.icmpCode == c
        case .etherSaddrNot(let mac): return p.sourceMAC.map { $0 != mac } ?? false
        case .ifaceSaddrNotInSet(let f, let s):
            guard p.family == f, let i = p.inputInterface else { return false }
            switch p.source {
            case .v4(let a): return !inSet(s, .ifaceIPv4(i, a))
            case .v6(let a): return !inSet(s, .ifaceIPv6(i, a))
            }
        case .ifaceEtherSaddrNotInSet(let s):
            // Without a MAC the packet is taken to carry the one it should (explain's default).
            guard let i = p.inputInterface, let mac = p.sourceMAC else { return false }
            return !inSet(s, .ifaceEther(i, mac))
        case .iifnamePrefix(let x): return p.inputInterface?.hasPrefix(x) ?? false
        case .oifnamePrefix(let x): return p.outputInterface?.hasPrefix(x) ?? false
        case .ip6HopLimit(let h): return p.family == .ipv6 && p.hopLimit == h
        case .ip6HopLimitNot(let h): return p.family == .ipv6 && p.hopLimit != h
        case .tcpNotInitialSYN: return p.protocolNumber == 6 && p.tcpFlags & 0x17 != 0x02
        case .ndTargetNotLinkLocal:
            guard p.protocolNumber == 58, let t = p.neighbourTarget else { return false }
            return !IPv6Prefix.linkLocal.contains(t)
        case .ifaceNDTargetNotInSet(let s):
            guard p.protocolNumber == 58, let t = p.neighbourTarget, let i = p.inputInterface else { return false }
            return !inSet(s, .ifaceNDTarget(i, t))
        case .ifaceCtSaddrInSet:
            // Only with `ctState(.related)`: a packet description is new or established, never
            // related, and does not carry the connection a related packet belongs to.
            return false
        }
    }
}

/// One packet, as far as the policy looks at it. Defaults describe the first packet of a
/// connection: conntrack state new, a TCP SYN, hop limit 64.
public struct PacketDescription: Hashable, Sendable {
    /// The device it arrives on (nil: sent by the host itself).
    public var inputInterface: String?
    /// The device it leaves through (nil: delivered to the host itself).
    public var outputInterface: String?
    public var source: IPAddress
    public var destination: IPAddress
    /// IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6, …).
    public var protocolNumber: UInt8
    public var sourcePort: UInt16?
    public var destinationPort: UInt16?
    public var icmpType: UInt8?
    public var icmpCode: UInt8?
    /// Conntrack's view of the packet. Empty for a packet conntrack does not track (neighbour
    /// discovery, types 133–136): no `ct state` term matches it. With no entry for its tuple, a
    /// packet that cannot open one is `.invalid` (an RST, a SYN-ACK or FIN, an ICMP echo reply
    /// or error); a bare TCP ACK is `.new` (`nf_conntrack_tcp_loose`). Checked against the kernel
    /// by EvaluatorAgreesWithKernelTests.
    public var connectionState: CTStates
    /// TCP flags byte (SYN = 0x02).
    public var tcpFlags: UInt8
    /// IPv6 hop limit.
    public var hopLimit: UInt8
    /// Source MAC; nil: the instance's own (the MAC check is not evaluated).
    public var sourceMAC: MACAddress?
    /// A neighbour advertisement's target address.
    public var neighbourTarget: IPv6Address?

    public init(from inputInterface: String?, to outputInterface: String?, source: IPAddress, destination: IPAddress,
                protocolNumber: UInt8, sourcePort: UInt16? = nil, destinationPort: UInt16? = nil,
                icmpType: UInt8? = nil, icmpCode: UInt8? = nil, connectionState: CTStates = .new,
                tcpFlags: UInt8 = 0x02, hopLimit: UInt8 = 64, sourceMAC: MACAddress? = nil, neighbourTarget: IPv6Address? = nil) {
        self.inputInterface = inputInterface
        self.outputInterface = outputInterface
        self.source = source
        self.destination = destination
        self.protocolNumber = protocolNumber
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.icmpType = icmpType
        self.icmpCode = icmpCode
        self.connectionState = connectionState
        self.tcpFlags = tcpFlags
        self.hopLimit = hopLimit
        self.sourceMAC = sourceMAC
        self.neighbourTarget = neighbourTarget
    }

    /// The address family (of the source; a packet has one family).
    public var family: IPFamily { source.family }
}

/// One rule that took part in a verdict.
public struct TraceStep: Hashable, Sendable, Codable, CustomStringConvertible {
    /// The chain the rule is in.
    public var chain: String
    /// The rule's index in the chain (nil: the chain's policy).
    public var rule: Int?
    /// The rule in nft syntax.
    public var text: String
    /// The rule's comment: `<group>/<rule id>` for group rules.
    public var comment: String?

    public var description: String { "\(chain)[\(rule.map(String.init) ?? "policy")]: \(text)" }
}

/// What the policy does with a packet, and the rules that decided it, in order.
public struct PolicyVerdict: Hashable, Sendable {
    public var allowed: Bool
    public var trace: [TraceStep]

    /// The group rule that allowed the packet (`<group>/<rule id>` comments), if one did.
    public var allowingRules: [String] {
        allowed ? trace.compactMap(\.comment) : []
    }

    /// The step that dropped it (nil when allowed).
    public var droppedBy: TraceStep? { allowed ? nil : trace.last }

    /// One sentence an operator can act on: which rule allowed the packet, or what stopped it.
    public func reason(in ir: RulesetIR) -> String {
        if allowed {
            if trace.isEmpty { return "allowed: it involves no instance interface on this host, so Rampart does not touch it" }
            let rules = allowingRules
            if !rules.isEmpty { return "allowed by " + rules.map { "rule \($0)" }.joined(separator: ", then ") }
            if let last = trace.last, let i = last.rule,
               ir.chains[last.chain]?.rules[i].matches.contains(where: { if case .ctState(let s) = $0 { s.contains(.established) } else { false } }) == true {
                return "allowed as part of a connection conntrack already tracks (established or related)"
            }
            return "allowed by \(trace.map(\.description).joined(separator: ", then "))"
        }
        guard let step = droppedBy else { return "dropped" }
        guard let index = step.rule, let rule = ir.chains[step.chain]?.rules[index] else {
            return "dropped by the policy of chain \(step.chain)"
        }
        let m = rule.matches
        func has(_ p: (Match) -> Bool) -> Bool { m.contains(where: p) }
        if has({ if case .ifaceEtherSaddrNotInSet = $0 { true } else { false } }) {
            return "dropped by anti-spoofing: the source MAC is not the instance's"
        }
        if has({ if case .ifaceSaddrNotInSet = $0 { true } else { false } }) {
            return "dropped by anti-spoofing: the source address is not one of the instance's (checked before any connection state)"
        }
        if has({ if case .tcpNotInitialSYN = $0 { true } else { false } }) {
            return "dropped: conntrack sees a new connection but the packet is not an initial SYN"
        }
        if has({ if case .iifnamePrefix = $0 { true } else { false } }) || has({ if case .oifnamePrefix = $0 { true } else { false } }) {
            return "dropped: the device has a guarded prefix and belongs to no instance"
        }
        if has({ if case .ctState(let s) = $0 { s.contains(.invalid) } else { false } }) {
            return "dropped: conntrack marks the packet invalid"
        }
        if has({ if case .icmpv6Type = $0 { true } else { false } }) || has({ if case .udpSport = $0 { true } else { false } })
            || has({ if case .udpDport = $0 { true } else { false } }) {
            return "dropped: neighbour discovery and DHCP pass only between an instance and its host (\(step.text))"
        }
        if m.isEmpty, step.chain.hasPrefix("in-") || step.chain.hasPrefix("out-") {
            // Group chains are `gin-<id>` / `gout-<id>`, `:` written as `/` (Naming.kernelID).
            let groups = (ir.chains[step.chain]?.rules ?? []).compactMap { $0.verdict.chainReference }
                .map { Naming.id(fromKernelID: $0.drop { $0 != "-" }.dropFirst()) }
            let side = step.chain.hasPrefix("in-") ? "ingress" : "egress"
            if groups.isEmpty { return "dropped: the instance is in no group, so no \(side) is allowed" }
            return "dropped: no \(side) rule of group \(groups.joined(separator: ", ")) allows it (the instance's default drop)"
        }
        return "dropped by \(step)"
    }
}

extension IPAddress {
    var v4: IPv4Address? { if case .v4(let a) = self { a } else { nil } }
    var v6: IPv6Address? { if case .v6(let a) = self { a } else { nil } }
}

extension IPv4Prefix {
    /// Whether the prefix covers `a`.
    public func contains(_ a: IPv4Address) -> Bool { a.raw & mask == address.raw }
}

extension IPv6Prefix {
    /// Whether the prefix covers `a`.
    public func contains(_ a: IPv6Address) -> Bool {
        let m = mask
        return a.hi & m.hi == address.hi && a.lo & m.lo == address.lo
    }
}
