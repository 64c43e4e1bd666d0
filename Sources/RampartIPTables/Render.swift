import Foundation
import RampartCore

/// How instances are told apart at the hypervisor.
public enum IPTTopology: String, Sendable, CaseIterable {
    /// Each instance's host-side interface is routed (no bridge): `-i tapX` / `-o tapX`.
    case routed
    /// Instances' taps are bridge ports (br_netfilter): `-m physdev --physdev-in/--physdev-out`.
    case bridged
}

/// What Rampart's part of one family's filter table holds: chain name → rule specs, each as
/// `iptables-save` prints it after `-A <chain> ` (so read-back compares text with text).
public struct IPTChains: Hashable, Sendable {
    public var chains: [String: [String]] = [:]
    public init(chains: [String: [String]] = [:]) { self.chains = chains }

    /// The dispatch chains' rules sorted (their order does not matter, see `IPTNames.unordered`):
    /// compare canonical forms.
    public var canonical: IPTChains {
        var c = self
        for n in IPTNames.unordered { c.chains[n] = c.chains[n]?.sorted() }
        return c
    }
}

/// One ipset Rampart owns.
public struct IPSetSpec: Hashable, Sendable {
    public var family: IPFamily
    /// Addresses in their canonical text form.
    public var members: Set<String>
    /// The ipset type: always `hash:ip` for Rampart's sets; read back as found.
    public var type: String
    public init(family: IPFamily, members: Set<String> = [], type: String = "hash:ip") {
        self.family = family
        self.members = members
        self.type = type
    }
}

/// Everything Rampart owns in the iptables world: chains of each family and the ipsets.
public struct IPTState: Hashable, Sendable {
    public var v4 = IPTChains()
    public var v6 = IPTChains()
    /// ebtables' nat table (bridged topology: ARP anti-spoofing, host → guarded ports).
    public var eb = IPTChains()
    /// The raw table of each family: the source checks before conntrack (`RAMPART-PRE`).
    public var raw4 = IPTChains()
    public var raw6 = IPTChains()
    public var sets: [String: IPSetSpec] = [:]
    /// Built-in chains (per family) that already jump to Rampart's entry chain.
    public var jumps4: Set<String> = []
    public var jumps6: Set<String> = []
    public var jumpsEB: Set<String> = []
    /// The raw table's PREROUTING, when it jumps to `RAMPART-PRE`.
    public var jumpsRaw4: Set<String> = []
    public var jumpsRaw6: Set<String> = []
    public init() {}

    /// The filter table of one family.
    public subscript(_ f: IPFamily) -> IPTChains {
        get { f == .ipv4 ? v4 : v6 }
        set { if f == .ipv4 { v4 = newValue } else { v6 = newValue } }
    }

    /// The raw table of one family.
    public func raw(_ f: IPFamily) -> IPTChains { f == .ipv4 ? raw4 : raw6 }
    public func jumpsRaw(_ f: IPFamily) -> Set<String> { f == .ipv4 ? jumpsRaw4 : jumpsRaw6 }
}

/// An IR the iptables backend cannot express.
public struct IPTUnsupported: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ d: String) { description = "iptables backend: " + d }
}

/// IR → iptables chains and ipsets. The IR's base chains are not translated one by one: their
/// layout (ct state, then the egress dispatch, then the ingress dispatch) is fixed by the compiler,
/// and is rebuilt here from the dispatch maps and the instance-interface set, solving the single
/// FORWARD chain of iptables (see docs/iptables.md).
public enum IPTRender {
    static let markMask = "0x" + String(IPTNames.markBit, radix: 16)
    static let setMark = "-j MARK --set-xmark \(markMask)/\(markMask)"
    static let clearMark = "-j MARK --set-xmark 0x0/\(markMask)"
    static let markedReturn = "-m mark --mark \(markMask)/\(markMask) -j RETURN"

    public static func state(_ ir: RulesetIR?, topology: IPTTopology = .routed, guarded: [String]? = nil) throws -> IPTState {
        guard let ir else { return IPTState() }
        return try partial(ir, chains: nil, dispatch: true, sets: nil, topology: topology, guarded: guarded)
    }

    /// The interface-name prefixes of rule 9 (`guarded_prefixes`) the IR carries.
    public static func guardedPrefixes(_ ir: RulesetIR) -> [String] {
        GuardedPrefixes.of(ir)
    }

