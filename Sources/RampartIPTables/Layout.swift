import RampartCore

/// The fixed part of Rampart's iptables layout (docs/iptables.md, "Layout"): the entry chains,
/// the per-path chains, the dispatch chains and the fixed ipsets, rebuilt from the IR's
/// instance sets (interfaces, anti-spoofing pairs, MACs) and dispatch maps. The IR's base chains
/// are not translated rule by rule: iptables has one FORWARD chain where nftables has two base
/// chains, no interface sets and no verdict maps, so the same semantics get their own shape here.
///
/// Order on every path that starts at an instance's interface: MAC, then source address (or the
/// few link-protocol packets that may carry another source, to the host only), then the link
/// protocols, then the guarded destinations, then conntrack (invalid, non-SYN new, established,
/// related to a connection the instance is an end of), then the policy. Nothing is accepted or
/// returned before the source checks.
struct InstanceChecks {
    let topology: IPTTopology
    let guarded: [String]
    /// Instance interfaces, sorted.
    private(set) var interfaces: [String] = []
    private(set) var ipv4: [String: [IPv4Address]] = [:]
    private(set) var ipv6: [String: [IPv6Address]] = [:]
    private(set) var macs: [String: MACAddress] = [:]
    /// Dispatch maps: interface → instance chain (IR name).
    private(set) var fromMap: [(String, String)] = [], toMap: [(String, String)] = []

    init(_ ir: RulesetIR, topology: IPTTopology, guarded: [String]) {
        self.topology = topology
        self.guarded = guarded.sorted()
        for e in ir.sets[Naming.instanceInterfaces]?.elements ?? [] { if case .ifname(let n) = e { interfaces.append(n) } }
        interfaces.sort()
        for e in ir.sets[Naming.sources4]?.elements ?? [] { if case .ifaceIPv4(let i, let a) = e { ipv4[i, default: []].append(a) } }
        for e in ir.sets[Naming.sources6]?.elements ?? [] { if case .ifaceIPv6(let i, let a) = e { ipv6[i, default: []].append(a) } }
        for e in ir.sets[Naming.sourceMACs]?.elements ?? [] { if case .ifaceEther(let i, let m) = e { macs[i] = m } }
        for (k, v) in ipv4 { ipv4[k] = v.sorted() }
        for (k, v) in ipv6 { ipv6[k] = v.sorted() }
        fromMap = (ir.maps[Naming.fromInstanceMap]?.elements ?? [:]).compactMap { k, v in v.chainReference.map { (k, $0) } }.sorted { $0.0 < $1.0 }
        toMap = (ir.maps[Naming.toInstanceMap]?.elements ?? [:]).compactMap { k, v in v.chainReference.map { (k, $0) } }.sorted { $0.0 < $1.0 }
    }

    var bridged: Bool { topology == .bridged }

    /// An instance's interface as a match (the bridge port when bridged).
    func iif(_ x: String) -> String { bridged ? "-m physdev --physdev-in \(x)" : "-i \(x)" }
    func oif(_ x: String) -> String { bridged ? "-m physdev --physdev-out \(x) --physdev-is-bridged" : "-o \(x)" }

    /// A guarded prefix as a match of the incoming interface (bridged: port).
    func guardIn(_ p: String) -> String { bridged ? "-m physdev --physdev-in \(Self.wildcard(p))" : "-i \(Self.wildcard(p))" }
    func guardOut(_ p: String) -> String { bridged ? "-m physdev --physdev-out \(Self.wildcard(p)) --physdev-is-bridged" : "-o \(Self.wildcard(p))" }

    /// Whether the match `wildcard(prefix)` takes interface `name`.
    static func covers(_ prefix: String, _ name: String) -> Bool {
        prefix.utf8.count >= 15 ? prefix == name : name.utf8.starts(with: prefix.utf8)
    }

