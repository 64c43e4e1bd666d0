import Foundation
import RampartCore
import RampartSystem

/// Which iptables implementation writes the rules.
public enum IPTablesVariant: String, Sendable, CaseIterable {
    /// The x_tables kernel interface (`iptables-legacy-restore`).
    case legacy
    /// The nftables-based compatibility layer (`iptables-nft-restore`).
    case nft

    func tool(_ f: IPFamily, _ verb: String) -> String {
        (f == .ipv4 ? "iptables-" : "ip6tables-") + rawValue + "-" + verb
    }

    /// The variant `iptables` runs on this machine (Debian's alternatives link).
    public static func detect() -> IPTablesVariant {
        let r = try? Runner(netns: nil).run(["iptables", "--version"])
        return (r?.stdout ?? "").contains("nf_tables") ? .nft : .legacy
    }
}

/// The iptables backend: keeps Rampart's chains (`RAMPART-*`, `rp-*`) of the filter table and
/// its ipsets (`rp4-*`, `rp6-*`) equal to the IR, never touching anything else.
///
/// Rules are written with one `iptables-restore --noflush` (and one `ip6tables-restore`) input
/// that declares, and so flushes and refills, only the chains that changed; the jumps from the
/// built-in chains are inserted once when missing. Group members are ipset deltas (see
/// `IPSetWriter`).
public final class IPTablesBackend {
    public let variant: IPTablesVariant
    public let topology: IPTTopology
    public let netns: String?
    let runner: Runner
    public var ipset: any IPSetWriter
    /// What Rampart believes it last wrote (nil: unknown, read back first).
    public private(set) var mirror: IPTState?
    public private(set) var mirrorIR: RulesetIR?
    /// The detailed change of the last commit or converge (restore text, ipset lines, counts).
    public internal(set) var lastChange = IPTChange()

    public init(variant: IPTablesVariant = .detect(), topology: IPTTopology = .routed, netns: String? = nil, ipset: (any IPSetWriter)? = nil) {
        self.variant = variant
        self.topology = topology
        self.netns = netns
        runner = Runner(netns: netns)
        self.ipset = ipset ?? IPSetWriters.best(netns: netns)
    }

    // MARK: reading

