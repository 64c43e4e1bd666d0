/// The address set of one group and family (`m4-<group>` / `m6-<group>`).
struct MemberSetKey: Hashable, Sendable {
    var family: IPFamily
    var group: String
    var name: String { Naming.memberSet(family, group) }
}

/// A chain Rampart derives from the model (base chains are fixed and not keyed).
enum ChainKey: Hashable, Sendable {
    case instanceIn(String), instanceOut(String), groupIn(String), groupOut(String)

    var name: String {
        switch self {
        case .instanceIn(let i): Naming.instanceIn(i)
        case .instanceOut(let i): Naming.instanceOut(i)
        case .groupIn(let g): Naming.groupIn(g)
        case .groupOut(let g): Naming.groupOut(g)
        }
    }

    /// The instance or group chain named `name` (`name` undone); nil for a base chain.
    init?(name: String) {
        func rest(after prefix: String) -> String? {
            name.hasPrefix(prefix) ? Naming.id(fromKernelID: name.dropFirst(prefix.count)) : nil
        }
        if let g = rest(after: "gin-") { self = .groupIn(g) }
        else if let g = rest(after: "gout-") { self = .groupOut(g) }
        else if let i = rest(after: "in-") { self = .instanceIn(i) }
        else if let i = rest(after: "out-") { self = .instanceOut(i) }
        else { return nil }
    }
}

/// What an edit of the model may have changed: the objects an event must look at, and nothing
/// else. Set elements are listed as candidates whose presence may have changed; whether they
/// changed is decided against the committed IR when the Plan is built.
struct Touched {
    var chains = Set<ChainKey>()
    var memberSets = Set<MemberSetKey>()
    var memberCandidates: [MemberSetKey: Set<SetElement>] = [:]
    var interfaces = Set<String>()
    /// Anti-spoofing elements (see `Compiler.sourceElements`) whose presence may have changed.
    var sourceCandidates: [String: Set<SetElement>] = [:]
}

/// One host's document with the indexes that make each event cheap:
/// group → member instances (any host), group → members on this host (which decides whether the
/// group's chains exist here), group → address multiplicities (the member sets' contents),
/// member set → number of kernel rules reading it (which decides whether it exists),
/// interface and address → local instance (uniqueness checks).
struct HostModel: Sendable {
    private(set) var doc: Document
    private(set) var localInterfaces: [String: String] = [:]
    private(set) var localAddresses: [IPAddress: String] = [:]
    private(set) var localMembers: [String: Set<String>] = [:]
    private(set) var members: [String: Set<String>] = [:]
    /// How many members of the group carry each address: an element leaves the set only when
    /// the last member with that address leaves (two instances elsewhere may share an address).
    private(set) var addressCount: [String: [IPAddress: Int]] = [:]
    private(set) var setReferences: [MemberSetKey: Int] = [:]

    /// Whether edits record what they touch; off while building from a whole document, where
    /// nothing is compared against a committed IR and the bookkeeping would be pure cost.
    private var tracking = false

    init(_ doc: Document) {
        self.doc = Document(host: doc.host, groups: doc.groups, guardedPrefixes: doc.guardedPrefixes)
        self.doc.instances.reserveCapacity(doc.instances.count)
        var scratch = Touched()
        for (id, inst) in doc.instances { add(id, inst, &scratch) }
        tracking = true
    }

    var host: String { doc.host }

    func isActive(_ group: String) -> Bool { !(localMembers[group]?.isEmpty ?? true) }

    func isMember(_ id: String, of group: String) -> Bool { members[group]?.contains(id) ?? false }

    func memberIDs(of group: String) -> Set<String> { members[group] ?? [] }

    // MARK: edits

    /// Replaces an instance record (nil: absent). Costs what the two records contain, nothing more.
    mutating func replace(_ id: String, with new: Instance?, _ t: inout Touched) {
        let old = doc.instances[id]
        if old == new { return }
        if old != nil { remove(id, &t) }
        if let new { add(id, new, &t) }
    }

