/// The nftables objects Rampart writes and reads back, as plain values.
///
/// They mirror what the kernel stores (not nft's syntax), so a table read back over netlink
/// compares equal to the values that created it.

/// An nftables address family (`NFPROTO_*`).
public enum NFTFamily: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case inet = 1, ipv4 = 2, arp = 3, netdev = 5, bridge = 7, ipv6 = 10

    public var description: String {
        switch self {
        case .inet: "inet"
        case .ipv4: "ip"
        case .arp: "arp"
        case .netdev: "netdev"
        case .bridge: "bridge"
        case .ipv6: "ip6"
        }
    }
}

/// A table. Rampart owns one (`inet rampart`) and never touches any other.
public struct NFTTable: Sendable, Hashable {
    public var family: NFTFamily
    public var name: String
    /// `NFT_TABLE_F_*` bits (dormant 0x1, owner 0x2, persist 0x4).
    public var flags: UInt32
    /// Shown by nft as the table's comment.
    public var comment: String?
    /// A private tag kept in the table's userdata (nft ignores it).
    public var tag: [UInt8]?

    public init(family: NFTFamily, name: String, flags: UInt32 = 0, comment: String? = nil, tag: [UInt8]? = nil) {
        self.family = family
        self.name = name
        self.flags = flags
        self.comment = comment
        self.tag = tag
    }
}

/// Netfilter hooks a base chain can attach to (`NF_INET_*`).
public enum NFTHook: UInt32, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case prerouting = 0, input = 1, forward = 2, output = 3, postrouting = 4

    public var description: String {
        switch self {
        case .prerouting: "prerouting"
        case .input: "input"
        case .forward: "forward"
        case .output: "output"
        case .postrouting: "postrouting"
        }
    }
}

/// What a base chain does with a packet that no rule decided.
public enum NFTChainPolicy: UInt32, Sendable, Hashable {
    case drop = 0, accept = 1
}

/// The attachment of a base chain: type, hook, priority and policy.
public struct NFTBaseChainSpec: Sendable, Hashable {
    /// `filter`, `nat` or `route`.
    public var type: String
    public var hook: NFTHook
    public var priority: Int32
    public var policy: NFTChainPolicy

    public init(type: String = "filter", hook: NFTHook, priority: Int32, policy: NFTChainPolicy = .accept) {
        self.type = type
        self.hook = hook
        self.priority = priority
        self.policy = policy
    }
}

/// A chain: a base chain when `base` is set, a regular chain (reached by jump/goto) otherwise.
public struct NFTChain: Sendable, Hashable {
    public var family: NFTFamily
    public var table: String
    public var name: String
    public var base: NFTBaseChainSpec?
    /// Shown by nft as the chain's comment.
    public var comment: String?
    /// A private tag kept in the chain's userdata (Rampart stores a content hash; nft ignores it).
    public var tag: [UInt8]?

    public init(family: NFTFamily, table: String, name: String, base: NFTBaseChainSpec? = nil,
                comment: String? = nil, tag: [UInt8]? = nil) {
        self.family = family
        self.table = table
        self.name = name
        self.base = base
        self.comment = comment
        self.tag = tag
    }
}

/// A verdict: ends a rule's evaluation (accept, drop, ...) or moves to another chain.
public enum NFTVerdict: Sendable, Hashable, CustomStringConvertible {
    case accept, drop, `return`, `continue`
    case jump(String)
    case goto(String)

    /// The kernel's verdict code (`NF_ACCEPT`, `NF_DROP`, `NFT_JUMP`, ...).
    var code: Int32 {
        switch self {
        case .drop: 0
        case .accept: 1
        case .continue: -1
        case .return: -5
        case .jump: -3
        case .goto: -4
        }
    }

    /// The chain a jump or goto leads to.
    public var target: String? {
        switch self {
        case .jump(let c), .goto(let c): c
        default: nil
        }
    }

    init?(code: Int32, chain: String?) {
        switch code {
        case 0: self = .drop
        case 1: self = .accept
        case -1: self = .continue
        case -5: self = .return
        case -3: guard let chain else { return nil }; self = .jump(chain)
        case -4: guard let chain else { return nil }; self = .goto(chain)
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .accept: "accept"
        case .drop: "drop"
        case .return: "return"
        case .continue: "continue"
        case .jump(let c): "jump \(c)"
        case .goto(let c): "goto \(c)"
        }
    }
}