    /// The fixed ipsets, routed only: (address, interface) pairs per family, for the source
    /// check (see `chains`).
    func sets() -> [String: IPSetSpec] {
        guard !bridged else { return [:] }
        let t = "hash:net,iface"
        var s4 = IPSetSpec(family: .ipv4, type: t), s6 = IPSetSpec(family: .ipv6, type: t)
        for (i, as_) in ipv4 { for a in as_ { s4.members.insert("\(a),\(i)") } }
        for (i, as_) in ipv6 { for a in as_ { s6.members.insert("\(a),\(i)") } }
        return [IPTNames.sources4: s4, IPTNames.sources6: s6]
    }

    /// A guarded prefix as an interface match: `tap` → `tap+` (iptables', physdev's and
    /// ebtables' prefix wildcard). Names are at most 15 bytes and so is the match text: a
    /// 15-byte prefix can only be a whole name, matched as such.
    static func wildcard(_ prefix: String) -> String {
        prefix.utf8.count >= 15 ? prefix : prefix + "+"
    }

    /// The u32 test "the ICMPv6 payload at offset 8 (an NA's target) is `a`", as iptables-save
    /// prints it. Valid only when the ICMPv6 header follows the IPv6 header directly (checked
    /// first in `rp-na-chk`).
    static func naTarget(_ a: IPv6Address) -> String {
        let words = [UInt32(truncatingIfNeeded: a.hi >> 32), UInt32(truncatingIfNeeded: a.hi), UInt32(truncatingIfNeeded: a.lo >> 32), UInt32(truncatingIfNeeded: a.lo)]
        return "-m u32 --u32 \"" + words.enumerated().map { "0x\(String(48 + 4 * $0.offset, radix: 16))=0x\(String($0.element, radix: 16))" }.joined(separator: "&&") + "\""
    }

