import RampartCore
import RampartNetlink

/// Translation between the core's backend-neutral IR and the netlink layer's objects.
///
/// Every IR object maps to exactly one kernel object of the `inet rampart` table, with the
/// bytecode nft itself would generate, so `nft list ruleset` reads like hand-written nft.
enum Translate {
    static let family = NFTFamily.inet

    // MARK: values

    static func bytes(_ a: IPv4Address) -> [UInt8] {
        withUnsafeBytes(of: a.raw.bigEndian) { Array($0) }
    }

    static func bytes(_ a: IPv6Address) -> [UInt8] {
        withUnsafeBytes(of: a.hi.bigEndian) { Array($0) } + withUnsafeBytes(of: a.lo.bigEndian) { Array($0) }
    }

    static func bytes(_ m: MACAddress) -> [UInt8] {
        (0..<6).map { UInt8(truncatingIfNeeded: m.raw >> UInt64(8 * (5 - $0))) }
    }

    static func ipv4(_ b: [UInt8]) -> IPv4Address? {
        guard b.count == 4 else { return nil }
        return IPv4Address(raw: b.reduce(0) { $0 << 8 | UInt32($1) })
    }

    static func ipv6(_ b: [UInt8]) -> IPv6Address? {
        guard b.count == 16 else { return nil }
        let hi = b[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let lo = b[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return IPv6Address(hi: hi, lo: lo)
    }

    /// An interface name from its 16-byte NUL-padded key.
    static func ifname(_ b: [UInt8]) -> String {
        String(decoding: b.prefix { $0 != 0 }, as: UTF8.self)
    }

    static func keyType(_ t: SetKeyType) -> NFTSetKeyType {
        switch t {
        case .ipv4Addr: .ipv4Address
        case .ipv6Addr: .ipv6Address
        case .ifname: .ifname
        case .ifnameIPv4: .ifnameIPv4
        case .ifnameIPv6: .ifnameIPv6
        case .ifnameNDTarget: .ifnameTransport128
        case .ifnameEther: .ifnameEther
        }
    }

    static func keyType(_ t: NFTSetKeyType) -> SetKeyType? {
        switch t {
        case .ipv4Address: .ipv4Addr
        case .ipv6Address: .ipv6Addr
        case .ifname: .ifname
        case .ifnameIPv4: .ifnameIPv4
        case .ifnameIPv6: .ifnameIPv6
        case .ifnameEther: .ifnameEther
        case .ifnameTransport128: .ifnameNDTarget
        default: nil
        }
    }

    /// A key as the kernel stores it; in a concatenation each part fills whole 32-bit words.
    static func key(_ e: SetElement) -> [UInt8] {
        switch e {
        case .ipv4(let a): bytes(a)
        case .ipv6(let a): bytes(a)
        case .ifname(let n): NFTMatch.ifnameBytes(n)
        case .ifaceIPv4(let i, let a): NFTMatch.ifnameBytes(i) + bytes(a)
        case .ifaceIPv6(let i, let a), .ifaceNDTarget(let i, let a): NFTMatch.ifnameBytes(i) + bytes(a)
        case .ifaceEther(let i, let m): NFTMatch.ifnameBytes(i) + bytes(m) + [0, 0]
        }
    }

    static func element(_ key: [UInt8], _ type: NFTSetKeyType) -> SetElement? {
        let iface = key.count > 16 ? ifname(Array(key[0..<16])) : ""
        switch type {
        case .ipv4Address: return ipv4(key).map { .ipv4($0) }
        case .ipv6Address: return ipv6(key).map { .ipv6($0) }
        case .ifname: return .ifname(ifname(key))
        case .ifnameIPv4: return ipv4(Array(key.dropFirst(16))).map { .ifaceIPv4(iface, $0) }
        case .ifnameIPv6: return ipv6(Array(key.dropFirst(16))).map { .ifaceIPv6(iface, $0) }
        case .ifnameTransport128: return ipv6(Array(key.dropFirst(16))).map { .ifaceNDTarget(iface, $0) }
        case .ifnameEther:
            guard key.count == 24 else { return nil }
            return .ifaceEther(iface, MACAddress(raw: key[16..<22].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }))
        default: return nil
        }
    }

    // MARK: chains and rules

    static func hook(_ h: Hook) -> NFTHook {
        switch h {
        case .prerouting: .prerouting
        case .forward: .forward
        case .input: .input
        case .output: .output
        }
    }

    static func chain(_ h: ChainHeader, table: String) -> NFTChain {
        NFTChain(
            family: family, table: table, name: h.name,
            base: h.base.map { NFTBaseChainSpec(hook: hook($0.hook), priority: $0.priority, policy: $0.policy == .accept ? .accept : .drop) })
    }

    /// The expressions of one IR rule. Terms imply their protocol dependency (`ip saddr` needs
    /// `meta nfproto ipv4`, a port needs `meta l4proto`); each dependency is emitted once per
    /// rule, where it is first needed, as nft does.
    static func expressions(_ r: IRRule) -> [NFTExpr] {
        var out: [NFTExpr] = []
        var family: IPFamily?
        var l4: UInt8?
        func need(_ f: IPFamily) {
            if family != f { out += NFTMatch.nfproto(f == .ipv4 ? .ipv4 : .ipv6); family = f }
        }
        func need(l4 p: UInt8) {
            if l4 != p { out += NFTMatch.l4proto(p); l4 = p }
        }
        for m in r.matches {
            switch m {
            case .iifnameInSet(let s): out += NFTMatch.interface(.iifname, inSet: s)
            case .iifnameNotInSet(let s): out += NFTMatch.interface(.iifname, inSet: s, inverted: true)
            case .oifnameInSet(let s): out += NFTMatch.interface(.oifname, inSet: s)
            case .ctState(let s): out += NFTMatch.ctState(NFTCtState(rawValue: UInt32(s.rawValue)))
            case .nfproto(let f): need(f)
            case .l4proto(let p): need(l4: p)
            case .ip4Saddr(let p):
                need(.ipv4); out += NFTMatch.addressWithoutFamilyCheck(.source, bytes(p.address), prefixLength: Int(p.length))
            case .ip4Daddr(let p):
                need(.ipv4); out += NFTMatch.addressWithoutFamilyCheck(.destination, bytes(p.address), prefixLength: Int(p.length))
            case .ip6Saddr(let p):
                need(.ipv6); out += NFTMatch.addressWithoutFamilyCheck(.source, bytes(p.address), prefixLength: Int(p.length))
            case .ip6Daddr(let p):
                need(.ipv6); out += NFTMatch.addressWithoutFamilyCheck(.destination, bytes(p.address), prefixLength: Int(p.length))
            case .ip4SaddrNot(let a):
                need(.ipv4); out += NFTMatch.addressWithoutFamilyCheck(.source, bytes(a), equal: false)
            case .ip6SaddrNot(let a):
                need(.ipv6); out += NFTMatch.addressWithoutFamilyCheck(.source, bytes(a), equal: false)
            case .saddrInSet(let f, let s):
                need(f); out += NFTMatch.addressLookupWithoutFamilyCheck(.source, ipv6: f == .ipv6, inSet: s)
            case .daddrInSet(let f, let s):
                need(f); out += NFTMatch.addressLookupWithoutFamilyCheck(.destination, ipv6: f == .ipv6, inSet: s)
            case .thDport(let ports): out += NFTMatch.transportPort(destination: true, ports)
            case .udpSport(let p): need(l4: 17); out += NFTMatch.transportPort(destination: false, p...p)
            case .udpDport(let p): need(l4: 17); out += NFTMatch.transportPort(destination: true, p...p)
            case .icmpType(let t): need(l4: 1); out += NFTMatch.icmpType(t...t)
            case .icmpCode(let c): need(l4: 1); out += NFTMatch.icmpCode(c)
            case .icmpv6Type(let t): need(l4: 58); out += NFTMatch.icmpType(t)
            case .icmpv6Code(let c): need(l4: 58); out += NFTMatch.icmpCode(c)
            case .etherSaddrNot(let mac): out += NFTMatch.etherSource(bytes(mac), equal: false)
            case .ifaceSaddrNotInSet(let f, let s):
                need(f); out += NFTMatch.interfaceAndSourceWithoutFamilyCheck(ipv6: f == .ipv6, inSet: s, inverted: true)
            case .ifaceEtherSaddrNotInSet(let s): out += NFTMatch.interfaceAndEtherSource(inSet: s, inverted: true)
            case .iifnamePrefix(let p): out += NFTMatch.interface(.iifname, prefix: p)
            case .oifnamePrefix(let p): out += NFTMatch.interface(.oifname, prefix: p)
            case .ip6HopLimit(let h): need(.ipv6); out += NFTMatch.ip6HopLimit(h)
            case .ip6HopLimitNot(let h): need(.ipv6); out += NFTMatch.ip6HopLimit(h, equal: false)
            case .tcpNotInitialSYN: need(l4: 6); out += NFTMatch.tcpNotInitialSYN
            case .ndTargetNotLinkLocal: need(l4: 58); out += NFTMatch.ndTargetNotLinkLocal
            case .ifaceNDTargetNotInSet(let s): need(l4: 58); out += NFTMatch.interfaceAndNDTarget(inSet: s, inverted: true)
            case .ifaceCtSaddrInSet(let f, let reply, let s):
                need(f); out += NFTMatch.interfaceAndConnectionSourceWithoutFamilyCheck(ipv6: f == .ipv6, reply: reply, inSet: s)
            }
        }
        if r.counter { out += NFTMatch.counter }
        switch r.verdict {
        case .accept: out.append(.verdict(.accept))
        case .drop: out.append(.verdict(.drop))
        case .return: out.append(.verdict(.return))
        case .jump(let c): out.append(.verdict(.jump(c)))
        case .goto(let c): out.append(.verdict(.goto(c)))
        case .vmap(let key, let map): out += NFTMatch.interfaceVerdictMap(key == .iifname ? .iifname : .oifname, map: map)
        }
        return out
    }

    static func rule(_ r: IRRule, chain: String, table: String) -> NFTRule {
        NFTRule(family: family, table: table, chain: chain, expressions: expressions(r), comment: r.comment)
    }

    /// Counters read back carry traffic; compare rule bodies without them.
    static func withoutCounts(_ exprs: [NFTExpr]) -> [NFTExpr] {
        exprs.map { if case .counter = $0 { return .counter(packets: 0, bytes: 0) } else { return $0 } }
    }

    static func verdict(_ v: Verdict) -> NFTVerdict? {
        switch v {
        case .accept: .accept
        case .drop: .drop
        case .return: .return
        case .jump(let c): .jump(c)
        case .goto(let c): .goto(c)
        case .vmap: nil
        }
    }

    static func verdict(_ v: NFTVerdict) -> Verdict? {
        switch v {
        case .accept: .accept
        case .drop: .drop
        case .return: .return
        case .jump(let c): .jump(c)
        case .goto(let c): .goto(c)
        case .continue: nil
        }
    }

    // MARK: plans

    /// The comment on Rampart's table, for whoever reads `nft list ruleset`.
    static let tableComment = "managed by rampart: edits here are reverted by the next apply"

    /// A Plan as one batch in the instance-chains layout: every op 1:1. `desired` supplies the
    /// headers of rewritten base chains: a rewrite re-sends the header too, so a base chain whose
    /// policy was changed by hand is restored.
    static func batch(_ plan: Plan, table: String, desired: RulesetIR?) -> Batch {
        var b = Batch()
        for op in plan.ops { append(op, to: &b, table: table, desired: desired) }
        return b
    }

    /// One op as it is sent in the instance-chains layout; `rule` translates each rule of a
    /// rewritten chain (the slot layout replaces the dispatch rules).
    static func append(_ op: PlanOp, to b: inout Batch, table: String, desired: RulesetIR?,
                       rule translateRule: (IRRule, String) -> NFTRule = { r, c in rule(r, chain: c, table: Naming.table) }) {
        switch op {
        case .createTable:
            b.append(.addTable(NFTTable(family: family, name: table, comment: tableComment)))
        case .deleteTable:
            b.append(.deleteTable(family: family, name: table))
        case .createSet(let h):
            b.append(.addSet(NFTSetDefinition(family: family, table: table, name: h.name, keyType: keyType(h.keyType))))
        case .deleteSet(let n), .deleteMap(let n):
            b.append(.deleteSet(family: family, table: table, name: n))
        case .addElements(let n, let e):
            b.append(.addElements(family: family, table: table, set: n, elements: e.map { NFTSetElement(key: key($0)) }))
        case .removeElements(let n, let e):
            b.append(.deleteElements(family: family, table: table, set: n, elements: e.map { NFTSetElement(key: key($0)) }))
        case .createMap(let n):
            b.append(.addSet(NFTSetDefinition(family: family, table: table, name: n, keyType: .ifname, isVerdictMap: true)))
        case .addMapElements(let n, let e):
            let elements = e.sorted { $0.key < $1.key }.map {
                NFTSetElement(key: NFTMatch.ifnameBytes($0.key), verdict: verdict($0.value) ?? .drop)
            }
            b.append(.addElements(family: family, table: table, set: n, elements: elements))
        case .removeMapElements(let n, let keys):
            b.append(.deleteElements(family: family, table: table, set: n, elements: keys.map { NFTSetElement(key: NFTMatch.ifnameBytes($0)) }))
        case .createChain(let h):
            b.append(.addChain(chain(h, table: table)))
        case .rewriteChain(let n, let rules):
            if let header = desired?.chains[n]?.header, header.base != nil {
                b.append(.addChain(chain(header, table: table)))
            }
            b.append(.flushChain(family: family, table: table, name: n))
            for r in rules {
                var x = translateRule(r, n)
                x.table = table
                b.append(.addRule(x))
            }
        case .deleteChain(let n):
            b.append(.deleteChain(family: family, table: table, name: n))
        }
    }
}
