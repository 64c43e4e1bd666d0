import Foundation
import RampartCore

extension IPTablesBackend {
    /// The policy the kernel holds now, lifted back from iptables, ip6tables, ebtables and ipset
    /// into the IR (see `IPTLift`), with the rules it could not read as Rampart's. nil: Rampart
    /// holds nothing here (no chain and no set of its own).
    public func enforcedPolicy() throws -> (ir: RulesetIR, undecoded: [String])? {
        IPTLift.ir(try readBack(), topology: topology)
    }
}

/// iptables state → IR: the inverse of `IPTRender` (docs/iptables.md, "Read back for explain").
///
/// - The fixed layout (`RAMPART-*`, `rp-fwd-*`, `rp-input`, `rp-output`, the dispatch chains,
///   `rp-src4`/`rp-src6`, ebtables' chains) is not translated rule by rule: the instance data it
///   was rendered from is read out of it (instance interfaces from `rp-is-in`, addresses from
///   `rp-src4`/`rp-src6` or `rp-spoof`, MACs from `rp-mac`, the dispatch from `rp-from`/`rp-to`,
///   the guarded prefixes from `RAMPART-FWD`), and the IR's base chains, fixed sets and dispatch
///   maps are rebuilt from it by the compiler itself.
/// - Every other chain (instance and group chains) is lifted rule by rule; the IPv4 and IPv6
///   tables' copies are merged into one chain.
/// - Then the lifted IR is rendered again and compared, chain by chain, with what the kernel
///   holds: a rule the kernel has that the rendering does not (hand-made drift), or the other
///   way round, is reported as undecoded and takes no part in the lifted policy. Whatever the
///   lift returns therefore renders back to exactly the kernel's rules, less those reported.
///
/// The result is an IR on which the evaluator gives the kernel's verdicts, not always the
/// compiled IR itself: a rule of both families may come back as one rule, a rule of one family
/// with an explicit `meta nfproto`, a DHCP port match as a port range; chain and set names cut
/// and hashed by `IPTNames` stay as the kernel has them (`rp-i-<cut>-<hash>` reads `in-<cut>-<hash>`).
public enum IPTLift {
    public static func ir(_ st: IPTState, topology: IPTTopology) -> (ir: RulesetIR, undecoded: [String])? {
        if st.v4.chains.isEmpty && st.v6.chains.isEmpty && st.raw4.chains.isEmpty && st.raw6.chains.isEmpty && st.eb.chains.isEmpty
            && st.sets.isEmpty { return nil }
        var lift = Lifter(st, topology: topology)
        return (lift.run(), lift.undecoded)
    }

    /// The IR name of a kernel chain (`rp-gi-web` → `gin-web`).
    static func irChain(_ k: String) -> String {
        for (q, p) in [("rp-go-", "gout-"), ("rp-gi-", "gin-"), ("rp-o-", "out-"), ("rp-i-", "in-"), ("rp-x-", "")] where k.hasPrefix(q) {
            return p + k.dropFirst(q.count)
        }
        return k
    }

    /// The IR name of a kernel set (`rp4-web` → `m4-web`).
    static func irSet(_ k: String) -> String {
        if k.hasPrefix("rp4-x-") { return String(k.dropFirst(6)) }
        if k.hasPrefix("rp4-") { return "m4-" + k.dropFirst(4) }
        if k.hasPrefix("rp6-") { return "m6-" + k.dropFirst(4) }
        return k
    }

    /// Splits a rule spec into words, a double-quoted word (a comment) as one, unescaped.
    static func words(_ line: String) -> [String]? {
        var out: [String] = [], cur = "", quoted = false, escaped = false, inWord = false
        for c in line {
            if quoted {
                if escaped { cur.append(c); escaped = false } else if c == "\\" { escaped = true } else if c == "\"" { quoted = false } else { cur.append(c) }
            } else if c == "\"" {
                quoted = true; inWord = true
            } else if c == " " {
                if inWord { out.append(cur); cur = ""; inWord = false }
            } else {
                cur.append(c); inWord = true
            }
        }
        if quoted { return nil }
        if inWord { out.append(cur) }
        return out
    }

