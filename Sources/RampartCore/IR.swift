/// The backend-neutral ruleset: what the kernel should hold, as plain values. The nftables
/// backend translates each object 1:1 into netlink objects; tests compare IRs with `==`.
public struct RulesetIR: Hashable, Sendable {
    /// Always `rampart`.
    public var tableName: String = Naming.table
    /// Always inet: one table covers IPv4 and IPv6.
    public var family: String = "inet"
    /// Chains by name (base chains included).
    public var chains: [String: Chain] = [:]
    /// Named sets by name.
    public var sets: [String: NamedSet] = [:]
    /// Verdict maps by name.
    public var maps: [String: VerdictMap] = [:]

    public init(chains: [String: Chain] = [:], sets: [String: NamedSet] = [:], maps: [String: VerdictMap] = [:]) {
        self.chains = chains
        self.sets = sets
        self.maps = maps
    }

    /// The guarded interface-name prefixes (contract rule 9), as the egress base chain drops
    /// them, in order. Derived from the chain so that it can never disagree with the kernel
    /// layout; backends that do not translate base chains one by one (iptables) read it here.
    public var guardedPrefixes: [String] {
        (chains[Naming.egressChain]?.rules ?? []).compactMap { r in
            if r.matches.count == 1, case .iifnamePrefix(let p) = r.matches[0] { return p }
            return nil
        }
    }
}

/// Netfilter hooks Rampart attaches base chains to.
public enum Hook: String, Hashable, Sendable {
    /// `prerouting`: every packet arriving, before defragmentation and conntrack (the source
    /// checks run there first, so that a spoofed packet never touches a connection's state).
    case prerouting, forward, input, output
}

/// Policy of a base chain.
public enum ChainPolicy: String, Hashable, Sendable {
    case accept, drop
}

/// What makes a chain a base chain (type filter).
public struct BaseChainSpec: Hashable, Sendable {
    /// Netfilter hook.
    public var hook: Hook
    /// Priority at the hook (lower runs first).
    public var priority: Int32
    /// Verdict for packets that fall off the end.
    public var policy: ChainPolicy

    public init(hook: Hook, priority: Int32, policy: ChainPolicy) {
        self.hook = hook
        self.priority = priority
        self.policy = policy
    }
}

/// A chain's identity without its rules: what `createChain` carries.
public struct ChainHeader: Hashable, Sendable {
    /// The object's name (see `Naming`).
    public var name: String
    /// nil for a regular chain (reached only by jumps).
    public var base: BaseChainSpec?

    public init(name: String, base: BaseChainSpec? = nil) {
        self.name = name
        self.base = base
    }
}

/// A chain and its rules. The chain is the unit of rule change: it is always rewritten whole.
public struct Chain: Hashable, Sendable {
    /// Name and base-chain spec.
    public var header: ChainHeader
    /// Rules in order.
    public var rules: [IRRule]

    public init(name: String, base: BaseChainSpec? = nil, rules: [IRRule] = []) {
        header = ChainHeader(name: name, base: base)
        self.rules = rules
    }

    /// The object's name.
    public var name: String { header.name }
    /// Hook, priority and policy of a base chain.
    public var base: BaseChainSpec? { header.base }
}

/// Connection-tracking states matched by `ct state`.
public struct CTStates: OptionSet, Hashable, Sendable {
    /// Bit set of states.
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let invalid = CTStates(rawValue: 1)
    public static let established = CTStates(rawValue: 2)
    public static let related = CTStates(rawValue: 4)
    public static let new = CTStates(rawValue: 8)
}