/// A set's key type: nft's datatype id, which nft needs in the set to print its elements
/// (confirmed by reading back sets that nft itself created: see the netlink tests). Any id read
/// back from the kernel is representable, so a set someone else put in Rampart's table can still
/// be read (and removed).
public struct NFTSetKeyType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let ipv4Address = NFTSetKeyType(rawValue: 7)
    public static let ipv6Address = NFTSetKeyType(rawValue: 8)
    public static let inetService = NFTSetKeyType(rawValue: 13)
    public static let ifname = NFTSetKeyType(rawValue: 41)
    /// Concatenations (nft packs each component's id in 6 bits): `ifname . ipv4_addr`,
    /// `ifname . ipv6_addr`, `ifname . ether_addr`.
    public static let ifnameIPv4 = NFTSetKeyType(rawValue: 41 << 6 | 7)
    public static let ifnameIPv6 = NFTSetKeyType(rawValue: 41 << 6 | 8)
    public static let ifnameEther = NFTSetKeyType(rawValue: 41 << 6 | 9)
    /// `typeof iifname . @th,64,128`: an interface and 16 raw bytes of the transport header (a
    /// neighbour advertisement's target address). To nft the raw part is an integer (id 4).
    public static let ifnameTransport128 = NFTSetKeyType(rawValue: 41 << 6 | 4)
    /// `ifname . mark`: an interface and a 32-bit number (an instance's group slot).
    public static let ifnameMark = NFTSetKeyType(rawValue: 41 << 6 | 19)
    /// nft's `integer` type: raw bytes of a length the set definition gives.
    public static let integer = NFTSetKeyType(rawValue: 4)

    /// Key length in bytes of the known types.
    public var length: UInt32? {
        switch self {
        case .ipv4Address: 4
        case .ipv6Address: 16
        case .inetService: 2
        case .ifname: 16
        // Each component of a concatenation takes whole 32-bit registers: a MAC takes 8 bytes.
        case .ifnameIPv4: 20
        case .ifnameIPv6, .ifnameTransport128: 32
        case .ifnameEther: 24
        case .ifnameMark: 20
        default: nil
        }
    }

    /// nft's byte order of the key (1 host, 2 big endian), which nft needs in the set's
    /// userdata to print elements: addresses and ports are network order, names are strings.
    var nftByteOrder: UInt32 { self == .ifname ? 1 : 2 }

    /// The userdata nft itself writes for a `typeof` key (read from a set nft 1.0.6 created with
    /// `typeof iifname . @th,64,128`): the key byte order, then the concatenation of a `meta
    /// iifname` and a raw transport payload at bit 64, 128 bits long. With it `nft list` prints the
    /// set as nft would and the listing loads back with `nft -f`; without it nft cannot type
    /// the lookup that reads the raw field. nil for keys described by their type id alone.
    var nftTypeofUserData: [UInt8]? {
        guard self == .ifnameTransport128 else { return nil }
        return [0x00, 0x04, 0x00, 0x00, 0x00, 0x00,
                0x03, 0x40, 0x00, 0x04, 0x0d, 0x00, 0x00, 0x00, 0x01, 0x38,
                0x00, 0x0e, 0x00, 0x04, 0x09, 0x00, 0x00, 0x00, 0x01, 0x06, 0x00, 0x04, 0x06, 0x00, 0x00, 0x00,
                0x01, 0x26, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00, 0x01, 0x1e,
                0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x02, 0x04, 0x03, 0x00, 0x00, 0x00,
                0x03, 0x04, 0x40, 0x00, 0x00, 0x00, 0x04, 0x04, 0x80, 0x00, 0x00, 0x00]
    }

    public var description: String {
        switch self {
        case .ipv4Address: "ipv4_addr"
        case .ipv6Address: "ipv6_addr"
        case .inetService: "inet_service"
        case .ifname: "ifname"
        case .ifnameIPv4: "ifname . ipv4_addr"
        case .ifnameIPv6: "ifname . ipv6_addr"
        case .ifnameEther: "ifname . ether_addr"
        case .ifnameTransport128: "typeof iifname . @th,64,128"
        case .ifnameMark: "ifname . mark"
        case .integer: "integer"
        default: "type \(rawValue)"
        }
    }
}

