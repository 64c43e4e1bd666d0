/// nftables expressions: the kernel's instruction set for rules.
///
/// `NFTExpr` mirrors the kernel's expressions one to one (what `nft --debug=netlink` shows),
/// so a rule read back compares equal to the rule written. `NFTMatch` builds the common matches
/// (interface names, addresses, ports, conntrack state, set lookups) out of them, emitting the
/// same bytecode `nft` emits so that `nft list ruleset` prints them as the matches they are.

/// Registers. `verdict` receives verdicts (and vmap results); `r1`...`r4` are 128-bit data
/// registers, enough for an interface name or an IPv6 address.
public enum NFTRegister: UInt32, Sendable, Hashable {
    case verdict = 0, r1 = 1, r2 = 2, r3 = 3, r4 = 4
    /// 32-bit registers (`NFT_REG32_00` … `_15`), for concatenations: word k of the data
    /// registers (`r1` is words 0–3, `r2` 4–7, `r3` 8–11, `r4` 12–15: the same storage, named
    /// either way).
    case r32_00 = 8, r32_01 = 9, r32_02 = 10, r32_03 = 11, r32_04 = 12, r32_05 = 13, r32_06 = 14, r32_07 = 15
    case r32_08 = 16, r32_09 = 17, r32_10 = 18, r32_11 = 19, r32_12 = 20, r32_13 = 21, r32_14 = 22, r32_15 = 23

    /// The register that starts at 32-bit word `k` (0–15): the 128-bit name where one starts there.
    public static func word(_ k: Int) -> NFTRegister {
        switch k {
        case 0: .r1
        case 4: .r2
        case 8: .r3
        case 12: .r4
        default: NFTRegister(rawValue: UInt32(8 + k))!
        }
    }
}

/// `meta` keys Rampart uses (`NFT_META_*`).
public enum NFTMetaKey: UInt32, Sendable, Hashable {
    case length = 0, nfproto = 15, l4proto = 16, iifname = 6, oifname = 7, iiftype = 8, oiftype = 9
    case mark = 3, iif = 4, oif = 5
}

/// `ct` keys Rampart uses (`NFT_CT_*`).
public enum NFTCtKey: UInt32, Sendable, Hashable {
    case state = 0, direction = 1, status = 2, mark = 3
    /// The tuple's source address of one direction (`ct original ip saddr`, `ct reply ip6 saddr`).
    case sourceIPv4 = 19, sourceIPv6 = 21
}

/// Where a payload offset counts from (`NFT_PAYLOAD_*_HEADER`).
public enum NFTPayloadBase: UInt32, Sendable, Hashable {
    case linkLayer = 0, network = 1, transport = 2
}

/// Comparison operators of `cmp` and `range` (`NFT_CMP_*`).
public enum NFTCmpOp: UInt32, Sendable, Hashable {
    case eq = 0, neq = 1, lt = 2, lte = 3, gt = 4, gte = 5
}