/// One match term of a rule. The terms are neutral (no netlink types); the backend emits the
/// protocol dependency each one implies: `ip*` terms imply `meta nfproto ipv4`, `ip6*` terms
/// `meta nfproto ipv6`, `udpSport`/`udpDport` imply `meta l4proto udp`, `icmp*` terms imply
/// `meta l4proto icmp` / `icmpv6` (the compiler also emits those explicitly where it matters).
public enum Match: Hashable, Sendable {
    /// `iifname @set` / `oifname @set`.
    case iifnameInSet(String)
    case oifnameInSet(String)
    /// `iifname != @set`: the prerouting chain's gate (a packet from no instance leaves it
    /// after one lookup).
    case iifnameNotInSet(String)
    case ctState(CTStates)
    case nfproto(IPFamily)
    case l4proto(UInt8)
    /// Source/destination prefix (never /0: that compiles to `nfproto`).
    case ip4Saddr(IPv4Prefix)
    case ip4Daddr(IPv4Prefix)
    case ip6Saddr(IPv6Prefix)
    case ip6Daddr(IPv6Prefix)
    /// `ip saddr != A` (anti-spoofing; several in one rule means "none of them").
    case ip4SaddrNot(IPv4Address)
    case ip6SaddrNot(IPv6Address)
    /// `ip saddr @set` (family says ip or ip6).
    case saddrInSet(IPFamily, String)
    case daddrInSet(IPFamily, String)
    /// Transport destination port or range (tcp, udp, sctp share the offset).
    case thDport(ClosedRange<UInt16>)
    case udpSport(UInt16)
    case udpDport(UInt16)
    case icmpType(UInt8)
    case icmpCode(UInt8)
    case icmpv6Type(ClosedRange<UInt8>)
    case icmpv6Code(UInt8)
    case etherSaddrNot(MACAddress)
    /// `iifname . ip saddr != @set` (family says ip or ip6): the packet's input interface and
    /// source address are not a pair in the set. Anti-spoofing for every instance in one rule.
    case ifaceSaddrNotInSet(IPFamily, String)
    /// `iifname . ether saddr != @set`.
    case ifaceEtherSaddrNotInSet(String)
    /// `iifname "tap*"` / `oifname "tap*"`: the interface name starts with the prefix (guarded
    /// prefixes, contract rule 9).
    case iifnamePrefix(String)
    case oifnamePrefix(String)
    /// `ip6 hoplimit 255` / `ip6 hoplimit != 255` (neighbour discovery is valid only at 255).
    case ip6HopLimit(UInt8)
    case ip6HopLimitNot(UInt8)
    /// `tcp flags & (fin|syn|rst|ack) != syn`: not the initial SYN of a connection (contract
    /// rule 1; combined with `ct state new`). Implies `meta l4proto tcp`.
    case tcpNotInitialSYN
    /// The target address of a neighbour advertisement (ICMPv6 bytes 8–23) is not link-local
    /// (`fe80::/10`). Implies `meta l4proto icmpv6`; only meaningful with `icmpv6Type(136...136)`.
    case ndTargetNotLinkLocal
    /// `iifname . <neighbour advertisement target> != @set` (set of `ifname . ipv6_addr`).
    case ifaceNDTargetNotInSet(String)
    /// `iifname . ct original ip saddr @set` (`reply`: `ct reply …`; family says ip or ip6): the
    /// input interface and the source of one direction of the packet's connection are a pair
    /// in the set. With `ctState(.related)`: an ICMP error from an instance about a connection
    /// it is an end of (contract rules 1 and 3).
    case ifaceCtSaddrInSet(IPFamily, reply: Bool, String)

    /// The named set this term reads, if any.
    public var setReference: String? {
        switch self {
        case .iifnameInSet(let s), .oifnameInSet(let s), .iifnameNotInSet(let s), .saddrInSet(_, let s), .daddrInSet(_, let s),
             .ifaceSaddrNotInSet(_, let s), .ifaceEtherSaddrNotInSet(let s), .ifaceNDTargetNotInSet(let s),
             .ifaceCtSaddrInSet(_, _, let s): s
        default: nil
        }
    }
}

/// Which interface a verdict-map dispatch looks up.
public enum InterfaceKey: String, Hashable, Sendable {
    case iifname, oifname
}

/// What a rule does when it matches.
public enum Verdict: Hashable, Sendable {
    case accept
    case drop
    case `return`
    case jump(String)
    case goto(String)
    /// `iifname vmap @map` / `oifname vmap @map`: the verdict is looked up in a verdict map.
    case vmap(InterfaceKey, String)

    /// The chain this verdict can transfer control to directly.
    public var chainReference: String? {
        switch self {
        case .jump(let c), .goto(let c): c
        default: nil
        }
    }

    /// The verdict map this verdict reads.
    public var mapReference: String? {
        if case .vmap(_, let m) = self { return m }
        return nil
    }
}

/// One kernel rule.
public struct IRRule: Hashable, Sendable {
    /// All must match (logical and), in order.
    public var matches: [Match]
    /// Packet/byte counter (group rules have one so `show` can print hits).
    public var counter: Bool
    /// What happens on a match.
    public var verdict: Verdict
    /// At most 128 bytes, no double quotes or control characters (see `Naming.ruleComment`).
    public var comment: String?

    public init(_ matches: [Match], counter: Bool = false, _ verdict: Verdict, comment: String? = nil) {
        self.matches = matches
        self.counter = counter
        self.verdict = verdict
        self.comment = comment
    }

    /// Sets and maps this rule reads.
    public var setReferences: [String] {
        var out = matches.compactMap(\.setReference)
        if let m = verdict.mapReference { out.append(m) }
        return out
    }
}