    enum Target: Equatable { case accept, drop, ret, goto(String), jump(String) }

    /// One rule spec as IR matches, comment and target (kernel chain names), or nil when it is
    /// nothing `IPTRender.rule` writes.
    static func parse(_ line: String, family f: IPFamily) -> (matches: [Match], comment: String?, target: Target)? {
        guard let w = words(line) else { return nil }
        var m: [Match] = [], comment: String?, target: Target?
        var i = 0
        func next() -> String? { i += 1; return i < w.count ? w[i] : nil }
        func prefix(_ t: String) -> (IPv4Prefix?, IPv6Prefix?)? {
            let parts = t.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 2, let len = UInt8(parts[1]) else { return nil }
            if f == .ipv4, let a = IPv4Address(String(parts[0])), len <= 32 { return (IPv4Prefix(address: a, length: len), nil) }
            if f == .ipv6, let a = IPv6Address(String(parts[0])), len <= 128 { return (nil, IPv6Prefix(address: a, length: len)) }
            return nil
        }
        func ports(_ t: String) -> ClosedRange<UInt16>? {
            let p = t.split(separator: ":").map { UInt16($0) }
            guard p.count == 1 || p.count == 2, let lo = p[0], let hi = p.last ?? nil, lo <= hi else { return nil }
            return lo...hi
        }
        func typeCode(_ t: String) -> (UInt8, UInt8?)? {
            let p = t.split(separator: "/").map { UInt8($0) }
            guard p.count == 1 || p.count == 2, let ty = p[0] else { return nil }
            if p.count == 2 { guard let c = p[1] else { return nil }; return (ty, c) }
            return (ty, nil)
        }
        while i < w.count {
            guard target == nil else { return nil }
            switch w[i] {
            case "-s", "-d":
                let src = w[i] == "-s"
                guard let t = next(), let (p4, p6) = prefix(t) else { return nil }
                if let p = p4 { m.append(src ? .ip4Saddr(p) : .ip4Daddr(p)) }
                if let p = p6 { m.append(src ? .ip6Saddr(p) : .ip6Daddr(p)) }
            case "!":
                guard next() == "-s", let t = next() else { return nil }
                if f == .ipv4, t.hasSuffix("/32"), let a = IPv4Address(String(t.dropLast(3))) { m.append(.ip4SaddrNot(a)) }
                else if f == .ipv6, t.hasSuffix("/128"), let a = IPv6Address(String(t.dropLast(4))) { m.append(.ip6SaddrNot(a)) }
                else { return nil }
            case "-p":
                guard let t = next(), let n = IPTRender.protoNames.firstIndex(of: t) ?? UInt8(t).map(Int.init) else { return nil }
                m.append(.l4proto(UInt8(n)))
            case "-m":
                switch next() {
                case "mac":
                    guard next() == "!", next() == "--mac-source", let t = next(), let mac = MACAddress(t) else { return nil }
                    m.append(.etherSaddrNot(mac))
                case "conntrack":
                    guard next() == "--ctstate", let t = next() else { return nil }
                    var s: CTStates = []
                    for n in t.split(separator: ",") {
                        switch n {
                        case "INVALID": s.insert(.invalid)
                        case "NEW": s.insert(.new)
                        case "RELATED": s.insert(.related)
                        case "ESTABLISHED": s.insert(.established)
                        default: return nil
                        }
                    }
                    m.append(.ctState(s))
                case "set":
                    guard next() == "--match-set", let n = next(), let dir = next(), dir == "src" || dir == "dst" else { return nil }
                    m.append(dir == "src" ? .saddrInSet(f, irSet(n)) : .daddrInSet(f, irSet(n)))
                case "udp":
                    var sport: UInt16?, dport: ClosedRange<UInt16>?
                    while i + 1 < w.count, w[i + 1] == "--sport" || w[i + 1] == "--dport" {
                        let which = next()
                        guard let t = next() else { return nil }
                        if which == "--sport" { guard let s = UInt16(t) else { return nil }; sport = s } else { guard let d = ports(t) else { return nil }; dport = d }
                    }
                    if let s = sport {
                        m.append(.udpSport(s))
                        if let d = dport { guard d.count == 1 else { return nil }; m.append(.udpDport(d.lowerBound)) }
                    } else if let d = dport {
                        m.append(.thDport(d))
                    } else {
                        return nil
                    }
                case "tcp", "sctp":
                    guard next() == "--dport", let t = next(), let d = ports(t) else { return nil }
                    m.append(.thDport(d))
                case "multiport":
                    guard next() == "--dports", let t = next(), let d = ports(t) else { return nil }
                    m.append(.thDport(d))
                case "icmp":
                    guard next() == "--icmp-type", let t = next(), let (ty, c) = typeCode(t) else { return nil }
                    m.append(.icmpType(ty))
                    if let c { m.append(.icmpCode(c)) }
                case "icmp6":
                    guard next() == "--icmpv6-type", let t = next(), let (ty, c) = typeCode(t) else { return nil }
                    m.append(.icmpv6Type(ty...ty))
                    if let c { m.append(.icmpv6Code(c)) }
                case "comment":
                    guard next() == "--comment", let t = next() else { return nil }
                    comment = t
                default: return nil
                }
            case "-j", "-g":
                let goto = w[i] == "-g"
                guard let t = next() else { return nil }
                switch (goto, t) {
                case (true, IPTNames.accept): target = .accept
                case (false, "DROP"): target = .drop
                case (false, "RETURN"): target = .ret
                case (true, _): target = IPTNames.isOwnedChain(t) ? .goto(t) : nil
                case (false, _): target = IPTNames.isOwnedChain(t) ? .jump(t) : nil
                }
                guard target != nil else { return nil }
            default: return nil
            }
            i += 1
        }
        guard let target else { return nil }
        return (m, comment, target)
    }
}