/// One kernel expression.
public enum NFTExpr: Sendable, Hashable {
    /// Load packet metadata into `dreg`.
    case meta(key: NFTMetaKey, dreg: NFTRegister)
    /// Compare `sreg` with `data`; a false comparison ends the rule.
    case cmp(sreg: NFTRegister, op: NFTCmpOp, data: [UInt8])
    /// Load `length` bytes at `offset` from a header into `dreg`.
    case payload(base: NFTPayloadBase, offset: UInt32, length: UInt32, dreg: NFTRegister)
    /// `dreg = (sreg & mask) ^ xor` over `mask.count` bytes.
    case bitwise(sreg: NFTRegister, dreg: NFTRegister, mask: [UInt8], xor: [UInt8])
    /// `from <= sreg <= to` (op eq) or its negation (op neq).
    case range(sreg: NFTRegister, op: NFTCmpOp, from: [UInt8], to: [UInt8])
    /// Look `sreg` up in a named set. With `dreg` (`.verdict` for a vmap) the map's value is
    /// loaded; otherwise a miss (or, when `inverted`, a hit) ends the rule.
    case lookup(set: String, sreg: NFTRegister, dreg: NFTRegister?, inverted: Bool)
    /// Load conntrack data into `dreg`.
    case ct(key: NFTCtKey, dreg: NFTRegister)
    /// Load a key of one direction's tuple of the packet's connection (`ct original ip saddr`):
    /// `reply` false for the original direction. For a related packet (an ICMP error) the
    /// connection is the one it is related to.
    case ctTuple(key: NFTCtKey, reply: Bool, dreg: NFTRegister)
    /// Count packets and bytes. Values are ignored when writing a new rule's counter as 0.
    case counter(packets: UInt64, bytes: UInt64)
    /// Set the verdict.
    case verdict(NFTVerdict)
    /// Load constant data into `dreg` (e.g. the second part of a concatenated lookup key).
    case immediate(dreg: NFTRegister, data: [UInt8])
    /// Read back only: an expression Rampart does not write (someone else's), by kernel name.
    case foreign(String)

    /// The kernel's expression name.
    public var kind: String {
        switch self {
        case .meta: "meta"
        case .cmp: "cmp"
        case .payload: "payload"
        case .bitwise: "bitwise"
        case .range: "range"
        case .lookup: "lookup"
        case .ct, .ctTuple: "ct"
        case .counter: "counter"
        case .verdict, .immediate: "immediate"
        case .foreign(let name): name
        }
    }

    /// Names of the sets this expression refers to.
    public var referencedSet: String? {
        if case .lookup(let set, _, _, _) = self { return set }
        return nil
    }

    /// The chain a jump/goto verdict refers to.
    public var referencedChain: String? {
        if case .verdict(let v) = self { return v.target }
        return nil
    }
}

/// `ct state` bits (`NF_CT_STATE_*_BIT`).
public struct NFTCtState: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let invalid = NFTCtState(rawValue: 1)
    public static let established = NFTCtState(rawValue: 2)
    public static let related = NFTCtState(rawValue: 4)
    public static let new = NFTCtState(rawValue: 8)
    public static let untracked = NFTCtState(rawValue: 64)
}