/// Key type of a named set.
public enum SetKeyType: String, Hashable, Sendable {
    case ipv4Addr = "ipv4_addr"
    case ipv6Addr = "ipv6_addr"
    case ifname
    /// Concatenations: an interface and the source it may use.
    case ifnameIPv4 = "ifname . ipv4_addr"
    case ifnameIPv6 = "ifname . ipv6_addr"
    case ifnameEther = "ifname . ether_addr"
    /// The same keys as `ifnameIPv6`, looked up with a neighbour advertisement's target address:
    /// a raw payload field to nft, so the set is declared with `typeof` (and written with nft's
    /// own `typeof` userdata, so that `nft list` prints and reloads it the same way).
    case ifnameNDTarget = "typeof iifname . @th,64,128"

    /// The set's key as declared in nft text (`type …` or `typeof …`).
    public var declaration: String {
        self == .ifnameNDTarget ? rawValue : "type " + rawValue
    }
}

/// One element of a named set.
public enum SetElement: Hashable, Sendable, Comparable, CustomStringConvertible {
    case ipv4(IPv4Address)
    case ipv6(IPv6Address)
    case ifname(String)
    /// An interface and an address or MAC it may send from (anti-spoofing sets).
    case ifaceIPv4(String, IPv4Address)
    case ifaceIPv6(String, IPv6Address)
    case ifaceEther(String, MACAddress)
    /// An interface and an IPv6 address a neighbour advertisement from it may name as its
    /// target (the set typed `typeof iifname . @th,64,128`: nft reads the address as one
    /// 128-bit integer).
    case ifaceNDTarget(String, IPv6Address)

    public init(_ a: IPAddress) {
        switch a {
        case .v4(let x): self = .ipv4(x)
        case .v6(let x): self = .ipv6(x)
        }
    }

    /// The key type a set holding this element must have.
    public var keyType: SetKeyType {
        switch self {
        case .ipv4: .ipv4Addr
        case .ipv6: .ipv6Addr
        case .ifname: .ifname
        case .ifaceIPv4: .ifnameIPv4
        case .ifaceIPv6: .ifnameIPv6
        case .ifaceEther: .ifnameEther
        case .ifaceNDTarget: .ifnameNDTarget
        }
    }

    /// nft text: addresses bare, interface names quoted.
    public var description: String {
        switch self {
        case .ipv4(let a): a.description
        case .ipv6(let a): a.description
        case .ifname(let s): "\"" + s + "\""
        case .ifaceIPv4(let i, let a): "\"" + i + "\" . " + a.description
        case .ifaceIPv6(let i, let a): "\"" + i + "\" . " + a.description
        case .ifaceEther(let i, let m): "\"" + i + "\" . " + m.description
        case .ifaceNDTarget(let i, let a):
            "\"" + i + "\" . 0x" + a.bytes.map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined()
        }
    }

    public static func < (a: Self, b: Self) -> Bool {
        switch (a, b) {
        case (.ipv4(let x), .ipv4(let y)): x < y
        case (.ipv6(let x), .ipv6(let y)): x < y
        case (.ifname(let x), .ifname(let y)): x < y
        case (.ifaceIPv4(let i, let x), .ifaceIPv4(let j, let y)): (i, x.raw) < (j, y.raw)
        case (.ifaceIPv6(let i, let x), .ifaceIPv6(let j, let y)): i != j ? i < j : x < y
        case (.ifaceEther(let i, let x), .ifaceEther(let j, let y)): (i, x.raw) < (j, y.raw)
        case (.ifaceNDTarget(let i, let x), .ifaceNDTarget(let j, let y)): i != j ? i < j : x < y
        default: a.keyType.rawValue < b.keyType.rawValue
        }
    }
}

/// A set's identity without elements: what `createSet` carries.
public struct SetHeader: Hashable, Sendable {
    /// The object's name (see `Naming`).
    public var name: String
    /// Key type of the elements.
    public var keyType: SetKeyType
    public init(name: String, keyType: SetKeyType) {
        self.name = name
        self.keyType = keyType
    }
}

/// A named set. Sets change only by element deltas.
public struct NamedSet: Hashable, Sendable {
    /// Name and key type.
    public var header: SetHeader
    /// The elements.
    public var elements: Set<SetElement>

    public init(name: String, keyType: SetKeyType, elements: Set<SetElement> = []) {
        header = SetHeader(name: name, keyType: keyType)
        self.elements = elements
    }

    /// The object's name.
    public var name: String { header.name }
    /// Key type of the elements.
    public var keyType: SetKeyType { header.keyType }

}

/// A verdict map keyed by interface name (the dispatch maps).
public struct VerdictMap: Hashable, Sendable {
    /// The object's name (see `Naming`).
    public var name: String
    /// Interface name → verdict (always a jump for Rampart's maps).
    public var elements: [String: Verdict]

    public init(name: String, elements: [String: Verdict] = [:]) {
        self.name = name
        self.elements = elements
    }
}