    /// Every fixed and dispatch chain of one family.
    ///
    /// "From an instance" and "to an instance" are dispatch chains of per-interface (bridged:
    /// per-port) rules that set the mark bit (`-g rp-accept`), each followed by a mark test:
    /// `rp-is-in`, `rp-is-out`. (A `hash:net,iface` set of `0.0.0.0/0,tapX` members would be one
    /// lookup, but the kernel hashes such a set without the interface name: every member lands
    /// in one bucket and the set is full after a few dozen instances; bridged, the set match
    /// cannot ask for the bridge port at all.) The source check is one lookup in `rp-src4` /
    /// `rp-src6` (`hash:net,iface`, `A,tapX`: distinct addresses hash apart), routed; bridged, a
    /// dispatch chain of `-s A -m physdev --physdev-in tapX` rules, `rp-spoof`.
    func chains(_ f: IPFamily, into chains: inout [String: [String]]) {
        let v6 = f == .ipv6
        let inv = "-m conntrack --ctstate INVALID -j DROP"
        let syn = "-p tcp -m conntrack --ctstate NEW -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -j DROP"
        let est = "-m conntrack --ctstate RELATED,ESTABLISHED"
        // From an instance, only its own connections' related packets (docs/iptables.md; the
        // nftables backend's reason, Compiler.baseChains): the rest go through its group rules.
        let established = "-m conntrack --ctstate ESTABLISHED"
        func relatedOwn(_ then: String) -> [String] {
            [clear, "-m conntrack --ctstate RELATED -j \(IPTNames.relatedOwn)", "\(marked) -g \(then)"]
        }
        let clear = IPTRender.clearMark
        let marked = "-m mark --mark \(IPTRender.markMask)/\(IPTRender.markMask)", unmarked = "-m mark ! --mark \(IPTRender.markMask)/\(IPTRender.markMask)"
        let notMarked = "\(unmarked) -j DROP"
        let mac = "-j \(IPTNames.macCheck)"
        func icmp6(_ t: Int) -> String { "-p ipv6-icmp -m icmp6 --icmpv6-type \(t)" }
        let hl255 = "-m hl --hl-eq 255", notHL255 = "-m hl ! --hl-eq 255"
        let dhcpRequest = "-p udp -m udp --sport 68 --dport 67", dhcpReply = "-p udp -m udp --sport 67 --dport 68"
        let dhcpServer = "-p udp -m udp --sport 67"
        let ndpAll = [133, 134, 135, 136, 137], ndpFromInstance = [133, 135, 136], ndpUnspecified = [133, 135]
        // Guarded prefixes (`guardIn`, `guardOut`): an interface (port) of the prefix that is
        // no instance's. Only reached after the instance test sent instances elsewhere.
        // The instance tests leave the mark bit set when they match.
        let testIn = [clear, "-j \(IPTNames.isInstanceIn)"], testOut = [clear, "-j \(IPTNames.isInstanceOut)"]
        let spoof = bridged ? [clear, "-j \(IPTNames.spoof)", notMarked, clear] : ["-m set ! --match-set \(IPTNames.sources(f)) src,src -j DROP"]

        /// The head of every path from an instance (entered with the mark bit set by the
        /// test): MAC, link protocols, source. `accept` is the verdict for the link protocols
        /// that may pass (to the host: back to INPUT; bridged FORWARD: on the link), nil when
        /// they never pass (routed FORWARD).
        func fromInstanceHead(accept: String?, forward: Bool) -> [String] {
            var l = [clear, mac]
            // To a guarded device that is no instance's: dropped, established too (the
            // instance test runs only for a destination of a guarded prefix).
            if forward { l += guarded.map { "\(guardOut($0)) -j \(IPTNames.guardTo)" } }
            guard let accept else {
                l += spoof
                if v6 { l += ndpAll.map { "\(icmp6($0)) -j DROP" } } else { l += ["\(dhcpRequest) -j DROP", "\(dhcpServer) -j DROP"] }
                return l
            }
            if v6 {
                l += ["\(icmp6(134)) -j DROP", "\(icmp6(137)) -j DROP"]
                l += ndpFromInstance.map { "\(icmp6($0)) \(notHL255) -j DROP" }
                l.append("\(icmp6(136)) -j \(IPTNames.naCheck)")
                l += ndpFromInstance.map { "-s fe80::/10 \(icmp6($0)) -j \(accept)" }
                l += ndpUnspecified.map { "-s ::/128 \(icmp6($0)) -j \(accept)" }
                l += spoof
                l += ndpFromInstance.map { "\(icmp6($0)) -j \(accept)" }
            } else {
                if forward {
                    // Bridged: a DHCP server may sit elsewhere on the bridge, never on another
                    // instance of this host.
                    l.append("\(dhcpRequest) -j \(IPTNames.dhcpTo)")
                }
                l.append("-s 0.0.0.0/32 \(dhcpRequest) -j \(accept)")
                l += spoof
                l.append("\(dhcpRequest) -j \(accept)")
                l.append("\(dhcpServer) -j DROP")
            }
            return l
        }
        let policyFrom = [clear, "-j \(IPTNames.fromInstances)", notMarked]
        // The ingress of a receiving instance: its chain drops what its groups do not accept;
        // a destination that is no instance's matches nothing in rp-to.
        let policyTo = [clear, "-j \(IPTNames.toInstances)"]

        // FORWARD. Bridged, a packet the hypervisor routes onto the bridge has no output port yet
        // (`--physdev-is-bridged` is false, `--physdev-out` names nothing): the receiving
        // instance is found by the destination address instead (`rp-fwd-dst`, and `rp-to-host`
        // from an instance), else its ingress would never be asked.
        let routed = "-m physdev ! --physdev-is-bridged"
        chains[IPTNames.forward] = testIn + ["\(marked) -g \(IPTNames.forwardFrom)"] + guarded.map { "\(guardIn($0)) -j DROP" }
            + testOut + ["\(marked) -g \(IPTNames.forwardTo)"] + (bridged ? ["\(routed) -j \(IPTNames.forwardRoutedDispatch)"] : [])
            + guarded.map { "\(guardOut($0)) -j DROP" }
        chains[IPTNames.forwardFrom] = fromInstanceHead(accept: bridged ? "ACCEPT" : nil, forward: true)
            + [inv, syn, "\(established) -j ACCEPT"] + relatedOwn(IPTNames.relatedAccept) + policyFrom + policyTo
            + (bridged ? ["\(routed) -j \(IPTNames.toHostInstances)"] : []) + [clear, "-j ACCEPT"]
        var toLink: [String]
        if bridged {
            // The router and DHCP server of a bridged segment may sit elsewhere on it.
            toLink = v6 ? ndpAll.map { "\(icmp6($0)) \(hl255) -j ACCEPT" } + ndpAll.map { "\(icmp6($0)) -j DROP" } : ["\(dhcpReply) -j ACCEPT"]
        } else {
            toLink = v6 ? ndpAll.map { "\(icmp6($0)) -j DROP" } : ["\(dhcpReply) -j DROP"]
        }
        chains[IPTNames.forwardTo] = [clear] + toLink + [inv, syn, "\(est) -j ACCEPT"] + policyTo + [notMarked, clear, "-j ACCEPT"]
        if bridged {
            chains[IPTNames.forwardToRouted] = [clear] + toLink + [inv, syn, "\(est) -j ACCEPT"]
                + [clear, "-j \(IPTNames.toHostInstances)", notMarked, clear, "-j ACCEPT"]
        }

        // INPUT: instance → host.
        chains[IPTNames.input] = testIn + ["\(marked) -g \(IPTNames.inputInstances)"] + guarded.map { "\(guardIn($0)) -j DROP" }
        chains[IPTNames.inputInstances] = fromInstanceHead(accept: "RETURN", forward: false) + [inv, syn, "\(established) -j RETURN"]
            + relatedOwn(IPTNames.clearReturn) + policyFrom + [clear]

        if !guarded.isEmpty { chains[IPTNames.guardTo] = testOut + [notMarked, clear] }
        if bridged && !v6 { chains[IPTNames.dhcpTo] = testOut + ["\(marked) -j DROP", clear] }
        chains[IPTNames.isInstanceIn] = interfaces.map { "\(iif($0)) -g \(IPTNames.accept)" }
        chains[IPTNames.isInstanceOut] = interfaces.map { "\(oif($0)) -g \(IPTNames.accept)" }
        if bridged {
            chains[IPTNames.spoof] = interfaces.flatMap { i in
                (v6 ? (ipv6[i] ?? []).map { "\($0)/128" } : (ipv4[i] ?? []).map { "\($0)/32" }).map { "-s \($0) \(iif(i)) -g \(IPTNames.accept)" }
            }
        }

        // OUTPUT: host → instance. Bridged, the port is chosen after OUTPUT: by address.
        let hostLink = v6 ? ndpAll.map { "\(icmp6($0)) \(hl255) -j RETURN" } : ["\(dhcpReply) -j RETURN"]
        if bridged {
            var dests: [String] = [], toHost: [String] = [], routedDests: [String] = []
            for (iface, inChain) in toMap {
                let addrs = v6 ? (ipv6[iface] ?? []).map { "\($0)/128" } : (ipv4[iface] ?? []).map { "\($0)/32" }
                for a in addrs {
                    dests.append("-d \(a) -g \(IPTNames.outputInstances)")
                    routedDests.append("-d \(a) -g \(IPTNames.forwardToRouted)")
                    toHost.append("-d \(a) -j \(IPTNames.chain(inChain))")
                }
            }
            chains[IPTNames.output] = ["-j \(IPTNames.outputDispatch)"]
            chains[IPTNames.outputDispatch] = dests
            chains[IPTNames.forwardRoutedDispatch] = routedDests
            chains[IPTNames.toHostInstances] = toHost
        } else {
            chains[IPTNames.output] = testOut + ["\(marked) -g \(IPTNames.outputInstances)"] + guarded.map { "\(guardOut($0)) -j DROP" }
        }
        let toChain = bridged ? IPTNames.toHostInstances : IPTNames.toInstances
        chains[IPTNames.outputInstances] = [clear] + hostLink + [inv, syn, "\(est) -j RETURN", clear, "-j \(toChain)", notMarked, clear]

        // Dispatch chains.
        chains[IPTNames.macCheck] = interfaces.compactMap { i in macs[i].map { "\(iif(i)) -m mac ! --mac-source \($0) -j DROP" } }
        chains[IPTNames.fromInstances] = fromMap.map { "\(iif($0.0)) -j \(IPTNames.chain($0.1))" }
        chains[IPTNames.toInstances] = toMap.map { "\(oif($0.0)) -j \(IPTNames.chain($0.1))" }
        chains[IPTNames.accept] = [IPTRender.setMark]
        chains[IPTNames.relatedOwn] = interfaces.flatMap { i in
            (v6 ? (ipv6[i] ?? []).map { "\($0)" } : (ipv4[i] ?? []).map { "\($0)" }).flatMap { a in
                ["--ctorigsrc", "--ctreplsrc"].map { "\(iif(i)) -m conntrack \($0) \(a) -g \(IPTNames.accept)" }
            }
        }
        chains[IPTNames.relatedAccept] = [clear, "-j ACCEPT"]
        chains[IPTNames.clearReturn] = [clear]
        if v6 {
            chains[IPTNames.naCheck] = [
                // Extension headers before the ICMPv6 header would move the target: refused.
                "-m u32 ! --u32 \"0x4>>0x8&0xff=0x3a\" -j DROP",
                "-m u32 --u32 \"0x30&0xffc00000=0xfe800000\" -j RETURN",
                clear, "-j \(IPTNames.naTargets)", notMarked, clear,
            ]
            chains[IPTNames.naTargets] = interfaces.flatMap { i in (ipv6[i] ?? []).map { "\(iif(i)) \(Self.naTarget($0)) -g \(IPTNames.accept)" } }
        }
    }