    /// Replaces a group's rules (creating the group if needed).
    mutating func setRules(_ group: String, _ rules: [Rule], description: String?, _ t: inout Touched) {
        let active = isActive(group)
        if active { deactivate(group, &t) }
        doc.groups[group, default: Group()].rules = rules
        if let description { doc.groups[group]!.description = description }
        if active { activate(group, &t) }
    }

    private mutating func add(_ id: String, _ inst: Instance, _ t: inout Touched) {
        doc.instances[id] = inst
        let local = inst.host == doc.host
        if local {
            let iface = inst.interface!
            localInterfaces[iface] = id
            for a in inst.ips { localAddresses[a] = id }
            if tracking { touchLocal(id, inst, &t) }
        }
        let ips = uniqued(inst.ips)
        for g in uniqued(inst.groups) {
            members[g, default: []].insert(id)
            for a in ips {
                addressCount[g, default: [:]][a, default: 0] += 1
                if tracking { t.memberCandidates[MemberSetKey(family: a.family, group: g), default: []].insert(SetElement(a)) }
            }
            if local {
                let wasActive = isActive(g)
                localMembers[g, default: []].insert(id)
                if !wasActive { activate(g, &t) }
            }
        }
    }

    /// A local instance came or went: its interface, its two chains and its source-check
    /// elements are to be compared.
    private func touchLocal(_ id: String, _ inst: Instance, _ t: inout Touched) {
        t.interfaces.insert(inst.interface!)
        t.chains.insert(.instanceIn(id))
        t.chains.insert(.instanceOut(id))
        for (set, e) in Compiler.sourceElements(inst) { t.sourceCandidates[set, default: []].insert(e) }
    }

    private mutating func remove(_ id: String, _ t: inout Touched) {
        guard let inst = doc.instances.removeValue(forKey: id) else { return }
        let local = inst.host == doc.host
        if local {
            let iface = inst.interface!
            if localInterfaces[iface] == id { localInterfaces[iface] = nil }
            for a in inst.ips where localAddresses[a] == id { localAddresses[a] = nil }
            touchLocal(id, inst, &t)
        }
        let ips = uniqued(inst.ips)
        for g in uniqued(inst.groups) {
            members[g]?.remove(id)
            if members[g]?.isEmpty == true { members[g] = nil }
            for a in ips {
                let n = addressCount[g]![a]! - 1
                addressCount[g]![a] = n == 0 ? nil : n
                t.memberCandidates[MemberSetKey(family: a.family, group: g), default: []].insert(SetElement(a))
            }
            if addressCount[g]?.isEmpty == true { addressCount[g] = nil }
            if local {
                localMembers[g]?.remove(id)
                if localMembers[g]?.isEmpty == true {
                    localMembers[g] = nil
                    deactivate(g, &t)
                }
            }
        }
    }

    /// The group's chains appear on this host and the member sets they read gain references.
    /// (While building, `t` is a scratch value and the insertions below are few: once per group.)
    private mutating func activate(_ g: String, _ t: inout Touched) {
        t.chains.insert(.groupIn(g))
        t.chains.insert(.groupOut(g))
        guard let group = doc.groups[g] else { return }
        for (k, n) in Compiler.memberSetReferences(g, group) {
            setReferences[k, default: 0] += n
            t.memberSets.insert(k)
        }
    }

    private mutating func deactivate(_ g: String, _ t: inout Touched) {
        t.chains.insert(.groupIn(g))
        t.chains.insert(.groupOut(g))
        guard let group = doc.groups[g] else { return }
        for (k, n) in Compiler.memberSetReferences(g, group) {
            let left = setReferences[k]! - n
            setReferences[k] = left == 0 ? nil : left
            t.memberSets.insert(k)
        }
    }

    // MARK: objects, as the compiler defines them

    func chain(_ key: ChainKey) -> Chain? {
        switch key {
        case .instanceIn(let id), .instanceOut(let id):
            guard let inst = doc.instances[id], inst.host == doc.host else { return nil }
            if case .instanceIn = key { return Compiler.instanceIn(id, inst) }
            return Compiler.instanceOut(id, inst)
        case .groupIn(let g), .groupOut(let g):
            guard isActive(g), let group = doc.groups[g] else { return nil }
            let c = Compiler.groupChains(g, group)
            if case .groupIn = key { return c.ingress }
            return c.egress
        }
    }

