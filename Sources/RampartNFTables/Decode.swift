import RampartCore
import RampartNetlink

/// Kernel bytecode back into IR match terms: the inverse of `Translate.expressions` for every
/// term Rampart writes, so that a table read back without a reference document (what `explain`
/// asks about) still says what each rule matches. A rule with an expression sequence Rampart
/// never writes decodes to nil: it was not written by Rampart, and the caller says so.
enum Decode {
    /// The IR rule a kernel rule encodes, or nil when it is not one Rampart writes.
    static func rule(_ r: NFTRule, groupTags: [[UInt8]: String] = [:]) -> IRRule? {
        var d = Decoder(exprs: r.expressions, groupTags: groupTags)
        guard let (matches, counter, verdict) = d.run() else { return nil }
        return IRRule(matches, counter: counter, verdict, comment: r.comment)
    }

    /// The whole table as IR, every rule decoded (undecodable rules are reported by name).
    static func ir(_ snap: TableSnapshot) -> (ir: RulesetIR, undecoded: [String]) {
        let layout = Observe.layout(of: snap)
        let shapeSets = layout == .slots && snap.sets.contains { RuleShapes.isShapeSet($0.name) }
        var ir = Observe.read(snap, reference: nil, layout: layout, rulesAsElements: shapeSets).ir
        var undecoded: [String] = []
        // The groups a `members` lookup's tag can name: those with members, and those with chains.
        var tags: [[UInt8]: String] = [:]
        if layout == .slots {
            for name in ir.sets.keys { if let (_, g) = Slots.Members.group(ofSet: name) { tags[Slots.Members.tag(g)] = g } }
            for c in snap.chains { if case .group(_, let g)? = Slots.role(of: c.name) { tags[Slots.Members.tag(g)] = g } }
        }
        for c in snap.chains {
            // The slot layout's own chains are read as the logical dispatch they encode.
            if layout == .slots && Slots.objectNames.contains(c.name) { continue }
            var rules: [IRRule] = []
            let group: (Slots.Direction, String)? = if layout == .slots, case .group(let d, let g)? = Slots.role(of: c.name) { (d, g) } else { nil }
            for (i, r) in (snap.rules[c.name] ?? []).enumerated() {
                if let (d, g) = group, let shape = RuleShapes.shape(ofRule: r.expressions, comment: r.comment, group: g, direction: d) {
                    // A shape rule stands for its elements of this group (and remote group).
                    rules += RuleShapes.rules(of: shape, group: g, in: snap.elements[shape.setName] ?? [])
                } else if layout == .slots, let d = Slots.Direction.allCases.first(where: { Translate.withoutCounts(r.expressions) == Slots.entryRule($0) }) {
                    rules.append(IRRule([], .vmap(d == .out ? .iifname : .oifname, d.logicalMap), comment: r.comment))
                } else if let x = rule(r, groupTags: tags) { rules.append(x) } else { undecoded.append("\(c.name)[\(i)]") }
            }
            ir.chains[c.name]?.rules = rules
        }
        // A group some rule names but with no member: its set is empty, not missing.
        for c in ir.chains.values {
            for r in c.rules {
                for m in r.matches {
                    switch m {
                    case .saddrInSet(let f, let name), .daddrInSet(let f, let name):
                        if ir.sets[name] == nil { ir.sets[name] = NamedSet(name: name, keyType: f == .ipv4 ? .ipv4Addr : .ipv6Addr) }
                    default: break
                    }
                }
            }
        }
        return (ir, undecoded)
    }

    private struct Decoder {
        let exprs: [NFTExpr]
        /// Tag → group id, for the tags that are digests (a short id is its own tag).
        let groupTags: [[UInt8]: String]
        var i = 0
        var family: IPFamily?
        var l4: UInt8?

        init(exprs: [NFTExpr], groupTags: [[UInt8]: String]) {
            self.exprs = exprs
            self.groupTags = groupTags
        }

        /// The group a `members` tag names.
        func group(ofTag t: [UInt8]) -> String? {
            groupTags[t] ?? Slots.Members.literalGroup(t)
        }

        func peek(_ k: Int = 0) -> NFTExpr? { i + k < exprs.count ? exprs[i + k] : nil }

        mutating func run() -> ([Match], Bool, Verdict)? {
            var out: [Match] = []
            var counter = false
            while let e = peek() {
                switch e {
                case .counter: counter = true; i += 1
                case .verdict(let v):
                    guard i == exprs.count - 1, let t = Translate.verdict(v) else { return nil }
                    return (out, counter, t)
                case .meta(let key, .r1) where (key == .iifname || key == .oifname) && i + 2 == exprs.count:
                    // `iifname vmap @map` ends the rule: the map's value is the verdict.
                    if case .lookup(let m, .r1, .verdict?, false)? = peek(1) {
                        return (out, counter, .vmap(key == .iifname ? .iifname : .oifname, m))
                    }
                    guard let m = next() else { return nil }
                    out.append(m)
                default:
                    guard let m = next() else { return nil }
                    out.append(m)
                }
            }
            return nil
        }