/// A named set, or a verdict map when `isVerdictMap` is set.
public struct NFTSetDefinition: Sendable, Hashable {
    public var family: NFTFamily
    public var table: String
    public var name: String
    public var keyType: NFTSetKeyType
    /// Key length in bytes (from the key type for the known types).
    public var keyLength: UInt32
    /// Interval set: elements are ranges (prefixes) rather than single keys.
    public var isInterval: Bool
    /// A map whose values are verdicts (`ifname : verdict`, used with `vmap`).
    public var isVerdictMap: Bool
    /// A map whose values are data of this type (`ifname . mark : integer`), looked up into a
    /// register; nil for a set or a verdict map.
    public var dataType: NFTSetKeyType?
    /// Length in bytes of a data map's values.
    public var dataLength: UInt32 = 0
    /// Read back only: an anonymous set (`NFT_SET_ANONYMOUS`, nft's `{ 1, 2 }` in a rule,
    /// named `__set<N>`). It belongs to the rule that uses it and is deleted with that rule;
    /// deleting it by name is refused (ENOENT).
    public var isAnonymous = false
    /// Shown by nft as the set's comment.
    public var comment: String?
    /// A private tag kept in the set's userdata (nft ignores it).
    public var tag: [UInt8]?
    /// The most elements the set may hold (`NFTA_SET_DESC_SIZE`, nft's `size`); nil: no limit.
    /// Also a size hint: given one, the kernel builds the set as a hash table of that size from
    /// the start (`nft_hash`) instead of a resizable one (`nft_rhash`) that starts at 4 buckets
    /// and is grown behind the inserts. The limit is hard: an element past it is refused
    /// (ENFILE), and the kernel cannot change a set's size in place.
    public var size: UInt32?

    public init(family: NFTFamily, table: String, name: String, keyType: NFTSetKeyType,
                isInterval: Bool = false, isVerdictMap: Bool = false, dataType: NFTSetKeyType? = nil,
                comment: String? = nil, tag: [UInt8]? = nil) {
        self.dataType = dataType
        self.dataLength = dataType?.length ?? 0
        self.family = family
        self.table = table
        self.name = name
        self.keyType = keyType
        self.keyLength = keyType.length ?? 0
        self.isInterval = isInterval
        self.isVerdictMap = isVerdictMap
        self.comment = comment
        self.tag = tag
    }

    /// `NFT_SET_*` flags for the kernel.
    var kernelFlags: UInt32 {
        var f: UInt32 = 0
        if isInterval { f |= 0x4 }     // NFT_SET_INTERVAL
        if isVerdictMap || dataType != nil { f |= 0x8 }   // NFT_SET_MAP
        return f
    }
}

/// One element of a set or map.
///
/// For an interval set, a prefix is stored by the kernel as a half-open range: an element at
/// its first address and an "interval end" element at the address after its last. `rangeEnd`
/// is that exclusive end; `nil` means the range runs to the end of the key space.
public struct NFTSetElement: Sendable, Hashable {
    public var key: [UInt8]
    public var rangeEnd: [UInt8]?
    /// For a verdict map: the element's verdict.
    public var verdict: NFTVerdict?
    /// For a data map: the element's value.
    public var data: [UInt8]?
    /// Shown by nft as the element's comment (at most 127 bytes).
    public var comment: String?

    public init(key: [UInt8], rangeEnd: [UInt8]? = nil, verdict: NFTVerdict? = nil, data: [UInt8]? = nil, comment: String? = nil) {
        self.key = key
        self.rangeEnd = rangeEnd
        self.verdict = verdict
        self.data = data
        self.comment = comment
    }

    /// The key's and the value's bytes, fed whole: the synthesized hash fed every byte of them
    /// alone (`Hasher.combine(UInt8)`), which was a tenth of a cold apply's lowering at
    /// host-5k (its member and instance elements go through sets). Equal elements have equal
    /// keys and values, so equal hashes; the comment and verdict are left to `==`.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(key.count)
        key.withUnsafeBytes { hasher.combine(bytes: $0) }
        if let d = data {
            hasher.combine(d.count)
            d.withUnsafeBytes { hasher.combine(bytes: $0) }
        }
        if let r = rangeEnd { r.withUnsafeBytes { hasher.combine(bytes: $0) } }
    }
}

/// A rule: a sequence of expressions evaluated in order, with userdata for comments and tags.
public struct NFTRule: Sendable, Hashable {
    public var family: NFTFamily
    public var table: String
    public var chain: String
    public var expressions: [NFTExpr]
    /// Shown by `nft list ruleset` as `comment "..."`.
    public var comment: String?
    /// A private tag (Rampart stores a content hash); nft ignores it.
    public var tag: [UInt8]?
    /// The kernel's handle, filled in on read-back only.
    public var handle: UInt64?

    public init(family: NFTFamily, table: String, chain: String, expressions: [NFTExpr],
                comment: String? = nil, tag: [UInt8]? = nil, handle: UInt64? = nil) {
        self.family = family
        self.table = table
        self.chain = chain
        self.expressions = expressions
        self.comment = comment
        self.tag = tag
        self.handle = handle
    }
}