    func memberSetExists(_ k: MemberSetKey) -> Bool { (setReferences[k] ?? 0) > 0 }

    func memberSetContains(_ k: MemberSetKey, _ e: SetElement) -> Bool {
        let a: IPAddress
        switch e {
        case .ipv4(let x): a = .v4(x)
        case .ipv6(let x): a = .v6(x)
        case .ifname, .ifaceIPv4, .ifaceIPv6, .ifaceEther, .ifaceNDTarget: return false
        }
        return (addressCount[k.group]?[a] ?? 0) > 0
    }

    func memberSet(_ k: MemberSetKey) -> NamedSet? {
        guard memberSetExists(k) else { return nil }
        var s = NamedSet(name: k.name, keyType: k.family == .ipv4 ? .ipv4Addr : .ipv6Addr)
        for a in (addressCount[k.group] ?? [:]).keys where a.family == k.family { s.elements.insert(SetElement(a)) }
        return s
    }

    /// Dispatch verdicts of one interface: (from-inst, to-inst), nil when no local instance has it.
    func dispatch(_ iface: String) -> (from: Verdict, to: Verdict)? {
        guard let id = localInterfaces[iface] else { return nil }
        return (.jump(Naming.instanceOut(id)), .jump(Naming.instanceIn(id)))
    }

    /// Whether an anti-spoofing element belongs in its set: its interface is a local instance's
    /// whose record yields it. `cache` keeps each interface's elements for the rest of one Plan
    /// (a plug asks for each of its five or so elements, and each ask compiled them all again).
    func sourceElementWanted(_ set: String, _ e: SetElement, cache: inout [String: [(set: String, element: SetElement)]]) -> Bool {
        let iface: String
        switch e {
        case .ifaceIPv4(let i, _), .ifaceIPv6(let i, _), .ifaceEther(let i, _), .ifaceNDTarget(let i, _), .ifname(let i): iface = i
        default: return false
        }
        if cache[iface] == nil {
            cache[iface] = localInterfaces[iface].flatMap { doc.instances[$0] }.map(Compiler.sourceElements) ?? []
        }
        return cache[iface]!.contains { $0.set == set && $0.element == e }
    }

    /// The whole IR for this host.
    func compileAll() -> RulesetIR {
        var ir = RulesetIR()
        for c in Compiler.baseChains(guardedPrefixes: doc.guardedPrefixes) { ir.chains[c.name] = c }
        for (name, type) in Compiler.fixedSets { ir.sets[name] = NamedSet(name: name, keyType: type) }
        ir.sets[Naming.instanceInterfaces]!.elements = Set(localInterfaces.keys.map { .ifname($0) })
        for id in localInterfaces.values {
            for (set, e) in Compiler.sourceElements(doc.instances[id]!) { ir.sets[set]!.elements.insert(e) }
        }
        for k in setReferences.keys { ir.sets[k.name] = memberSet(k) }
        var from = VerdictMap(name: Naming.fromInstanceMap), to = VerdictMap(name: Naming.toInstanceMap)
        for iface in localInterfaces.keys {
            let d = dispatch(iface)!
            from.elements[iface] = d.from
            to.elements[iface] = d.to
        }
        ir.maps[from.name] = from
        ir.maps[to.name] = to
        for (id, inst) in doc.instances where inst.host == doc.host {
            ir.chains[Naming.instanceIn(id)] = Compiler.instanceIn(id, inst)
            ir.chains[Naming.instanceOut(id)] = Compiler.instanceOut(id, inst)
        }
        for g in localMembers.keys {
            let c = Compiler.groupChains(g, doc.groups[g]!)
            ir.chains[c.ingress.name] = c.ingress
            ir.chains[c.egress.name] = c.egress
        }
        return ir
    }
}

/// Order-preserving de-duplication for the short lists of one instance (groups, addresses):
/// a quadratic scan beats hashing at these sizes.
func uniqued<T: Equatable>(_ a: [T]) -> [T] {
    if a.count < 2 { return a }
    var out: [T] = []
    out.reserveCapacity(a.count)
    for x in a where !out.contains(x) { out.append(x) }
    return out
}