    /// Only part of the state: the given IR chains (nil: all regular chains), the fixed and
    /// dispatch chains and the fixed sets (instance interfaces, anti-spoofing pairs) if asked,
    /// the given IR member sets (nil: all). The incremental path renders only what a Plan touches.
    public static func partial(_ ir: RulesetIR, chains only: Set<String>?, dispatch withDispatch: Bool, sets onlySets: Set<String>?,
                               topology: IPTTopology, guarded: [String]? = nil) throws -> IPTState {
        var st = IPTState()
        for n in onlySets ?? Set(ir.sets.keys) {
            guard let s = ir.sets[n] else { continue }
            switch s.keyType {
            case .ipv4Addr: st.sets[IPTNames.set(s.name)] = IPSetSpec(family: .ipv4, members: Set(s.elements.map(\.description)))
            case .ipv6Addr: st.sets[IPTNames.set(s.name)] = IPSetSpec(family: .ipv6, members: Set(s.elements.map(\.description)))
            case .ifname, .ifnameIPv4, .ifnameIPv6, .ifnameEther, .ifnameNDTarget: break  // the fixed sets and chains: see `InstanceChecks`
            }
        }
        let chainList = only.map { $0.compactMap { ir.chains[$0] } } ?? Array(ir.chains.values)
        let layout = withDispatch ? InstanceChecks(ir, topology: topology, guarded: guarded ?? guardedPrefixes(ir)) : nil
        for f in [IPFamily.ipv4, .ipv6] {
            var out = IPTChains()
            for c in chainList where c.base == nil {
                let name = IPTNames.chain(c.name)
                var lines: [String] = []
                for r in c.rules { lines += try rule(r, in: name, family: f, helpers: &out.chains) }
                out.chains[name] = lines
            }
            if let layout {
                layout.chains(f, into: &out.chains)
                if f == .ipv4 { st.raw4.chains = layout.raw(f) } else { st.raw6.chains = layout.raw(f) }
            }
            st[f] = out
        }
        if let layout {
            for (n, spec) in layout.sets() { st.sets[n] = spec }
            st.eb.chains = layout.ebtables()
        }
        return st
    }

    /// The family a rule belongs to (nil: both).
    static func family(_ r: IRRule) -> IPFamily? {
        for m in r.matches {
            switch m {
            case .nfproto(let f), .saddrInSet(let f, _), .daddrInSet(let f, _): return f
            case .ip4Saddr, .ip4Daddr, .ip4SaddrNot, .icmpType, .icmpCode, .l4proto(1): return .ipv4
            case .ip6Saddr, .ip6Daddr, .ip6SaddrNot, .icmpv6Type, .icmpv6Code, .l4proto(58): return .ipv6
            default: continue
            }
        }
        return nil
    }

    /// Protocol names as iptables-save prints them: the system's protocol database
    /// (/etc/protocols, as iptables itself looks them up), else iptables' built-in names, else
    /// the number.
    static let protoNames: [String] = (0...255).map { n -> String in
        var ent = protoent()
        var result: UnsafeMutablePointer<protoent>?
        var buf = [CChar](repeating: 0, count: 1024)
        if getprotobynumber_r(Int32(n), &ent, &buf, buf.count, &result) == 0, let r = result, let name = r.pointee.p_name {
            return String(cString: name)
        }
        switch n {
        case 1: return "icmp"
        case 6: return "tcp"
        case 17: return "udp"
        case 58: return "ipv6-icmp"
        case 132: return "sctp"
        case 136: return "udplite"
        case 50: return "esp"
        case 51: return "ah"
        case 135: return "mh"
        default: return String(n)
        }
    }

    static func protoName(_ n: UInt8) -> String { protoNames[Int(n)] }

    static func ports(_ r: ClosedRange<UInt16>) -> String {
        r.lowerBound == r.upperBound ? "\(r.lowerBound)" : "\(r.lowerBound):\(r.upperBound)"
    }