    /// For the bridged topology: whether br_netfilter hands bridged IPv4 and IPv6 traffic to
    /// iptables in the target namespace (nil: the sysctls do not exist, br_netfilter is absent).
    public func bridgeNetfilterEnabled() -> Bool? {
        let ns: NetworkNamespace = netns.map { .named($0) } ?? .current
        return try? ns.perform { () -> Bool? in
            var on = true
            for f in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
                guard let t = try? String(contentsOfFile: "/proc/sys/net/bridge/" + f, encoding: .utf8) else { return nil }
                on = on && t.trimmingCharacters(in: .whitespacesAndNewlines) == "1"
            }
            return on
        } ?? nil
    }

    /// Every table of one family as `iptables-save` prints them (one process; no table yet is
    /// no text), by table name (`filter`, `raw`, …).
    public func save(_ f: IPFamily) throws -> [String: String] {
        let r = try runner.run([variant.tool(f, "save")])
        guard r.status == 0 else { throw IPTError(command: variant.tool(f, "save"), status: r.status, message: r.stderr) }
        return Self.tables(r.stdout)
    }

    /// Save output split at its `*table` lines.
    static func tables(_ text: String) -> [String: String] {
        var out: [String: String] = [:]
        var table: String?
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("*") { table = String(line.dropFirst()); continue }
            guard let table else { continue }
            out[table, default: ""] += line + "\n"
        }
        return out
    }

    /// Parses save output: Rampart's chains and which built-ins jump to Rampart's entries.
    public static func parseSave(_ text: String) -> (IPTChains, Set<String>) {
        parseSave(text, entries: Dictionary(uniqueKeysWithValues: IPTNames.entries.map { ($0.builtin, "-j " + $0.chain) }))
    }

    /// Parses save output with the given jump spec per built-in chain.
    static func parseSave(_ text: String, entries: [String: String]) -> (IPTChains, Set<String>) {
        var chains = IPTChains()
        var jumps: Set<String> = []
        for line in text.split(separator: "\n") {
            if line.hasPrefix(":") {
                let name = String(line.dropFirst().prefix { $0 != " " })
                if IPTNames.isOwnedChain(name) { chains.chains[name, default: []] = chains.chains[name] ?? [] }
            } else if line.hasPrefix("-A ") {
                let rest = line.dropFirst(3)
                let name = String(rest.prefix { $0 != " " })
                let spec = String(rest.dropFirst(name.count + 1))
                if IPTNames.isOwnedChain(name) {
                    chains.chains[name, default: []].append(spec)
                } else if let e = entries[name], spec == e {
                    jumps.insert(name)
                }
            }
        }
        return (chains, jumps)
    }

    /// One rule of Rampart's with its counters (`iptables-save -c`).
    public struct CountedRule: Sendable, Hashable, Codable {
        public var family: String
        public var chain: String
        public var rule: String
        public var packets: UInt64
        public var bytes: UInt64
    }

    /// Rampart's rules of both families (filter and raw tables) with their packet and byte
    /// counters.
    public func countedRules() throws -> [CountedRule] {
        var out: [CountedRule] = []
        for f in [IPFamily.ipv4, .ipv6] {
            let r = try runner.run([variant.tool(f, "save"), "-c"])
            guard r.status == 0 else { continue }
            let tables = Self.tables(r.stdout)
            for line in [tables["raw"], tables["filter"]].compactMap({ $0 }).joined().split(separator: "\n") where line.hasPrefix("[") {
                guard let close = line.firstIndex(of: "]") else { continue }
                let nums = line[line.index(after: line.startIndex)..<close].split(separator: ":")
                let rest = line[line.index(after: close)...].drop { $0 == " " }
                guard nums.count == 2, rest.hasPrefix("-A ") else { continue }
                let chain = String(rest.dropFirst(3).prefix { $0 != " " })
                guard IPTNames.isOwnedChain(chain) else { continue }
                out.append(CountedRule(family: f == .ipv4 ? "ipv4" : "ipv6", chain: chain,
                                       rule: String(rest.dropFirst(3 + chain.count + 1)),
                                       packets: UInt64(nums[0]) ?? 0, bytes: UInt64(nums[1]) ?? 0))
            }
        }
        return out
    }

    /// Parses `ipset save`: Rampart's sets and members (canonical address text).
    public static func parseIPSetSave(_ text: String) -> [String: IPSetSpec] {
        var sets: [String: IPSetSpec] = [:]
        for line in text.split(separator: "\n") {
            let w = line.split(separator: " ")
            guard w.count >= 3, IPTNames.isOwnedSet(String(w[1])) else { continue }
            let name = String(w[1])
            if w[0] == "create" {
                let fam: IPFamily = w.firstIndex(of: "family").map { w[$0 + 1] == "inet6" ? .ipv6 : .ipv4 } ?? .ipv4
                sets[name] = IPSetSpec(family: fam, type: String(w[2]))
            } else if w[0] == "add" {
                let a = canonicalMember(String(w[2]))
                sets[name, default: IPSetSpec(family: .ipv4)].members.insert(a)
            }
        }
        return sets
    }

    /// A set member in canonical text: the address part of `A` / `A,iface` re-printed.
    static func canonicalMember(_ m: String) -> String {
        guard let comma = m.firstIndex(of: ",") else { return IPAddress(m).map { "\($0)" } ?? m }
        let addr = String(m[..<comma])
        return (IPAddress(addr).map { "\($0)" } ?? addr) + m[comma...]
    }

    /// ebtables' nat table as `ebtables-save -t nat` prints it (ebtables-nft: the kernel here
    /// has no legacy ebtables, and the bridge family is independent of the iptables variant).
    public func saveEB() throws -> String {
        let r = try runner.run([Self.ebtablesTool + "-save", "-t", "nat"])
        guard r.status == 0 else { throw IPTError(command: Self.ebtablesTool + "-save", status: r.status, message: r.stderr) }
        return r.stdout
    }

    static let ebtablesTool = "ebtables-nft"
    static let ebEntries = Dictionary(uniqueKeysWithValues: IPTNames.ebEntries.map { ($0.builtin, $0.match + "-j " + $0.chain) })

    /// What the kernel holds of Rampart's (four processes: three saves and `ipset save`).
    public func readBack() throws -> IPTState {
        var st = IPTState()
        let raw = Dictionary(uniqueKeysWithValues: IPTNames.rawEntries.map { ($0.builtin, $0.match + "-j " + $0.chain) })
        let t4 = try save(.ipv4), t6 = try save(.ipv6)
        (st.v4, st.jumps4) = Self.parseSave(t4["filter"] ?? "")
        (st.v6, st.jumps6) = Self.parseSave(t6["filter"] ?? "")
        (st.raw4, st.jumpsRaw4) = Self.parseSave(t4["raw"] ?? "", entries: raw)
        (st.raw6, st.jumpsRaw6) = Self.parseSave(t6["raw"] ?? "", entries: raw)
        // Routed, ebtables is read only to remove what a bridged apply left: a host without
        // ebtables-nft (or the kernel's bridge family) has nothing there.
        let eb = topology == .bridged ? try saveEB() : ((try? saveEB()) ?? "")
        (st.eb, st.jumpsEB) = Self.parseSave(eb, entries: Self.ebEntries)
        st.jumpsEB.formUnion(IPTNames.legacyEBJumps.filter { eb.contains("\n-A \($0)\n") })
        st.sets = Self.parseIPSetSave(try runner.check(["ipset", "save"]))
        mirror = st
        return st
    }

    // MARK: writing

    /// One atomic unit of writing: a family's filter or raw table, or ebtables' nat table.
    enum Part: Hashable, CaseIterable { case v4, v6, raw4, raw6, eb }

    /// The restore command of one table (ebtables-nft-restore has no -w: no xtables lock, one
    /// nftables transaction).
    static func restoreCommand(_ p: Part, _ variant: IPTablesVariant) -> [String] {
        switch p {
        case .v4, .raw4: [variant.tool(.ipv4, "restore"), "-w", "--noflush"]
        case .v6, .raw6: [variant.tool(.ipv6, "restore"), "-w", "--noflush"]
        case .eb: [ebtablesTool + "-restore", "--noflush"]
        }
    }

    func restore(_ p: Part, _ text: String) throws {
        _ = try runner.check(Self.restoreCommand(p, variant), input: text)
    }

    /// Runs a change: ipset creations and additions, then the IPv4 and IPv6 filter and raw
    /// restores and the ebtables one (processes run side by side: each table is its own atomic
    /// unit), then ipset removals. If
    /// a restore fails, the other tables' restores are undone where they succeeded, the ipset
    /// additions are undone (best effort), so the previous rules stay in place; the error is
    /// rethrown.
    public func execute(_ c: IPTChange, from cur: IPTState, to des: IPTState) throws {
        if !c.ipsetBefore.isEmpty { try ipset.apply(c.ipsetBefore) }
        nonisolated(unsafe) var errors: [Part: any Error] = [:]
        let lock = NSLock()
        let work: [(Part, String)] = Part.allCases.compactMap { p in c.restore(p).map { (p, $0) } }
        let runner = self.runner, variant = self.variant
        DispatchQueue.concurrentPerform(iterations: work.count) { i in
            let (p, text) = work[i]
            do { _ = try runner.check(Self.restoreCommand(p, variant), input: text) } catch {
                lock.lock(); errors[p] = error; lock.unlock()
            }
        }
        if let failed = errors.values.first {
            mirror = nil
            for (p, _) in work where errors[p] == nil {
                // This table committed: put it back as it was.
                var written = c.applied(to: des).only(p)
                written.setJumps()
                written.jumps4.formUnion(cur.jumps4); written.jumps6.formUnion(cur.jumps6); written.jumpsEB.formUnion(cur.jumpsEB)
                written.jumpsRaw4.formUnion(cur.jumpsRaw4); written.jumpsRaw6.formUnion(cur.jumpsRaw6)
                let back = Self.change(from: written, to: cur.only(p))
                if let text = back.restore(p) { try? restore(p, text) }
            }
            if !c.ipsetRollback.isEmpty { try? ipset.apply(c.ipsetRollback) }
            throw failed
        }
        if !c.ipsetAfter.isEmpty {
            do { try ipset.apply(c.ipsetAfter) } catch { mirror = nil; throw error }
        }
    }

    /// The guarded prefixes to render: the IR's, unless the backend was told (tests).
    public var guardedOverride: [String]?

    func render(_ ir: RulesetIR?) throws -> IPTState {
        try IPTRender.state(ir, topology: topology, guarded: guardedOverride)
    }

    /// Brings the kernel to `desired` (nil: remove all of Rampart's) from a fresh read-back, so
    /// anything someone else changed in Rampart's chains or sets is repaired.
    @discardableResult
    func convergeChange(to desired: RulesetIR?) throws -> IPTChange {
        var des = try render(desired)
        let cur = try readBack()
        let c = Self.change(from: cur, to: des)
        try execute(c, from: cur, to: des)
        lastDeparted = cur.instanceAddresses.subtracting(des.instanceAddresses)
        des = c.applied(to: des)
        des.setJumps()
        mirror = des
        mirrorIR = desired
        return c
    }

    /// The instance addresses the last converge removed from the source checks: those
    /// instances are gone (or lost an address), and revocation cuts their connections whatever
    /// the policy says.
    var lastDeparted: Set<IPAddress> = []

    /// What `converge` would do, without doing it.
    func pendingChange(to desired: RulesetIR?) throws -> IPTChange {
        Self.change(from: try readBack(), to: try render(desired))
    }

    /// Commits a core Plan incrementally against the mirror (read back first if there is none):
    /// set-element ops become ipset deltas only (no process with libipset, no rule touched);
    /// chain ops rewrite only the chains they name; map ops rewrite the dispatch chains.
    @discardableResult
    func commitChange(_ plan: Plan, result: RulesetIR?) throws -> IPTChange {
        guard !plan.isEmpty else { return IPTChange() }
        if mirror == nil { _ = try readBack() }
        let cur = mirror!
        var des = cur
        var chains: Set<String> = [], sets: Set<String> = []
        var dispatch = false
        var fastSets: [String] = []  // lines for pure member deltas
        var fastAfter: [String] = []
        var fastOnly = true
        for op in plan.ops {
            switch op {
            case .addElements(let n, let e) where !Self.isInstanceSet(n):
                let s = IPTNames.set(n)
                fastSets += e.map { "add \(s) \($0)" }
                des.sets[s, default: IPSetSpec(family: n.hasPrefix("m6-") ? .ipv6 : .ipv4)].members.formUnion(e.map(\.description))
                sets.insert(s)
            case .removeElements(let n, let e) where !Self.isInstanceSet(n):
                let s = IPTNames.set(n)
                fastAfter += e.map { "del \(s) \($0)" }
                des.sets[s]?.members.subtract(e.map(\.description))
                sets.insert(s)
            default:
                fastOnly = false
            }
        }
        if fastOnly {
            // The hot path: membership only. One ipset batch, no rule read or written.
            do { try ipset.apply(fastSets + fastAfter) } catch { mirror = nil; throw error }
            mirror = des
            mirrorIR = result
            var c = IPTChange()
            c.ipsetBefore = fastSets + fastAfter
            c.membersAdded = fastSets.count
            c.membersRemoved = fastAfter.count
            return c
        }
        guard let result else {
            return try convergeChange(to: nil)
        }
        // Everything else: re-render only what the plan names.
        var irChains: Set<String> = [], irSets: Set<String> = []
        func touch(_ n: String) {
            irChains.insert(n)
            chains.insert(IPTNames.chain(n)); chains.insert(IPTNames.spoofHelper(IPTNames.chain(n)))
        }
        func touchSet(_ n: String) { irSets.insert(n); sets.insert(IPTNames.set(n)) }
        for op in plan.ops {
            switch op {
            case .createTable, .deleteTable:
                return try convergeChange(to: result)
            case .createSet(let h):
                if Self.isInstanceSet(h.name) { dispatch = true } else { touchSet(h.name) }
            case .deleteSet(let n): if !Self.isInstanceSet(n) { touchSet(n) }
            case .addElements(let n, _), .removeElements(let n, _):
                // Instance interfaces, anti-spoofing pairs and MACs: the fixed sets (`rp-if*`,
                // `rp-src*`: member deltas) and the dispatch chains (MAC, NA targets, bridged
                // OUTPUT by address, ebtables' ARP chain).
                if Self.isInstanceSet(n) { dispatch = true } else { touchSet(n) }
            case .createMap, .deleteMap, .addMapElements, .removeMapElements: dispatch = true
            case .createChain(let h):
                if h.base == nil { touch(h.name) } else { dispatch = true }
            case .rewriteChain(let n, _), .deleteChain(let n):
                // A base chain changes with the guarded prefixes: the fixed chains carry them.
                if result.chains[n]?.base == nil && !isBase(n) { touch(n) } else { dispatch = true }
            }
        }
        // Render only what the plan touched (not the whole host).
        let part = try IPTRender.partial(result, chains: irChains, dispatch: dispatch, sets: irSets, topology: topology, guarded: guardedOverride)
        if dispatch {
            for f in [IPFamily.ipv4, .ipv6] {
                chains.formUnion(part[f].chains.keys.filter { IPTNames.fixedChains.contains($0) })
                chains.formUnion(cur[f].chains.keys.filter { IPTNames.fixedChains.contains($0) })
            }
            sets.formUnion(IPTNames.fixedSets)
            chains.formUnion([IPTNames.link, IPTNames.arp, IPTNames.bridgeOutput])
            chains.formUnion(IPTNames.rawChains)
            des.eb = part.eb
            des.raw4 = part.raw4
            des.raw6 = part.raw6
        }
        for f in [IPFamily.ipv4, .ipv6] {
            for n in chains { des[f].chains[n] = part[f].chains[n] }
        }
        for s in sets { des.sets[s] = part.sets[s] }
        let c = Self.change(from: cur, to: des, chains: chains, sets: sets)
        try execute(c, from: cur, to: des)
        des = c.applied(to: des)
        des.setJumps()
        mirror = des
        mirrorIR = result
        return c
    }

    /// The fixed sets of the nftables layout (instance interfaces, anti-spoofing pairs, MACs):
    /// here they become the fixed ipsets and dispatch rules (see `InstanceChecks`).
    static func isInstanceSet(_ n: String) -> Bool {
        [Naming.instanceInterfaces, Naming.sources4, Naming.sources6, Naming.sourceMACs, Naming.macInterfaces, Naming.ndTargets].contains(n)
    }

    static func interface(of e: SetElement) -> String? {
        switch e {
        case .ifname(let i), .ifaceIPv4(let i, _), .ifaceIPv6(let i, _), .ifaceEther(let i, _): i
        default: nil
        }
    }

    func isBase(_ n: String) -> Bool {
        [Naming.egressChain, Naming.ingressChain, Naming.inputChain, Naming.outputChain].contains(n)
    }

    /// Forgets the mirror: the next commit reads back first.
    public func invalidate() { mirror = nil }
}
