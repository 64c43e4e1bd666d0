import RampartCore

/// One change of Rampart's iptables state: what to write, in which order.
public struct IPTChange: Sendable {
    /// ipset commands (ipset restore syntax) before the rules: create, add.
    public var ipsetBefore: [String] = []
    /// The inverse of `ipsetBefore`, run if the rules cannot be written.
    public var ipsetRollback: [String] = []
    /// ipset commands after the rules: del, destroy.
    public var ipsetAfter: [String] = []
    /// One `iptables-restore --noflush` input per family (nil: nothing to write).
    public var restore4: String?
    public var restore6: String?
    /// One `ebtables-restore --noflush` input (nat table; bridged topology).
    public var restoreEB: String?
    /// One `iptables-restore --noflush` input per family for the raw table (its own process:
    /// each table is one atomic unit, undone on its own when another fails).
    public var restoreRaw4: String?
    public var restoreRaw6: String?
    public var chainsCreated = 0, chainsRewritten = 0, chainsDeleted = 0, rulesWritten = 0
    /// Dispatch chains changed rule by rule, and the rules deleted from them.
    public var chainsPatched = 0, rulesDeleted = 0
    /// The patched dispatch chains as the kernel holds them afterwards, in its order.
    public var patched4: [String: [String]] = [:], patched6: [String: [String]] = [:]
    public var patchedRaw4: [String: [String]] = [:], patchedRaw6: [String: [String]] = [:]

    /// `des` with the patched chains in kernel order: what the mirror must hold.
    func applied(to des: IPTState) -> IPTState {
        var d = des
        for (n, l) in patched4 { d.v4.chains[n] = l }
        for (n, l) in patched6 { d.v6.chains[n] = l }
        for (n, l) in patchedRaw4 { d.raw4.chains[n] = l }
        for (n, l) in patchedRaw6 { d.raw6.chains[n] = l }
        return d
    }

    /// The restore input of one table (nil: nothing to write there).
    func restore(_ p: IPTablesBackend.Part) -> String? {
        switch p {
        case .v4: restore4
        case .v6: restore6
        case .raw4: restoreRaw4
        case .raw6: restoreRaw6
        case .eb: restoreEB
        }
    }
    public var setsCreated = 0, setsDestroyed = 0, membersAdded = 0, membersRemoved = 0, jumps = 0

    public var isEmpty: Bool {
        ipsetBefore.isEmpty && ipsetAfter.isEmpty && IPTablesBackend.Part.allCases.allSatisfy { restore($0) == nil }
    }

    /// One line, in the shape of the nftables backend's Plan summary.
    public var summary: String {
        "chains: \(chainsCreated) created, \(chainsRewritten) rewritten (\(rulesWritten) rules), \(chainsDeleted) deleted; "
            + "dispatch: \(chainsPatched) patched (-\(rulesDeleted) rules); ipsets: \(setsCreated) created, \(setsDestroyed) destroyed; members: +\(membersAdded) -\(membersRemoved); jumps: \(jumps)"
    }

    /// What would be run, as text (`diff`, `--dry-run`).
    public var text: String {
        var out = ""
        if !ipsetBefore.isEmpty { out += "# ipset restore\n" + ipsetBefore.joined(separator: "\n") + "\n" }
        if let r = restore4 { out += "# iptables-restore --noflush\n" + r }
        if let r = restore6 { out += "# ip6tables-restore --noflush\n" + r }
        if let r = restoreRaw4 { out += "# iptables-restore --noflush\n" + r }
        if let r = restoreRaw6 { out += "# ip6tables-restore --noflush\n" + r }
        if let r = restoreEB { out += "# ebtables-restore --noflush\n" + r }
        if !ipsetAfter.isEmpty { out += "# ipset restore\n" + ipsetAfter.joined(separator: "\n") + "\n" }
        return out
    }
}