/// One lift: the state, what was read of it, and what could not be.
struct Lifter {
    let st: IPTState
    let topology: IPTTopology
    var undecoded: [String] = []
    /// Kernel chain → IR chain and kernel set → IR set, for the regular chains and member sets.
    var chainNames: [String: String] = [:]
    var setNames: [String: String] = [:]
    /// The name `IPTNames` gives a lifted IR name → the kernel name, where they differ (names
    /// that were cut and hashed).
    var back: [String: String] = [:]

    init(_ st: IPTState, topology: IPTTopology) {
        self.st = st
        self.topology = topology
    }

    var bridged: Bool { topology == .bridged }

    /// Regular chains: Rampart's, not part of the fixed layout, not an anti-spoofing helper.
    func regularChains() -> [String] {
        let all = Set(st.v4.chains.keys).union(st.v6.chains.keys).subtracting(IPTNames.fixedChains)
        // A helper holds two or more `-s A -j RETURN` and ends in `-j DROP` (no group or
        // instance chain looks like that).
        func helper(_ h: String) -> Bool {
            guard h.hasSuffix("-s"), all.contains(String(h.dropLast(2))) else { return false }
            return [st.v4.chains[h], st.v6.chains[h]].allSatisfy { l in
                guard let l else { return true }
                return l.count >= 3 && l.last == "-j DROP" && l.dropLast().allSatisfy { $0.hasPrefix("-s ") && $0.hasSuffix(" -j RETURN") }
            }
        }
        let helpers = all.filter(helper)
        return all.subtracting(helpers).sorted()
    }

    mutating func run() -> RulesetIR {
        let regular = regularChains()
        for k in regular { chainNames[k] = IPTLift.irChain(k) }
        for k in st.sets.keys where !IPTNames.fixedSets.contains(k) { setNames[k] = IPTLift.irSet(k) }
        for (k, n) in chainNames where IPTNames.chain(n) != k { back[IPTNames.chain(n)] = k }
        for (k, n) in setNames where IPTNames.set(n) != k { back[IPTNames.set(n)] = k }
        let guarded = guardedPrefixes()
        var ir = Compiler.compile(Document(host: "lifted", guardedPrefixes: guarded))
        fixedLayout(into: &ir)
        for (k, n) in setNames {
            guard let s = st.sets[k] else { continue }
            var set = NamedSet(name: n, keyType: s.family == .ipv4 ? .ipv4Addr : .ipv6Addr)
            for a in s.members {
                if let x = IPAddress(a), x.family == s.family { set.elements.insert(SetElement(x)) } else { undecoded.append("ipset \(k): member \(a)") }
            }
            ir.sets[n] = set
        }
        for k in regular {
            let r4 = lift(chain: k, family: .ipv4), r6 = lift(chain: k, family: .ipv6)
            ir.chains[chainNames[k]!] = Chain(name: chainNames[k]!, rules: Self.merge(r4, r6))
        }
        compare(ir, guarded: guarded)
        return ir
    }

