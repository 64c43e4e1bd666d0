import RampartNetlink

/// Short nft-like text of a rule read back from the kernel, for `rampart show`: it recognises the
/// bytecode Rampart writes (`NFTMatch` builders) and prints anything else as `<expr name>`.
enum Describe {
    static func rule(_ exprs: [NFTExpr]) -> String {
        var words: [String] = []
        var family: UInt8?
        var l4: UInt8?
        var i = 0
        func at(_ k: Int) -> NFTExpr? { i + k < exprs.count ? exprs[i + k] : nil }
        while i < exprs.count {
            switch (exprs[i], at(1)) {
            case (.meta(.nfproto, _), .cmp(_, .eq, let d)?):
                family = d.first
                i += 2
                // Shown only when nothing after it names the family (e.g. "ip saddr" does).
                if !(at(0).map(isNetworkLoad) ?? false) { words.append(family == 10 ? "meta nfproto ipv6" : "meta nfproto ipv4") }
            case (.meta(.l4proto, _), .cmp(_, .eq, let d)?):
                l4 = d.first
                i += 2
                if !(at(0).map(isTransportLoad) ?? false) { words.append("meta l4proto \(protocolName(l4 ?? 0))") }
            case (.meta(let key, _), .lookup(let set, _, let dreg, let inv)?) where key == .iifname || key == .oifname:
                let name = key == .iifname ? "iifname" : "oifname"
                words.append(dreg == .verdict ? "\(name) vmap @\(set)" : "\(name) \(inv ? "!= " : "")@\(set)")
                i += 2
            case (.meta(let key, _), .cmp(_, let op, let d)?) where key == .iifname || key == .oifname:
                words.append("\(key == .iifname ? "iifname" : "oifname") \(op == .neq ? "!= " : "")\"\(String(decoding: d.prefix { $0 != 0 }, as: UTF8.self))\"")
                i += 2
            case (.meta(.iiftype, _), .cmp?):
                i += 2  // the dependency of "ether saddr"
            case (.ct(.state, _), .bitwise(_, _, let mask, _)?):
                let bits = mask.first ?? 0
                let names = [(2, "established"), (4, "related"), (1, "invalid"), (8, "new")].filter { Int(bits) & $0.0 != 0 }.map(\.1)
                words.append("ct state " + names.joined(separator: ","))
                i += 3
            case (.immediate(.r1, let tag), .payload(.network, let offset, _, .r2)?) where tag.count == 16:
                // A group's member set in the slot layout: `"web" . ip saddr @members4`.
                guard case .lookup(let set, .r1, nil, false)? = at(2) else { words.append("<immediate>"); i += 1; continue }
                let v6 = family == 10
                let field = (v6 ? offset == 8 : offset == 12) ? "saddr" : "daddr"
                words.append("\"\(String(decoding: tag.prefix { $0 != 0 }, as: UTF8.self))\" . \(v6 ? "ip6" : "ip") \(field) @\(set)")
                i += 3
            case (.payload(.network, let offset, let length, _), _):
                let v6 = family == 10
                let field = (v6 ? offset == 8 : offset == 12) ? "saddr" : "daddr"
                let proto = v6 ? "ip6" : "ip"
                i += 1
                switch at(0) {
                case .lookup(let set, _, _, let inv)?:
                    words.append("\(proto) \(field) \(inv ? "!= " : "")@\(set)"); i += 1
                case .cmp(_, let op, let d)?:
                    let full = v6 ? 16 : 4
                    let text = address(d + [UInt8](repeating: 0, count: max(0, full - d.count)), v6: v6)
                    words.append("\(proto) \(field) \(op == .neq ? "!= " : "")\(text)\(d.count < full ? "/\(d.count * 8)" : "")"); i += 1
                case .bitwise(_, _, let mask, _)?:
                    if case .cmp(_, let op, let d)? = at(1) {
                        let bits = mask.reduce(0) { $0 + $1.nonzeroBitCount }
                        words.append("\(proto) \(field) \(op == .neq ? "!= " : "")\(address(d, v6: v6))/\(bits)")
                        i += 2
                    } else { words.append("<payload>") }
                default:
                    _ = length
                    words.append("<payload>")
                }
            case (.payload(.transport, let offset, _, _), let next?):
                let proto = protocolName(l4 ?? 0)
                let isICMP = l4 == 1 || l4 == 58
                let field = isICMP ? (offset == 0 ? "type" : "code") : (offset == 2 ? "dport" : "sport")
                switch next {
                case .cmp(_, _, let d): words.append("\(proto) \(field) \(number(d))")
                case .range(_, _, let from, let to): words.append("\(proto) \(field) \(number(from))-\(number(to))")
                default: words.append("<payload>")
                }
                i += 2
            case (.payload(.linkLayer, 6, 6, _), .cmp(_, let op, let d)?):
                words.append("ether saddr \(op == .neq ? "!= " : "")" + d.map { hex($0) }.joined(separator: ":"))
                i += 2
            case (.counter, _):
                i += 1  // counters are reported separately
            case (.verdict(let v), _):
                words.append(v.description)
                i += 1
            default:
                words.append("<\(exprs[i].kind)>")
                i += 1
            }
        }
        return words.joined(separator: " ")
    }

    static func counter(_ exprs: [NFTExpr]) -> (packets: UInt64, bytes: UInt64)? {
        for e in exprs { if case .counter(let p, let b) = e { return (p, b) } }
        return nil
    }

    private static func isNetworkLoad(_ e: NFTExpr) -> Bool {
        if case .payload(.network, _, _, _) = e { return true }
        return false
    }

    private static func isTransportLoad(_ e: NFTExpr) -> Bool {
        if case .payload(.transport, _, _, _) = e { return true }
        return false
    }

    static func protocolName(_ p: UInt8) -> String {
        switch p {
        case 1: "icmp"
        case 6: "tcp"
        case 17: "udp"
        case 58: "icmpv6"
        case 132: "sctp"
        default: "\(p)"
        }
    }

    private static func number(_ d: [UInt8]) -> String { String(d.reduce(0) { $0 << 8 | Int($1) }) }
    private static func hex(_ b: UInt8) -> String { let s = String(b, radix: 16); return s.count == 1 ? "0" + s : s }

    private static func address(_ d: [UInt8], v6: Bool) -> String {
        if !v6 { return d.prefix(4).map(String.init).joined(separator: ".") }
        var words: [String] = []
        var k = 0
        while k + 1 < min(d.count, 16) { words.append(String(Int(d[k]) << 8 | Int(d[k + 1]), radix: 16)); k += 2 }
        // Collapse the longest run of zero groups, as inet_ntop does.
        var best = (start: -1, len: 0), cur = (start: -1, len: 0)
        for (j, w) in words.enumerated() {
            if w == "0" { cur = cur.start < 0 ? (j, 1) : (cur.start, cur.len + 1); if cur.len > best.len { best = cur } }
            else { cur = (-1, 0) }
        }
        guard best.len > 1 else { return words.joined(separator: ":") }
        let head = words[..<best.start].joined(separator: ":")
        let tail = words[(best.start + best.len)...].joined(separator: ":")
        return head + "::" + tail
    }
}