/// Builders of common matches, each the bytecode nft itself generates for that match, so
/// `nft list ruleset` prints it back as the same match (e.g. `iifname "tap0"`,
/// `ip saddr 10.0.0.0/8`, `tcp dport 22`, `ct state established,related`).
public enum NFTMatch {
    /// Interface names are compared as 16 NUL-padded bytes (`IFNAMSIZ`), as nft does.
    public static func ifnameBytes(_ name: String) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 16)
        var i = 0
        for b in name.utf8 where i < 15 {
            bytes[i] = b
            i += 1
        }
        return bytes
    }

    /// `iifname "NAME"` / `oifname "NAME"` (or `!=` when `equal` is false).
    public static func interface(_ key: NFTMetaKey, _ name: String, equal: Bool = true) -> [NFTExpr] {
        [.meta(key: key, dreg: .r1), .cmp(sreg: .r1, op: equal ? .eq : .neq, data: ifnameBytes(name))]
    }

    /// `meta nfproto ipv4|ipv6`.
    public static func nfproto(_ family: NFTFamily) -> [NFTExpr] {
        [.meta(key: .nfproto, dreg: .r1), .cmp(sreg: .r1, op: .eq, data: [family.rawValue])]
    }

    /// `meta l4proto N`.
    public static func l4proto(_ proto: UInt8) -> [NFTExpr] {
        [.meta(key: .l4proto, dreg: .r1), .cmp(sreg: .r1, op: .eq, data: [proto])]
    }

    /// Source or destination address field of IPv4 or IPv6 (offset and length in the header).
    public enum AddressField: Sendable {
        case source, destination
        public func location(ipv6: Bool) -> (offset: UInt32, length: UInt32) {
            switch (self, ipv6) {
            case (.source, false): (12, 4)
            case (.destination, false): (16, 4)
            case (.source, true): (8, 16)
            case (.destination, true): (24, 16)
            }
        }
    }

    /// `ip saddr A/len` or `ip6 daddr A/len` (with the family check nft adds in the inet family).
    /// A full-length prefix is an exact compare; a shorter one masks first; /0 only checks
    /// the family. `equal: false` negates the comparison (`!=`).
    public static func address(_ field: AddressField, _ address: [UInt8], prefixLength: Int? = nil,
                               equal: Bool = true) -> [NFTExpr] {
        nfproto(address.count == 16 ? .ipv6 : .ipv4)
            + addressWithoutFamilyCheck(field, address, prefixLength: prefixLength, equal: equal)
    }

    /// `address(...)` without its `meta nfproto` check, for callers that already made it.
    public static func addressWithoutFamilyCheck(_ field: AddressField, _ address: [UInt8], prefixLength: Int? = nil,
                                                 equal: Bool = true) -> [NFTExpr] {
        let ipv6 = address.count == 16
        precondition(address.count == 4 || address.count == 16, "address must be 4 or 16 bytes")
        let bits = prefixLength ?? address.count * 8
        guard bits > 0 else { return [] }
        let (offset, length) = field.location(ipv6: ipv6)
        // nft's own encoding, which it prints back as a prefix: a prefix ending on a byte
        // boundary loads and compares only the bytes it covers; any other loads the whole
        // address and masks it.
        if bits % 8 == 0 {
            let bytes = bits / 8
            return [.payload(base: .network, offset: offset, length: UInt32(bytes), dreg: .r1),
                    .cmp(sreg: .r1, op: equal ? .eq : .neq, data: Array(address.prefix(bytes)))]
        }
        var mask = [UInt8](repeating: 0, count: address.count)
        for bit in 0..<bits { mask[bit / 8] |= 0x80 >> UInt8(bit % 8) }
        let masked = zip(address, mask).map { $0 & $1 }
        return [.payload(base: .network, offset: offset, length: length, dreg: .r1),
                .bitwise(sreg: .r1, dreg: .r1, mask: mask, xor: [UInt8](repeating: 0, count: address.count)),
                .cmp(sreg: .r1, op: equal ? .eq : .neq, data: masked)]
    }

    /// `ip saddr @set` / `ip6 daddr != @set`.
    public static func address(_ field: AddressField, ipv6: Bool, inSet set: String, inverted: Bool = false) -> [NFTExpr] {
        nfproto(ipv6 ? .ipv6 : .ipv4) + addressLookupWithoutFamilyCheck(field, ipv6: ipv6, inSet: set, inverted: inverted)
    }

    /// `address(_:ipv6:inSet:)` without its `meta nfproto` check.
    public static func addressLookupWithoutFamilyCheck(_ field: AddressField, ipv6: Bool, inSet set: String,
                                                       inverted: Bool = false) -> [NFTExpr] {
        let (offset, length) = field.location(ipv6: ipv6)
        return [.payload(base: .network, offset: offset, length: length, dreg: .r1),
                .lookup(set: set, sreg: .r1, dreg: nil, inverted: inverted)]
    }

    /// `iifname @set` / `oifname != @set`.
    public static func interface(_ key: NFTMetaKey, inSet set: String, inverted: Bool = false) -> [NFTExpr] {
        [.meta(key: key, dreg: .r1), .lookup(set: set, sreg: .r1, dreg: nil, inverted: inverted)]
    }

    /// `iifname . ip saddr @set` (or `!= @set`, or `ip6`): the interface and the source address
    /// as one concatenated key (interface in register 1, address in register 2, as nft does).
    /// Without the `meta nfproto` check, which the caller adds.
    public static func interfaceAndSourceWithoutFamilyCheck(ipv6: Bool, inSet set: String, inverted: Bool = false) -> [NFTExpr] {
        let (offset, length) = AddressField.source.location(ipv6: ipv6)
        return [.meta(key: .iifname, dreg: .r1),
                .payload(base: .network, offset: offset, length: length, dreg: .r2),
                .lookup(set: set, sreg: .r1, dreg: nil, inverted: inverted)]
    }

    /// `iifname . ct original ip saddr @set` (`reply`: `ct reply …`; `ipv6`: `ip6 saddr`), without
    /// the family check nft adds before it.
    public static func interfaceAndConnectionSourceWithoutFamilyCheck(ipv6: Bool, reply: Bool, inSet set: String) -> [NFTExpr] {
        [.meta(key: .iifname, dreg: .r1),
         .ctTuple(key: ipv6 ? .sourceIPv6 : .sourceIPv4, reply: reply, dreg: .r2),
         .lookup(set: set, sreg: .r1, dreg: nil, inverted: false)]
    }

    /// `iifname . ether saddr @set` (or `!= @set`), with the `meta iiftype ether` check nft adds.
    public static func interfaceAndEtherSource(inSet set: String, inverted: Bool = false) -> [NFTExpr] {
        [.meta(key: .iiftype, dreg: .r1), .cmp(sreg: .r1, op: .eq, data: [1, 0]),
         .meta(key: .iifname, dreg: .r1),
         .payload(base: .linkLayer, offset: 6, length: 6, dreg: .r2),
         .lookup(set: set, sreg: .r1, dreg: nil, inverted: inverted)]
    }

    /// `iifname vmap @map` / `oifname vmap @map`.
    public static func interfaceVerdictMap(_ key: NFTMetaKey, map: String) -> [NFTExpr] {
        [.meta(key: key, dreg: .r1), .lookup(set: map, sreg: .r1, dreg: .verdict, inverted: false)]
    }

    /// `tcp dport 22` / `udp sport 1000-2000`: the protocol check, then the port (or range).
    public static func port(protocol proto: UInt8, destination: Bool, _ ports: ClosedRange<UInt16>) -> [NFTExpr] {
        l4proto(proto) + transportPort(destination: destination, ports)
    }

    /// `th dport N` (or a range): the port field of TCP, UDP and SCTP alike, without a
    /// protocol check (the caller adds one).
    public static func transportPort(destination: Bool, _ ports: ClosedRange<UInt16>) -> [NFTExpr] {
        let load = NFTExpr.payload(base: .transport, offset: destination ? 2 : 0, length: 2, dreg: .r1)
        if ports.lowerBound == ports.upperBound {
            return [load, .cmp(sreg: .r1, op: .eq, data: be16(ports.lowerBound))]
        }
        return [load, .range(sreg: .r1, op: .eq, from: be16(ports.lowerBound), to: be16(ports.upperBound))]
    }

    /// `icmp type T [code C]` (IPv4, protocol 1) or `icmpv6 type ...` (protocol 58). A type
    /// range (`icmpv6 type 133-136`) uses a `range` expression.
    public static func icmp(v6: Bool, types: ClosedRange<UInt8>, code: UInt8? = nil) -> [NFTExpr] {
        l4proto(v6 ? 58 : 1) + icmpType(types) + (code.map(icmpCode) ?? [])
    }

    /// The ICMP/ICMPv6 type field (same offset in both), without the protocol check.
    public static func icmpType(_ types: ClosedRange<UInt8>) -> [NFTExpr] {
        let load = NFTExpr.payload(base: .transport, offset: 0, length: 1, dreg: .r1)
        if types.lowerBound == types.upperBound {
            return [load, .cmp(sreg: .r1, op: .eq, data: [types.lowerBound])]
        }
        return [load, .range(sreg: .r1, op: .eq, from: [types.lowerBound], to: [types.upperBound])]
    }

    /// The ICMP/ICMPv6 code field, without the protocol check.
    public static func icmpCode(_ code: UInt8) -> [NFTExpr] {
        [.payload(base: .transport, offset: 1, length: 1, dreg: .r1), .cmp(sreg: .r1, op: .eq, data: [code])]
    }

    /// `ct state established,related` (any of the given states).
    public static func ctState(_ states: NFTCtState) -> [NFTExpr] {
        [.ct(key: .state, dreg: .r1),
         .bitwise(sreg: .r1, dreg: .r1, mask: le32(states.rawValue), xor: [0, 0, 0, 0]),
         .cmp(sreg: .r1, op: .neq, data: [0, 0, 0, 0])]
    }

    /// `ether saddr != MAC` (with the `meta iiftype ether` check nft adds).
    public static func etherSource(_ mac: [UInt8], equal: Bool = true) -> [NFTExpr] {
        precondition(mac.count == 6, "a MAC address has 6 bytes")
        return [.meta(key: .iiftype, dreg: .r1), .cmp(sreg: .r1, op: .eq, data: [1, 0]),
                .payload(base: .linkLayer, offset: 6, length: 6, dreg: .r1),
                .cmp(sreg: .r1, op: equal ? .eq : .neq, data: mac)]
    }

    /// `iifname "tap*"` / `oifname "tap*"`: the name starts with `prefix` (nft compares only
    /// the prefix's bytes, without the terminating NUL).
    public static func interface(_ key: NFTMetaKey, prefix: String) -> [NFTExpr] {
        [.meta(key: key, dreg: .r1), .cmp(sreg: .r1, op: .eq, data: Array(prefix.utf8.prefix(15)))]
    }

    /// `ip6 hoplimit N` / `ip6 hoplimit != N`, without the family check (the caller adds it).
    public static func ip6HopLimit(_ value: UInt8, equal: Bool = true) -> [NFTExpr] {
        [.payload(base: .network, offset: 7, length: 1, dreg: .r1), .cmp(sreg: .r1, op: equal ? .eq : .neq, data: [value])]
    }

    /// `tcp flags & (fin|syn|rst|ack) != syn`: anything but an initial SYN, without the
    /// protocol check (the caller adds it).
    public static let tcpNotInitialSYN: [NFTExpr] = [
        .payload(base: .transport, offset: 13, length: 1, dreg: .r1),
        .bitwise(sreg: .r1, dreg: .r1, mask: [0x17], xor: [0]),
        .cmp(sreg: .r1, op: .neq, data: [0x02]),
    ]

    /// `@th,64,16 & 0xffc0 != 0xfe80`: a neighbour advertisement's target (ICMPv6 bytes
    /// 8-23) is not link-local; without the protocol check.
    public static let ndTargetNotLinkLocal: [NFTExpr] = [
        .payload(base: .transport, offset: 8, length: 2, dreg: .r1),
        .bitwise(sreg: .r1, dreg: .r1, mask: [0xff, 0xc0], xor: [0, 0]),
        .cmp(sreg: .r1, op: .neq, data: [0xfe, 0x80]),
    ]

    /// `iifname . @th,64,128 @set` (or `!=`): the input interface and a neighbour
    /// advertisement's target as one `ifname . ipv6_addr` key; without the protocol check.
    public static func interfaceAndNDTarget(inSet set: String, inverted: Bool = false) -> [NFTExpr] {
        [.meta(key: .iifname, dreg: .r1),
         .payload(base: .transport, offset: 8, length: 16, dreg: .r2),
         .lookup(set: set, sreg: .r1, dreg: nil, inverted: inverted)]
    }

    /// A fresh counter.
    public static let counter: [NFTExpr] = [.counter(packets: 0, bytes: 0)]

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
    /// ct state and meta iiftype are host-endian registers; this project runs on little-endian
    /// Linux (x86_64, aarch64).
    static func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
}