    /// One IR rule as the rule specs of `chain` in family `f` (none if the rule is of the other
    /// family). May add a helper chain to `helpers`.
    static func rule(_ r: IRRule, in chain: String, family f: IPFamily, helpers: inout [String: [String]]) throws -> [String] {
        if let rf = family(r), rf != f { return [] }
        var src: [String] = [], dst: [String] = [], notSrc: [String] = []
        var proto: UInt8?
        var setMatch: [String] = [], mac: [String] = [], ct: [String] = []
        var dport: ClosedRange<UInt16>?, usport: UInt16?, udport: UInt16?
        var icmpType: UInt8?, icmpCode: UInt8?, icmp6Types: ClosedRange<UInt8>?, icmp6Code: UInt8?
        for m in r.matches {
            switch m {
            case .iifnameInSet, .oifnameInSet, .iifnameNotInSet: throw IPTUnsupported("interface sets in regular chains")
            case .ctState(let s):
                var names: [String] = []
                if s.contains(.invalid) { names.append("INVALID") }
                if s.contains(.new) { names.append("NEW") }
                if s.contains(.related) { names.append("RELATED") }
                if s.contains(.established) { names.append("ESTABLISHED") }
                ct.append("-m conntrack --ctstate " + names.joined(separator: ","))
            case .nfproto: break
            case .l4proto(let p): proto = p
            case .ip4Saddr(let p): src.append(p.description)
            case .ip4Daddr(let p): dst.append(p.description)
            case .ip6Saddr(let p): src.append(p.description)
            case .ip6Daddr(let p): dst.append(p.description)
            case .ip4SaddrNot(let a): notSrc.append("\(a)/32")
            case .ip6SaddrNot(let a): notSrc.append("\(a)/128")
            case .saddrInSet(_, let s): setMatch.append("-m set --match-set \(IPTNames.set(s)) src")
            case .daddrInSet(_, let s): setMatch.append("-m set --match-set \(IPTNames.set(s)) dst")
            case .thDport(let p): dport = p
            case .udpSport(let p): usport = p; proto = proto ?? 17
            case .udpDport(let p): udport = p; proto = proto ?? 17
            case .icmpType(let t): icmpType = t; proto = proto ?? 1
            case .icmpCode(let c): icmpCode = c
            case .icmpv6Type(let t): icmp6Types = t; proto = proto ?? 58
            case .icmpv6Code(let c): icmp6Code = c
            case .etherSaddrNot(let m): mac.append("-m mac ! --mac-source \(m.description)")
            case .ifaceSaddrNotInSet, .ifaceEtherSaddrNotInSet, .ifaceNDTargetNotInSet:
                throw IPTUnsupported("interface . address sets in regular chains")
            case .iifnamePrefix, .oifnamePrefix, .ip6HopLimit, .ip6HopLimitNot, .tcpNotInitialSYN, .ndTargetNotLinkLocal, .ifaceCtSaddrInSet:
                throw IPTUnsupported("base-chain matches in regular chains")
            }
        }
        guard src.count <= 1, dst.count <= 1 else { throw IPTUnsupported("several address prefixes in one rule") }
        let target: [String]
        switch r.verdict {
        case .accept: target = ["-g \(IPTNames.accept)"]
        case .drop: target = ["-j DROP"]
        case .return: target = ["-j RETURN"]
        case .goto(let c): target = ["-g \(IPTNames.chain(c))"]
        case .jump(let c): target = ["-j \(IPTNames.chain(c))"]
        case .vmap: throw IPTUnsupported("verdict maps in regular chains")
        }
        var head: [String] = []
        if let s = src.first { head.append("-s \(s)") }
        var helper: String?
        if notSrc.count == 1 {
            head.append("! -s \(notSrc[0])")
        } else if notSrc.count > 1 {
            guard case .drop = r.verdict else { throw IPTUnsupported("several negated addresses with a verdict other than drop") }
            let h = IPTNames.spoofHelper(chain)
            guard helpers[h] == nil else { throw IPTUnsupported("two multi-address anti-spoofing rules in one chain") }
            helpers[h] = notSrc.map { "-s \($0) -j RETURN" } + ["-j DROP"]
            helper = h
        }
        if let d = dst.first { head.append("-d \(d)") }
        if let p = proto { head.append("-p \(protoName(p))") }
        head += mac + ct + setMatch
        var tails: [[String]] = [[]]
        if usport != nil || udport != nil {
            var t = "-m udp"
            if let s = usport { t += " --sport \(s)" }
            if let d = udport { t += " --dport \(d)" }
            tails = [[t]]
        } else if let d = dport {
            switch proto {
            case 6: tails = [["-m tcp --dport \(ports(d))"]]
            case 17: tails = [["-m udp --dport \(ports(d))"]]
            case 132: tails = [["-m sctp --dport \(ports(d))"]]
            case nil: throw IPTUnsupported("port match without protocol")
            default: tails = [["-m multiport --dports \(ports(d))"]]
            }
        } else if let t = icmpType {
            tails = [["-m icmp --icmp-type \(t)" + (icmpCode.map { "/\($0)" } ?? "")]]
        } else if let ts = icmp6Types {
            tails = ts.map { ["-m icmp6 --icmpv6-type \($0)" + (icmp6Code.map { "/\($0)" } ?? "")] }
        }
        if let c = r.comment { head.append("-m comment --comment \(quote(c))") }
        var out: [String] = []
        for t in tails {
            // Put the comment after the protocol match, where iptables-save prints it.
            var parts = head
            if r.comment != nil, let last = parts.popLast() { parts += t; parts.append(last) } else { parts += t }
            if let h = helper {
                out.append((parts + ["-j \(h)"]).joined(separator: " "))
            } else {
                out.append((parts + target).joined(separator: " "))
                if case .jump = r.verdict { out.append(markedReturn) }
            }
        }
        return out
    }

    /// A comment as iptables-save prints it.
    static func quote(_ s: String) -> String {
        // iptables-save escapes backslashes and both quotes; iptables-restore reads that back.
        "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "'", with: "\\'") + "\""
    }
}