    // MARK: the fixed layout

    func iif(_ x: String) -> String { bridged ? "-m physdev --physdev-in \(x)" : "-i \(x)" }
    func oif(_ x: String) -> String { bridged ? "-m physdev --physdev-out \(x) --physdev-is-bridged" : "-o \(x)" }

    /// The single word between `head` and `tail` of `line`, if it has that shape.
    static func between(_ line: String, _ head: String, _ tail: String) -> String? {
        guard line.hasPrefix(head), line.hasSuffix(tail), line.count > head.count + tail.count else { return nil }
        let mid = String(line.dropFirst(head.count).dropLast(tail.count))
        return mid.contains(" ") ? nil : mid
    }

    /// Lines of a fixed chain in both families.
    func lines(_ chain: String) -> [String] { (st.v4.chains[chain] ?? []) + (st.v6.chains[chain] ?? []) }

    func guardedPrefixes() -> [String] {
        var out: [String] = []
        for l in st.v4.chains[IPTNames.forward] ?? [] {
            guard let w = Self.between(l, iif(""), " -j DROP") else { continue }
            let p = w.hasSuffix("+") ? String(w.dropLast()) : w
            if !out.contains(p) { out.append(p) }
        }
        return out
    }

    /// The instance data the fixed chains were rendered from, as the IR's fixed sets and maps.
    mutating func fixedLayout(into ir: inout RulesetIR) {
        func add(_ set: String, _ e: SetElement) { ir.sets[set]?.elements.insert(e) }
        for l in lines(IPTNames.isInstanceIn) {
            if let i = Self.between(l, iif(""), " -g \(IPTNames.accept)") { add(Naming.instanceInterfaces, .ifname(i)) }
        }
        for l in lines(IPTNames.macCheck) {
            let parts = l.components(separatedBy: " -m mac ! --mac-source ")
            guard parts.count == 2, let i = Self.between(parts[0] + " .", iif(""), " ."),
                  let m = Self.between(parts[1], "", " -j DROP"), let mac = MACAddress(m) else { continue }
            add(Naming.sourceMACs, .ifaceEther(i, mac))
            add(Naming.macInterfaces, .ifname(i))
        }
        for (chain, map, out) in [(IPTNames.fromInstances, Naming.fromInstanceMap, false), (IPTNames.toInstances, Naming.toInstanceMap, true)] {
            for l in lines(chain) {
                let w = l.split(separator: " ").map(String.init)
                guard w.count >= 3, w[w.count - 2] == "-j", let c = chainNames[w[w.count - 1]] else { continue }
                let head = w.dropLast(2).joined(separator: " ") + " ."
                let iface = out ? Self.between(head, bridged ? "-m physdev --physdev-out " : "-o ", (bridged ? " --physdev-is-bridged" : "") + " .")
                    : Self.between(head, iif(""), " .")
                if let iface { ir.maps[map, default: VerdictMap(name: map)].elements[iface] = .jump(c) }
            }
        }
        func source(_ iface: String, _ a: IPAddress) {
            switch a {
            case .v4(let x): add(Naming.sources4, .ifaceIPv4(iface, x))
            case .v6(let x): add(Naming.sources6, .ifaceIPv6(iface, x)); add(Naming.ndTargets, .ifaceNDTarget(iface, x))
            }
        }
        if bridged {
            for l in lines(IPTNames.spoof) {
                let w = l.split(separator: " ").map(String.init)
                guard w.count >= 4, w[0] == "-s", let slash = w[1].firstIndex(of: "/"), let a = IPAddress(String(w[1][..<slash])),
                      let i = Self.between(w.dropFirst(2).joined(separator: " "), iif(""), " -g \(IPTNames.accept)") else { continue }
                source(i, a)
            }
        } else {
            for n in [IPTNames.sources4, IPTNames.sources6] {
                for m in st.sets[n]?.members ?? [] {
                    let p = m.split(separator: ",", maxSplits: 1)
                    guard p.count == 2, let a = IPAddress(String(p[0])) else { undecoded.append("ipset \(n): member \(m)"); continue }
                    source(String(p[1]), a)
                }
            }
        }
    }