extension IPTablesBackend {
    /// The change from `cur` to `des`. With `only`, just those chains and sets are compared
    /// (the incremental path, which knows what the Plan touched).
    public static func change(from cur: IPTState, to des: IPTState, chains only: Set<String>? = nil, sets onlySets: Set<String>? = nil) -> IPTChange {
        var c = IPTChange()
        let setNames = onlySets ?? Set(cur.sets.keys).union(des.sets.keys)
        for name in setNames.sorted() {
            let old = cur.sets[name], new = des.sets[name]
            if let n = new, let o = old, o.type != n.type || o.family != n.family {
                // A set of Rampart's name with another type or family (made by hand while no
                // rule referenced it): destroyed and made again. The kernel swaps only sets of
                // one type, so there is no way around the destroy; while a rule references the
                // set the kernel refuses it, and the apply fails changing nothing else.
                let fam = n.family == .ipv4 ? "inet" : "inet6"
                let members = n.members.sorted()
                c.ipsetBefore += ["destroy \(name)", "create \(name) \(n.type) family \(fam)"] + members.map { "add \(name) \($0)" }
                c.setsCreated += 1
                c.membersAdded += members.count
                continue
            }
            if let n = new {
                if old == nil {
                    c.ipsetBefore.append("create \(name) \(n.type) family \(n.family == .ipv4 ? "inet" : "inet6") -exist")
                    c.ipsetRollback.append("destroy \(name)")
                    c.setsCreated += 1
                }
                let oldMembers = old?.members ?? []
                let add = n.members.subtracting(oldMembers).sorted(), del = oldMembers.subtracting(n.members).sorted()
                c.ipsetBefore += add.map { "add \(name) \($0)" }
                if old != nil { c.ipsetRollback += add.map { "del \(name) \($0)" } }
                c.ipsetAfter += del.map { "del \(name) \($0)" }
                c.membersAdded += add.count
                c.membersRemoved += del.count
            } else if old != nil {
                c.ipsetAfter.append("destroy \(name)")
                c.setsDestroyed += 1
            }
        }
        c.ipsetRollback.reverse()
        for f in [IPFamily.ipv4, .ipv6] {
            let had = f == .ipv4 ? cur.jumps4 : cur.jumps6
            let entries = IPTNames.entries.map { (builtin: $0.builtin, chain: $0.chain, match: "") }
            var patched: [String: [String]] = [:]
            let text = restoreText(&c, cur[f].chains, des[f].chains, only: only, had: had, entries: entries, table: "filter") { n, l in
                patched[n] = l
            }
            if f == .ipv4 { c.restore4 = text; c.patched4 = patched } else { c.restore6 = text; c.patched6 = patched }
            var patchedRaw: [String: [String]] = [:]
            let raw = restoreText(&c, cur.raw(f).chains, des.raw(f).chains, only: only, had: cur.jumpsRaw(f), entries: IPTNames.rawEntries,
                                  table: "raw") { n, l in patchedRaw[n] = l }
            if f == .ipv4 { c.restoreRaw4 = raw; c.patchedRaw4 = patchedRaw } else { c.restoreRaw6 = raw; c.patchedRaw6 = patchedRaw }
        }
        c.restoreEB = restoreText(&c, cur.eb.chains, des.eb.chains, only: only, had: cur.jumpsEB, entries: IPTNames.ebEntries,
                                  table: "nat", eb: true) { _, _ in }
        return c
    }