        /// The next term, or nil when the expressions are not a term Rampart writes. NFTFamily and
        /// protocol checks become explicit terms (evaluated the same as the implied ones) and set
        /// the context the following loads are read in.
        mutating func next() -> Match? {
            guard let e = peek() else { return nil }
            switch e {
            case .meta(let key, .r1):
                switch (key, peek(1), peek(2)) {
                case (.iifname, .lookup(let s, .r1, nil, false)?, _): i += 2; return .iifnameInSet(s)
                case (.iifname, .lookup(let s, .r1, nil, true)?, _): i += 2; return .iifnameNotInSet(s)
                case (.oifname, .lookup(let s, .r1, nil, false)?, _): i += 2; return .oifnameInSet(s)
                case (.iifname, .cmp(.r1, .eq, let d)?, _) where d.count < 16 && !d.contains(0): i += 2; return .iifnamePrefix(Translate.ifname(d))
                case (.oifname, .cmp(.r1, .eq, let d)?, _) where d.count < 16 && !d.contains(0): i += 2; return .oifnamePrefix(Translate.ifname(d))
                case (.iifname, .payload(.network, let off, let len, .r2)?, .lookup(let s, .r1, nil, true)?):
                    guard let f = family, AddressField(off, len, f) == .source else { return nil }
                    i += 3; return .ifaceSaddrNotInSet(f, s)
                case (.iifname, .payload(.transport, 8, 16, .r2)?, .lookup(let s, .r1, nil, true)?):
                    i += 3; return .ifaceNDTargetNotInSet(s)
                case (.iifname, .ctTuple(let key, let reply, .r2)?, .lookup(let s, .r1, nil, false)?):
                    guard let f = family, key == (f == .ipv4 ? .sourceIPv4 : .sourceIPv6) else { return nil }
                    i += 3; return .ifaceCtSaddrInSet(f, reply: reply, s)
                case (.nfproto, .cmp(.r1, .eq, let d)?, _) where d.count == 1:
                    guard let f: IPFamily = d[0] == 2 ? .ipv4 : d[0] == 10 ? .ipv6 : nil else { return nil }
                    family = f; i += 2; return .nfproto(f)
                case (.l4proto, .cmp(.r1, .eq, let d)?, _) where d.count == 1:
                    l4 = d[0]; i += 2; return .l4proto(d[0])
                case (.iiftype, .cmp(.r1, .eq, [1, 0])?, .payload(.linkLayer, 6, 6, .r1)?):
                    guard case .cmp(.r1, .neq, let mac)? = peek(3), mac.count == 6 else { return nil }
                    i += 4; return .etherSaddrNot(MACAddress(raw: mac.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }))
                case (.iiftype, .cmp(.r1, .eq, [1, 0])?, .meta(.iifname, .r1)?):
                    guard case .payload(.linkLayer, 6, 6, .r2)? = peek(3), case .lookup(let s, .r1, nil, true)? = peek(4) else { return nil }
                    i += 5; return .ifaceEtherSaddrNotInSet(s)
                default: return nil
                }
            case .immediate(.r1, let tag):
                // `tag . ip saddr @members4`: a group's member set (Slots.Members.lookup).
                guard let f = family, let g = group(ofTag: tag), case .payload(.network, let off, let len, .r2)? = peek(1),
                      case .lookup(Slots.Members.set(f), .r1, nil, false)? = peek(2), let field = AddressField(off, len, f) else { return nil }
                i += 3
                let name = Slots.Members.logicalSet(f, g)
                return field == .source ? .saddrInSet(f, name) : .daddrInSet(f, name)
            case .ct(.state, .r1):
                guard case .bitwise(.r1, .r1, let mask, _)? = peek(1), mask.count == 4, case .cmp(.r1, .neq, [0, 0, 0, 0])? = peek(2) else { return nil }
                i += 3; return .ctState(CTStates(rawValue: mask[0]))
            case .payload(.network, let off, let len, .r1):
                guard let f = family else { return nil }
                if f == .ipv6 && off == 7 && len == 1, case .cmp(.r1, let op, let d)? = peek(1), d.count == 1 {
                    i += 2; return op == .eq ? .ip6HopLimit(d[0]) : .ip6HopLimitNot(d[0])
                }
                guard let field = AddressField(off, len, f) ?? AddressField(prefixOf: off, len, f) else { return nil }
                if case .lookup(let s, .r1, nil, false)? = peek(1) {
                    i += 2; return field == .source ? .saddrInSet(f, s) : .daddrInSet(f, s)
                }
                var mask: [UInt8]?
                var k = 1
                if case .bitwise(.r1, .r1, let m, _)? = peek(1) { mask = m; k = 2 }
                guard case .cmp(.r1, let op, let data)? = peek(k) else { return nil }
                i += k + 1
                let full = f == .ipv4 ? 4 : 16
                let bits = mask.map { $0.reduce(0) { $0 + $1.nonzeroBitCount } } ?? data.count * 8
                var bytes = data + [UInt8](repeating: 0, count: max(0, full - data.count))
                bytes = Array(bytes.prefix(full))
                switch (f, op, field) {
                case (.ipv4, .eq, .source): return Translate.ipv4(bytes).map { .ip4Saddr(IPv4Prefix(address: $0, length: UInt8(bits))) }
                case (.ipv4, .eq, .destination): return Translate.ipv4(bytes).map { .ip4Daddr(IPv4Prefix(address: $0, length: UInt8(bits))) }
                case (.ipv6, .eq, .source): return Translate.ipv6(bytes).map { .ip6Saddr(IPv6Prefix(address: $0, length: UInt8(bits))) }
                case (.ipv6, .eq, .destination): return Translate.ipv6(bytes).map { .ip6Daddr(IPv6Prefix(address: $0, length: UInt8(bits))) }
                case (.ipv4, .neq, .source) where bits == 32: return Translate.ipv4(bytes).map { .ip4SaddrNot($0) }
                case (.ipv6, .neq, .source) where bits == 128: return Translate.ipv6(bytes).map { .ip6SaddrNot($0) }
                default: return nil
                }
            case .payload(.transport, let off, let len, .r1):
                switch (off, len, peek(1), peek(2)) {
                case (2, 2, .cmp(.r1, .eq, let d)?, _) where d.count == 2:
                    i += 2; let p = UInt16(d[0]) << 8 | UInt16(d[1]); return .thDport(p...p)
                case (2, 2, .range(.r1, .eq, let a, let b)?, _) where a.count == 2 && b.count == 2:
                    i += 2; return .thDport((UInt16(a[0]) << 8 | UInt16(a[1]))...(UInt16(b[0]) << 8 | UInt16(b[1])))
                case (0, 2, .cmp(.r1, .eq, let d)?, _) where d.count == 2 && l4 == 17:
                    i += 2; return .udpSport(UInt16(d[0]) << 8 | UInt16(d[1]))
                case (0, 1, .cmp(.r1, .eq, let d)?, _) where d.count == 1:
                    i += 2; return l4 == 1 ? .icmpType(d[0]) : .icmpv6Type(d[0]...d[0])
                case (0, 1, .range(.r1, .eq, let a, let b)?, _) where l4 == 58 && a.count == 1 && b.count == 1:
                    i += 2; return .icmpv6Type(a[0]...b[0])
                case (1, 1, .cmp(.r1, .eq, let d)?, _) where d.count == 1:
                    i += 2; return l4 == 1 ? .icmpCode(d[0]) : .icmpv6Code(d[0])
                case (13, 1, .bitwise(.r1, .r1, [0x17], _)?, .cmp(.r1, .neq, [0x02])?):
                    i += 3; return .tcpNotInitialSYN
                case (8, 2, .bitwise(.r1, .r1, [0xff, 0xc0], _)?, .cmp(.r1, .neq, [0xfe, 0x80])?):
                    i += 3; return .ndTargetNotLinkLocal
                default: return nil
                }
            default: return nil
            }
        }
    }

    /// Which address field a network-header load reads.
    private enum AddressField {
        case source, destination
        init?(_ offset: UInt32, _ length: UInt32, _ f: IPFamily) {
            switch (f, offset, length) {
            case (.ipv4, 12, 4), (.ipv6, 8, 16): self = .source
            case (.ipv4, 16, 4), (.ipv6, 24, 16): self = .destination
            default: return nil
            }
        }
        /// A byte-aligned prefix loads only the bytes it covers.
        init?(prefixOf offset: UInt32, _ length: UInt32, _ f: IPFamily) {
            let (s, d, full): (UInt32, UInt32, UInt32) = f == .ipv4 ? (12, 16, 4) : (8, 24, 16)
            guard length >= 1, length <= full else { return nil }
            if offset == s { self = .source } else if offset == d { self = .destination } else { return nil }
        }
    }
}

extension NFTablesBackend {
    /// What the kernel's table enforces now, every rule decoded from its bytecode (no document
    /// needed), and the rules that are not Rampart's (changed by hand: they cannot be evaluated
    /// and are reported). nil when there is no table.
    public func enforcedPolicy() throws(NetlinkError) -> (ir: RulesetIR, undecoded: [String])? {
        guard let snap = try client.readTable(family: .inet, name: table) else { return nil }
        return Decode.ir(snap)
    }
}
