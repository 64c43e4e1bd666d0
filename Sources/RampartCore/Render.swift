/// nft-syntax text of IR objects and Plans, for operators (`--dry-run`, `diff`, `show`).
/// The output of `Render.plan` is also valid input for `nft -f`, which makes it easy to compare
/// against the reference tool by hand.
public enum Render {
    static let l4names: [UInt8: String] = [1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"]

    /// A protocol's name as nft writes it (`tcp`), or its number.
    public static func protocolName(_ n: UInt8) -> String { l4names[n] ?? String(n) }

    static func q(_ name: String) -> String { Naming.nftQuoted(name) }

    static func ref(_ name: String) -> String { "@" + q(name) }

    static func ipPrefix4(_ p: IPv4Prefix) -> String { p.length == 32 ? p.address.description : p.description }
    static func ipPrefix6(_ p: IPv6Prefix) -> String { p.length == 128 ? p.address.description : p.description }

    static func ports(_ r: ClosedRange<UInt16>) -> String {
        r.lowerBound == r.upperBound ? "\(r.lowerBound)" : "\(r.lowerBound)-\(r.upperBound)"
    }

    /// One match term.
    public static func match(_ m: Match) -> String {
        switch m {
        case .iifnameInSet(let s): return "iifname \(ref(s))"
        case .iifnameNotInSet(let s): return "iifname != \(ref(s))"
        case .oifnameInSet(let s): return "oifname \(ref(s))"
        case .ctState(let st):
            var names: [String] = []
            if st.contains(.established) { names.append("established") }
            if st.contains(.related) { names.append("related") }
            if st.contains(.new) { names.append("new") }
            if st.contains(.invalid) { names.append("invalid") }
            return "ct state " + names.joined(separator: ",")
        case .nfproto(let f): return "meta nfproto \(f.rawValue)"
        case .l4proto(let n): return "meta l4proto \(l4names[n] ?? String(n))"
        case .ip4Saddr(let p): return "ip saddr \(ipPrefix4(p))"
        case .ip4Daddr(let p): return "ip daddr \(ipPrefix4(p))"
        case .ip6Saddr(let p): return "ip6 saddr \(ipPrefix6(p))"
        case .ip6Daddr(let p): return "ip6 daddr \(ipPrefix6(p))"
        case .ip4SaddrNot(let a): return "ip saddr != \(a)"
        case .ip6SaddrNot(let a): return "ip6 saddr != \(a)"
        case .saddrInSet(let f, let s): return "\(f == .ipv4 ? "ip" : "ip6") saddr \(ref(s))"
        case .daddrInSet(let f, let s): return "\(f == .ipv4 ? "ip" : "ip6") daddr \(ref(s))"
        case .thDport(let r): return "th dport \(ports(r))"
        case .udpSport(let p): return "udp sport \(p)"
        case .udpDport(let p): return "udp dport \(p)"
        case .icmpType(let t): return "icmp type \(t)"
        case .icmpCode(let c): return "icmp code \(c)"
        case .icmpv6Type(let r): return r.lowerBound == r.upperBound ? "icmpv6 type \(r.lowerBound)" : "icmpv6 type \(r.lowerBound)-\(r.upperBound)"
        case .icmpv6Code(let c): return "icmpv6 code \(c)"
        case .etherSaddrNot(let mac): return "ether saddr != \(mac)"
        case .ifaceSaddrNotInSet(let f, let s): return "iifname . \(f == .ipv4 ? "ip" : "ip6") saddr != \(ref(s))"
        case .ifaceEtherSaddrNotInSet(let s): return "iifname . ether saddr != \(ref(s))"
        case .iifnamePrefix(let p): return "iifname \"\(p)*\""
        case .oifnamePrefix(let p): return "oifname \"\(p)*\""
        case .ip6HopLimit(let h): return "ip6 hoplimit \(h)"
        case .ip6HopLimitNot(let h): return "ip6 hoplimit != \(h)"
        case .tcpNotInitialSYN: return "tcp flags & (fin|syn|rst|ack) != syn"
        // nft 1.0.6 has no name for the target field: raw payload (ICMPv6 bytes 8-9, 8-23).
        case .ndTargetNotLinkLocal: return "@th,64,16 & 0xffc0 != 0xfe80"
        case .ifaceNDTargetNotInSet(let s): return "iifname . @th,64,128 != \(ref(s))"
        case .ifaceCtSaddrInSet(let f, let reply, let s): return "iifname . ct \(reply ? "reply" : "original") \(f == .ipv4 ? "ip" : "ip6") saddr \(ref(s))"
        }
    }

    /// A verdict.
    public static func verdict(_ v: Verdict) -> String {
        switch v {
        case .accept: "accept"
        case .drop: "drop"
        case .return: "return"
        case .jump(let c): "jump \(q(c))"
        case .goto(let c): "goto \(q(c))"
        case .vmap(let k, let m): "\(k.rawValue) vmap \(ref(m))"
        }
    }

    /// A rule's statement text (what follows `add rule inet rampart <chain>`).
    public static func rule(_ r: IRRule) -> String {
        var parts = r.matches.map(match)
        if r.counter { parts.append("counter") }
        parts.append(verdict(r.verdict))
        // Comments are sanitised at compile time (Naming.ruleComment); this is a second guard
        // for hand-built IR, since nft strings cannot escape a quote.
        if let c = r.comment { parts.append("comment \"\(c.replacingOccurrences(of: "\"", with: "'"))\"") }
        return parts.joined(separator: " ")
    }

    static func baseSpec(_ b: BaseChainSpec) -> String {
        "type filter hook \(b.hook.rawValue) priority \(b.priority); policy \(b.policy.rawValue);"
    }

    /// A chain as a block inside `table … { }`.
    public static func chain(_ c: Chain) -> String {
        var out = "\tchain \(q(c.name)) {\n"
        if let b = c.base { out += "\t\t\(baseSpec(b))\n" }
        for r in c.rules { out += "\t\t\(rule(r))\n" }
        return out + "\t}\n"
    }

    static func elements<S: Sequence>(_ e: S) -> String where S.Element == SetElement {
        e.sorted().map(\.description).joined(separator: ", ")
    }

    /// A whole IR as one `table` block, objects sorted by name so the text is stable.
    public static func ruleset(_ ir: RulesetIR) -> String {
        var out = "table \(ir.family) \(q(ir.tableName)) {\n"
        for s in ir.sets.values.sorted(by: { $0.name < $1.name }) {
            out += "\tset \(q(s.name)) {\n\t\t\(s.keyType.declaration)\n"
            if !s.elements.isEmpty { out += "\t\telements = { \(elements(s.elements)) }\n" }
            out += "\t}\n"
        }
        for m in ir.maps.values.sorted(by: { $0.name < $1.name }) {
            out += "\tmap \(q(m.name)) {\n\t\ttype ifname : verdict\n"
            if !m.elements.isEmpty { out += "\t\telements = { \(mapElements(m.elements)) }\n" }
            out += "\t}\n"
        }
        for c in ir.chains.values.sorted(by: { $0.name < $1.name }) { out += chain(c) }
        return out + "}\n"
    }

    static func mapElements(_ e: [String: Verdict]) -> String {
        e.sorted { $0.key < $1.key }.map { "\"\($0.key)\" : \(verdict($0.value))" }.joined(separator: ", ")
    }

    /// A Plan as `nft -f` commands, one operation per line (a rewrite is a flush plus its rules).
    public static func plan(_ plan: Plan, table: String = Naming.table) -> String {
        let t = "inet \(q(table))"
        var lines: [String] = []
        for op in plan.ops {
            switch op {
            case .createTable: lines.append("add table \(t)")
            case .deleteTable: lines.append("delete table \(t)")
            case .createSet(let h): lines.append("add set \(t) \(q(h.name)) { \(h.keyType.declaration); }")
            case .deleteSet(let n): lines.append("delete set \(t) \(q(n))")
            case .addElements(let n, let e): lines.append("add element \(t) \(q(n)) { \(elements(e)) }")
            case .removeElements(let n, let e): lines.append("delete element \(t) \(q(n)) { \(elements(e)) }")
            case .createMap(let n): lines.append("add map \(t) \(q(n)) { type ifname : verdict; }")
            case .deleteMap(let n): lines.append("delete map \(t) \(q(n))")
            case .addMapElements(let n, let e): lines.append("add element \(t) \(q(n)) { \(mapElements(e)) }")
            case .removeMapElements(let n, let keys):
                lines.append("delete element \(t) \(q(n)) { \(keys.sorted().map { "\"\($0)\"" }.joined(separator: ", ")) }")
            case .createChain(let h):
                if let b = h.base {
                    lines.append("add chain \(t) \(q(h.name)) { \(baseSpec(b)) }")
                } else {
                    lines.append("add chain \(t) \(q(h.name))")
                }
            case .rewriteChain(let n, let rules):
                lines.append("flush chain \(t) \(q(n))")
                for r in rules { lines.append("add rule \(t) \(q(n)) \(rule(r))") }
            case .deleteChain(let n): lines.append("delete chain \(t) \(q(n))")
            }
        }
        return lines.map { $0 + "\n" }.joined()
    }
}