    /// One table's `*-restore --noflush` input (nil: nothing to write): changed chains declared
    /// (created or flushed) and refilled, dispatch chains patched rule by rule, deleted chains
    /// removed, missing jumps from the built-ins inserted at the top. `eb`: ebtables' syntax
    /// (chain policy RETURN, no counters, dispatch chains rewritten whole).
    static func restoreText(_ c: inout IPTChange, _ oc: [String: [String]], _ nc: [String: [String]], only: Set<String>?, had: Set<String>,
                            entries: [(builtin: String, chain: String, match: String)], table: String, eb: Bool = false,
                            patched: (String, [String]) -> Void) -> String? {
        let policy = eb ? "RETURN" : "-"
        let names = only.map { n in n.filter { oc[$0] != nil || nc[$0] != nil } } ?? Set(oc.keys).union(nc.keys)
        var declare: [String] = [], body: [String] = [], delete: [String] = [], patchDel: [String] = [], patchAdd: [String] = []
        for n in names.sorted() {
            if !eb, IPTNames.unordered.contains(n), let old = oc[n], let new = nc[n] {
                // A dispatch chain: delete the rules it should not have (by position, highest
                // first, so the kernel need not compare rule bodies), append the missing.
                var want: [String: Int] = [:]
                for l in new { want[l, default: 0] += 1 }
                var keep: [String] = [], drop: [Int] = []
                for (i, l) in old.enumerated() {
                    if let k = want[l], k > 0 { want[l] = k - 1; keep.append(l) } else { drop.append(i + 1) }
                }
                let adds = new.filter { l in
                    guard let k = want[l], k > 0 else { return false }
                    want[l] = k - 1
                    return true
                }
                if !drop.isEmpty || !adds.isEmpty {
                    patchDel += drop.reversed().map { "-D \(n) \($0)" }
                    patchAdd += adds.map { "-A \(n) \($0)" }
                    c.chainsPatched += 1; c.rulesWritten += adds.count; c.rulesDeleted += drop.count
                    // What the kernel will hold, in its order (the mirror must know positions).
                    patched(n, keep + adds)
                }
                continue
            }
            switch (oc[n], nc[n]) {
            case (nil, let new?):
                declare.append(n); c.chainsCreated += 1
                body += new.map { "-A \(n) \($0)" }; c.rulesWritten += new.count
            case (let old?, let new?) where old != new:
                declare.append(n); c.chainsRewritten += 1
                body += new.map { "-A \(n) \($0)" }; c.rulesWritten += new.count
            case (.some, nil):
                declare.append(n); delete.append(n); c.chainsDeleted += 1
            default: break
            }
        }
        var jumpLines: [String] = [], unjump: [String] = []
        for (b, e, m) in entries {
            if nc[e] != nil && !had.contains(b) { jumpLines.append("-I \(b) 1 \(m)-j \(e)"); c.jumps += 1 }
            if nc[e] == nil && had.contains(b) { unjump.append("-D \(b) \(m)-j \(e)"); c.jumps += 1 }
        }
        if eb {
            for j in IPTNames.legacyEBJumps where had.contains(j) { unjump.append("-D \(j)"); c.jumps += 1 }
        }
        guard !declare.isEmpty || !patchDel.isEmpty || !patchAdd.isEmpty || !jumpLines.isEmpty || !unjump.isEmpty else { return nil }
        var text = "*\(table)\n"
        text += declare.map { ":\($0) \(policy)\(eb ? "" : " [0:0]")\n" }.joined()
        text += unjump.map { $0 + "\n" }.joined()
        text += body.map { $0 + "\n" }.joined()
        // Deletions (by position, highest first) before additions.
        text += patchDel.map { $0 + "\n" }.joined()
        text += patchAdd.map { $0 + "\n" }.joined()
        text += delete.map { "-X \($0)\n" }.joined()
        text += jumpLines.map { $0 + "\n" }.joined()
        text += "COMMIT\n"
        return text
    }
}

extension IPTState {
    /// This state with only one table's chains (for a one-table rollback; no sets).
    func only(_ p: IPTablesBackend.Part) -> IPTState {
        var s = IPTState()
        switch p {
        case .v4: s.v4 = v4; s.jumps4 = jumps4
        case .v6: s.v6 = v6; s.jumps6 = jumps6
        case .raw4: s.raw4 = raw4; s.jumpsRaw4 = jumpsRaw4
        case .raw6: s.raw6 = raw6; s.jumpsRaw6 = jumpsRaw6
        case .eb: s.eb = eb; s.jumpsEB = jumpsEB
        }
        return s
    }

    /// The jumps from the built-ins that this state's chains imply (after a write).
    mutating func setJumps() {
        jumps4 = v4.chains[IPTNames.forward] == nil ? [] : Set(IPTNames.entries.map(\.builtin))
        jumps6 = v6.chains[IPTNames.forward] == nil ? [] : Set(IPTNames.entries.map(\.builtin))
        jumpsEB = Set(IPTNames.ebEntries.filter { eb.chains[$0.chain] != nil }.map(\.builtin))
        jumpsRaw4 = Set(IPTNames.rawEntries.filter { raw4.chains[$0.chain] != nil }.map(\.builtin))
        jumpsRaw6 = Set(IPTNames.rawEntries.filter { raw6.chains[$0.chain] != nil }.map(\.builtin))
    }
}