    /// The raw table of one family: the source checks again, before conntrack (raw is at
    /// priority -300, conntrack at -200). The filter table's checks come after conntrack has
    /// taken the packet: an instance's in-window RST in another's name, dropped there, had
    /// already moved that instance's connection to CLOSE (`AttackTests.spoofedResetNeverReaches
    /// Conntrack`; the nftables backend checks on its prerouting hook for the same reason).
    ///
    /// `RAMPART-PRE` sends only packets from an interface of a guarded prefix (one wildcard
    /// rule each) or from an instance interface no prefix covers (one rule each) on to
    /// `rp-pre-chk`; everything else leaves after those few rules. `rp-pre-chk` returns a
    /// packet whose source is its interface's (routed: one lookup in `rp-src4`/`rp-src6`;
    /// bridged: the `-s A --physdev-in X` rules of `rp-pre-src`, as `rp-spoof`) or one of the link's own
    /// sources (rule 5: DHCP from 0.0.0.0, NDP from `::` or link-local; filter decides about
    /// them), and drops the rest: spoofed packets and every packet of a guarded interface that
    /// is no instance's (rule 9), before they can touch anyone's conntrack entry. The filter
    /// table keeps its own checks (a foreign raw rule inserted before Rampart's jump could
    /// accept a packet past these).
    func raw(_ f: IPFamily) -> [String: [String]] {
        let v6 = f == .ipv6
        let uncovered = interfaces.filter { i in !guarded.contains { Self.covers($0, i) } }
        let entry = guarded.map { "\(guardIn($0)) -g \(IPTNames.preCheck)" } + uncovered.map { "\(iif($0)) -g \(IPTNames.preCheck)" }
        var check: [String]
        var out: [String: [String]] = [:]
        if bridged {
            // The per-address rules are a dispatch chain (a plug patches it, as `rp-spoof`): a
            // RETURN there would only leave it, so a match sets the mark bit and `rp-pre-ok`
            // clears it and leaves (the bit is never set past the raw table: routing after
            // PREROUTING may read marks).
            let clear = IPTRender.clearMark, marked = "-m mark --mark \(IPTRender.markMask)/\(IPTRender.markMask)"
            check = [clear, "-j \(IPTNames.preSources)", "\(marked) -g \(IPTNames.preOK)"]
            out[IPTNames.preSources] = interfaces.flatMap { i in
                (v6 ? (ipv6[i] ?? []).map { "\($0)/128" } : (ipv4[i] ?? []).map { "\($0)/32" }).map { "-s \($0) \(iif(i)) -g \(IPTNames.preMark)" }
            }
            out[IPTNames.preMark] = [IPTRender.setMark]
            out[IPTNames.preOK] = [clear]
        } else {
            check = ["-m set --match-set \(IPTNames.sources(f)) src,src -j RETURN"]
        }
        if v6 {
            check += [133, 135, 136].map { "-s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type \($0) -j RETURN" }
            check += [133, 135].map { "-s ::/128 -p ipv6-icmp -m icmp6 --icmpv6-type \($0) -j RETURN" }
        } else {
            check.append("-s 0.0.0.0/32 -p udp -m udp --sport 68 --dport 67 -j RETURN")
        }
        check.append("-j DROP")
        out[IPTNames.prerouting] = entry
        out[IPTNames.preCheck] = check
        return out
    }