    // MARK: regular chains

    /// The rules of one regular chain in one family, each checked by rendering it again; a line
    /// that does not come back is undecoded.
    mutating func lift(chain k: String, family f: IPFamily) -> [IRRule] {
        let lines = st[f].chains[k] ?? []
        var out: [IRRule] = []
        var i = 0
        let tag = f == .ipv4 ? "ipv4" : "ipv6"
        while i < lines.count {
            // ICMPv6 type ranges (written one line per type) come back one rule per type.
            if let p = IPTLift.parse(lines[i], family: f), let r = rule(p, chain: k, family: f),
               let want = render(r, chain: k, family: f), i + want.count <= lines.count, Array(lines[i..<(i + want.count)]) == want {
                out.append(r)
                i += want.count
            } else {
                undecoded.append("\(tag) \(k): \(lines[i])")
                i += 1
            }
        }
        return out
    }

    func isJump(_ r: IRRule) -> Bool { if case .jump = r.verdict { true } else { false } }

    /// The IR rule of a parsed line (nil: a target that is not Rampart's).
    func rule(_ p: (matches: [Match], comment: String?, target: IPTLift.Target), chain k: String, family f: IPFamily) -> IRRule? {
        var m = p.matches
        let v: Verdict
        switch p.target {
        case .accept: v = .accept
        case .drop: v = .drop
        case .ret: v = .return
        case .goto(let c):
            guard let n = chainNames[c] else { return nil }
            v = .goto(n)
        case .jump(let c):
            if c == IPTNames.spoofHelper(k), let h = st[f].chains[c], h.last == "-j DROP" {
                // Several "source is not A" terms: the helper returns for each A, else drops.
                for l in h.dropLast() {
                    guard let a = Self.between(l, "-s ", " -j RETURN") else { return nil }
                    if f == .ipv4, a.hasSuffix("/32"), let x = IPv4Address(String(a.dropLast(3))) { m.append(.ip4SaddrNot(x)) }
                    else if f == .ipv6, a.hasSuffix("/128"), let x = IPv6Address(String(a.dropLast(4))) { m.append(.ip6SaddrNot(x)) }
                    else { return nil }
                }
                v = .drop
            } else {
                guard let n = chainNames[c] else { return nil }
                v = .jump(n)
            }
        }
        return IRRule(m, counter: p.comment != nil, v, comment: p.comment)
    }

    /// `IPTRender.rule` with the kernel's names of the chains and sets it refers to.
    func render(_ r: IRRule, chain k: String, family f: IPFamily) -> [String]? {
        var helpers: [String: [String]] = [:]
        guard let lines = try? IPTRender.rule(r, in: k, family: f, helpers: &helpers), !lines.isEmpty else { return nil }
        if let h = helpers.first, st[f].chains[h.key] != h.value { return nil }
        return lines.map(renamed)
    }

    /// A rendered line with the names `IPTNames` gives the lifted IR names replaced by the
    /// kernel names they were lifted from (the same but for cut and hashed names).
    func renamed(_ line: String) -> String {
        guard !back.isEmpty, line.contains(" -j ") || line.contains(" -g ") || line.contains("--match-set ") || line.hasPrefix("-j ") else { return line }
        var parts = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        for i in parts.indices.dropFirst() where ["-j", "-g", "--match-set"].contains(parts[i - 1]) {
            if let k = back[parts[i]] { parts[i] = k }
        }
        return parts.joined(separator: " ")
    }