    /// ebtables' nat table (bridged only). Every frame entering the bridge meets `RAMPART-L2`
    /// before the bridge learns its source MAC: a frame from an instance with a MAC must carry
    /// it (whatever it holds: iptables' MAC check comes after the learning, and a frame with
    /// another's MAC would move that MAC to the sender's port), and an instance may send plain
    /// IPv4, IPv6 and ARP only — a VLAN-tagged (802.1Q, 802.1ad) or PPPoE frame is not IP to
    /// br_netfilter and would cross the bridge past every iptables rule. ARP from instance
    /// ports must carry one of the instance's IPv4 addresses (and its MAC, when it has one),
    /// as Neutron's `neutronARP-*` chains do; guarded ports send no ARP nor any other non-IP
    /// frame, and the host sends no IP to them (OUTPUT: the bridge port is known here, not in
    /// iptables' OUTPUT).
    func ebtables() -> [String: [String]] {
        guard bridged else { return [:] }
        // Source MACs first (one rule per instance with a MAC: every frame walks them, as every
        // packet walks `rp-spoof`), then IP passes on to br_netfilter, ARP to its checks, and
        // any other ethertype from an instance or a guarded port is dropped.
        var link = interfaces.compactMap { i in macs[i].map { "-s ! \($0) -i \(i) -j DROP" } }
        // `RAMPART-ARP` drops or returns here: an ARP frame it let through leaves by the RETURN after.
        link += ["-p IPv4 -j RETURN", "-p IPv6 -j RETURN", "-p ARP -j \(IPTNames.arp)", "-p ARP -j RETURN"]
        link += interfaces.map { "-i \($0) -j DROP" }
        link += guarded.map { "-i \(Self.wildcard($0)) -j DROP" }
        var arp: [String] = []
        for i in interfaces {
            let m = macs[i]
            let smac = m.map { " -s \($0)" } ?? "", amac = m.map { " --arp-mac-src \($0)" } ?? ""
            for a in ipv4[i] ?? [] { arp.append("-p ARP\(smac) -i \(i) --arp-ip-src \(a)\(amac) -j RETURN") }
            // An address probe (RFC 5227) carries the unspecified sender address.
            arp.append("-p ARP\(smac) -i \(i) --arp-op Request --arp-ip-src 0.0.0.0\(amac) -j RETURN")
            arp.append("-p ARP -i \(i) -j DROP")
        }
        arp += guarded.map { "-p ARP -i \(Self.wildcard($0)) -j DROP" }
        var out = [IPTNames.link: link, IPTNames.arp: arp]
        if !guarded.isEmpty {
            out[IPTNames.bridgeOutput] = interfaces.map { "-o \($0) -j RETURN" }
                + guarded.flatMap { ["-p IPv4 -o \(Self.wildcard($0)) -j DROP", "-p IPv6 -o \(Self.wildcard($0)) -j DROP"] }
        }
        return out
    }
}