    /// One chain from its IPv4 and IPv6 copies: a rule of both families that both copies hold
    /// at the same place in their order is kept once (longest common subsequence); any other is
    /// kept for its own family only (`meta nfproto` added when the rule says no family).
    static func merge(_ a: [IRRule], _ b: [IRRule]) -> [IRRule] {
        func both(_ r: IRRule) -> Bool { IPTRender.family(r) == nil }
        let n = a.count, m = b.count
        var t = [[Int]](repeating: [Int](repeating: 0, count: m + 1), count: n + 1)
        for i in stride(from: n - 1, through: 0, by: -1) {
            for j in stride(from: m - 1, through: 0, by: -1) {
                t[i][j] = both(a[i]) && a[i] == b[j] ? t[i + 1][j + 1] + 1 : max(t[i + 1][j], t[i][j + 1])
            }
        }
        func only(_ r: IRRule, _ f: IPFamily) -> IRRule {
            guard both(r) else { return r }
            var x = r
            x.matches.insert(.nfproto(f), at: 0)
            return x
        }
        var out: [IRRule] = []
        var i = 0, j = 0
        while i < n || j < m {
            if i < n, j < m, both(a[i]), a[i] == b[j], t[i][j] == t[i + 1][j + 1] + 1 {
                out.append(a[i]); i += 1; j += 1
            } else if i < n, j == m || t[i + 1][j] >= t[i][j + 1] {
                out.append(only(a[i], .ipv4)); i += 1
            } else {
                out.append(only(b[j], .ipv6)); j += 1
            }
        }
        return out
    }

    // MARK: the check

    /// Renders the lifted IR and reports every difference with the kernel's rules.
    mutating func compare(_ ir: RulesetIR, guarded: [String]) {
        guard let want = try? IPTRender.state(ir, topology: topology, guarded: guarded) else {
            undecoded.append("the lifted policy does not render again (iptables backend)")
            return
        }
        func diff(_ tag: String, _ kernel: [String: [String]], _ rendered: [String: [String]]) {
            for name in Set(kernel.keys).union(rendered.keys).sorted() {
                // Regular chains were checked rule by rule; their helpers with their rules.
                if chainNames[name] != nil { continue }
                if name.hasSuffix("-s"), chainNames[String(name.dropLast(2))] != nil { continue }
                let have = kernel[name] ?? [], should = (rendered[name] ?? []).map(renamed)
                if have == should { continue }
                // As multisets first (the dispatch chains' order does not matter), then the order.
                var left: [String: Int] = [:]
                for l in should { left[l, default: 0] += 1 }
                var extra = false
                for l in have {
                    if let n = left[l], n > 0 { left[l] = n - 1 } else { undecoded.append("\(tag) \(name): \(l)"); extra = true }
                }
                var missing = false
                for l in should where (left[l] ?? 0) > 0 {
                    left[l]! -= 1
                    undecoded.append("\(tag) \(name): missing from the kernel: \(l)")
                    missing = true
                }
                if !extra, !missing, !IPTNames.unordered.contains(name) {
                    undecoded.append("\(tag) \(name): rules out of Rampart's order")
                }
            }
        }
        diff("ipv4", st.v4.chains, want.v4.chains)
        diff("ipv6", st.v6.chains, want.v6.chains)
        diff("ipv4 raw", st.raw4.chains, want.raw4.chains)
        diff("ipv6 raw", st.raw6.chains, want.raw6.chains)
        if bridged || !st.eb.chains.isEmpty { diff("ebtables", st.eb.chains, want.eb.chains) }
        for (b, c) in IPTNames.entries {
            if !st.jumps4.contains(b) { undecoded.append("ipv4 \(b): no jump to \(c): nothing of it is enforced") }
            if !st.jumps6.contains(b) { undecoded.append("ipv6 \(b): no jump to \(c): nothing of it is enforced") }
        }
        for (b, c, _) in IPTNames.rawEntries {
            if !st.jumpsRaw4.contains(b) { undecoded.append("ipv4 raw \(b): no jump to \(c): no source check before conntrack") }
            if !st.jumpsRaw6.contains(b) { undecoded.append("ipv6 raw \(b): no jump to \(c): no source check before conntrack") }
        }
    }
}
