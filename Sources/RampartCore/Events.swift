/// One host's engine: the document as the model, the planned IR, and the events that change
/// them. Each event validates its input, edits the model, and returns the Plan that takes the
/// planned IR to the IR of the new document, touching only the objects the event affects
/// (its cost is proportional to the change, not to the host or the cloud). The planned IR is
/// advanced to the result on the assumption that the caller commits the Plan; what the kernel
/// really holds ("committed") is the backend's to know: after a failed commit the caller
/// converges the backend to `planned` from a read-back.
public struct Engine: Sendable {
    private var model: HostModel
    private var loaded = false
    /// The IR every Plan returned so far leads to (nil: no table). Equal to the kernel's once
    /// those Plans are committed.
    public private(set) var planned: RulesetIR?

    /// An engine for `host` whose plans start from `planned` (nil: no table) and no document yet.
    public init(host: String, planned: RulesetIR? = nil) {
        model = HostModel(Document(host: host))
        self.planned = planned
    }

    /// While recording (`recordReplacedChains()`): each chain the Plans since changed (rewrote,
    /// deleted or created), as it was before the first of them (nil: it did not exist). What a
    /// caller needs of the IR before a series of events (the conntrack cut compares a rewritten
    /// chain with its old rules) without holding the planned IR itself, which would make every
    /// event copy the IR's whole chain dictionary (copy-on-write) before changing one chain.
    public private(set) var replacedChains: [String: Chain?]?

    /// Starts recording `replacedChains` afresh.
    public mutating func recordReplacedChains() { replacedChains = [:] }

    /// Stops recording and returns what was recorded (empty if nothing was).
    public mutating func takeReplacedChains() -> [String: Chain?] {
        defer { replacedChains = nil }
        return replacedChains ?? [:]
    }

    /// Records the pre-images of the chains `plan` changes, before it is applied to `planned`.
    private mutating func noteReplacedChains(_ plan: Plan) {
        guard replacedChains != nil else { return }
        for op in plan.ops {
            let name: String
            switch op {
            case .rewriteChain(let n, _), .deleteChain(let n): name = n
            case .createChain(let header): name = header.name
            default: continue
            }
            if replacedChains![name] == nil { replacedChains![name] = .some(planned?.chains[name]) }
        }
    }

    /// The current desired document.
    public var document: Document { model.doc }

    /// The IR compiled from the current document (equal to `planned` after every event).
    public func desiredIR() -> RulesetIR { model.compileAll() }

    // MARK: what this host enforces (the model's indexes: no walk of the document)

    /// Whether `group` has a member on this host, i.e. its chains are in the kernel.
    public func enforces(_ group: String) -> Bool { model.isActive(group) }

    /// How many of the document's instances are on this host (each has its own interface:
    /// the model's interface index counts them without walking the document).
    public var localInstanceCount: Int { model.localInterfaces.count }

    /// The ids of this host's members of `group`.
    public func localMemberIDs(of group: String) -> Set<String> { model.localMembers[group] ?? [] }

    /// This host's members of `group`, as the document has them.
    public func localMembers(of group: String) -> [String: Instance] {
        var out: [String: Instance] = [:]
        for id in model.localMembers[group] ?? [] { out[id] = model.doc.instances[id] }
        return out
    }

    /// Whether a rule of a group enforced here (see `enforces`) names `group` as its remote
    /// side, i.e. `group`'s members are in a member set of the kernel.
    /// With `excluded`, only the rules of enforced groups not in it count.
    public func isReferencedByEnforcedGroup(_ group: String, excluding excluded: Set<String> = []) -> Bool {
        for family in [IPFamily.ipv4, .ipv6] {
            let key = MemberSetKey(family: family, group: group)
            var n = model.setReferences[key] ?? 0
            for g in excluded where n > 0 && model.isActive(g) {
                n -= Compiler.memberSetReferences(g, model.doc.groups[g] ?? Group())[key] ?? 0
            }
            if n > 0 { return true }
        }
        return false
    }

    // MARK: whole document

    /// Replaces the whole document: compile and diff (cost proportional to the host).
    /// The document must be for this engine's host: a document for another hypervisor applied
    /// here would silently drop every local instance's protection.
    public mutating func apply(document: Document) throws(DocumentError) -> Plan {
        if document.host != model.host {
            throw DocumentError([ValidationIssue(path: "host", reason: "\(quoted(document.host)) is not this host (\(model.host))")])
        }
        try document.validate()
        let next = HostModel(document)
        let ir = next.compileAll()
        let plan = diff(from: planned, to: ir)
        noteReplacedChains(plan)
        model = next
        planned = ir
        loaded = true
        return plan
    }

    /// The Plan that removes everything Rampart programmed (`flush`).
    public mutating func flush() -> Plan {
        let plan = diff(from: planned, to: nil)
        noteReplacedChains(plan)
        planned = nil
        model = HostModel(Document(host: model.host))
        loaded = false
        return plan
    }

    // MARK: refresh_security_group_members

    /// Members of `group` changed: `added` are new or changed member records (each must list
    /// `group`), `removed` are ids that are no longer members (their record keeps its other groups;
    /// an instance elsewhere left in no group is dropped from the document).
    /// Typical Plan: element deltas of `m4-<group>`/`m6-<group>` only.
    public mutating func membersChanged(group: String, added: [String: Instance] = [:], removed: [String] = []) throws(DocumentError) -> Plan {
        try requireLoaded()
        var issues: [ValidationIssue] = []
        if model.doc.groups[group] == nil { issues.append(ValidationIssue(path: joinPath("groups", group), reason: "unknown group")) }
        var changes: [(String, Instance?)] = []
        for id in removed.sorted() {
            guard let inst = model.doc.instances[id], model.isMember(id, of: group) else {
                issues.append(ValidationIssue(path: joinPath("instances", id), reason: "is not a member of group \(group)"))
                continue
            }
            var next = inst
            next.groups.removeAll { $0 == group }
            changes.append((id, next.groups.isEmpty && inst.host != model.host ? nil : next))
        }
        for (id, inst) in added.sorted(by: { $0.key < $1.key }) {
            if !inst.groups.contains(group) {
                issues.append(ValidationIssue(path: joinPath(joinPath("instances", id), "groups"), reason: "does not contain \(group)"))
            }
            if removed.contains(id) {
                issues.append(ValidationIssue(path: joinPath("instances", id), reason: "both added and removed"))
            }
            changes.append((id, inst))
        }
        issues += instanceIssues(changes)
        if !issues.isEmpty { throw DocumentError(issues) }
        return advance { m, t in for (id, inst) in changes { m.replace(id, with: inst, &t) } }
    }

    /// Members of `group` are now exactly `members` (id → record): the full-list form of the
    /// refresh call. Records equal to the current ones cost a comparison each.
    public mutating func membersChanged(group: String, members: [String: Instance]) throws(DocumentError) -> Plan {
        try requireLoaded()
        let removed = model.memberIDs(of: group).filter { members[$0] == nil }
        let added = members.filter { model.doc.instances[$0.key] != $0.value }
        return try membersChanged(group: group, added: added, removed: Array(removed))
    }

    // MARK: refresh_security_group_rules

    /// The rules of `group` are now `rules` (the group is created if new). Typical Plan: rewrite
    /// of `gin-<group>`/`gout-<group>` plus creation/deletion of member sets whose last
    /// reference appears or goes.
    public mutating func rulesChanged(group: String, rules: [Rule], description: String? = nil) throws(DocumentError) -> Plan {
        try requireLoaded()
        var issues: [ValidationIssue] = []
        let gp = joinPath("groups", group)
        issues += Validate.id(group, at: gp)
        if let d = description { issues += Validate.description(d, at: joinPath(gp, "description")) }
        let doc = model.doc
        for (i, r) in rules.enumerated() {
            issues += Validate.rule(r, at: joinPath(gp, "rules") + "[\(i)]") { $0 == group || doc.groups[$0] != nil }
        }
        if !issues.isEmpty { throw DocumentError(issues) }
        return advance { m, t in m.setRules(group, rules, description: description, &t) }
    }

    // MARK: instances on this host

    /// An instance was plugged on this host (its record's `host` must be this host).
    public mutating func instancePlugged(id: String, instance: Instance) throws(DocumentError) -> Plan {
        try requireLoaded()
        var issues: [ValidationIssue] = []
        if instance.host != model.host {
            issues.append(ValidationIssue(path: joinPath(joinPath("instances", id), "host"), reason: "\(quoted(instance.host)) is not this host (\(model.host))"))
        }
        if let old = model.doc.instances[id], old.host == model.host {
            issues.append(ValidationIssue(path: joinPath("instances", id), reason: "is already plugged on this host"))
        }
        issues += instanceIssues([(id, instance)])
        if !issues.isEmpty { throw DocumentError(issues) }
        return advance { m, t in m.replace(id, with: instance, &t) }
    }

    /// An instance left this host.
    public mutating func instanceUnplugged(id: String) throws(DocumentError) -> Plan {
        try requireLoaded()
        guard let old = model.doc.instances[id], old.host == model.host else {
            throw DocumentError([ValidationIssue(path: joinPath("instances", id), reason: "is not plugged on this host")])
        }
        return advance { m, t in m.replace(id, with: nil, &t) }
    }

    /// An instance's groups changed (on this host or elsewhere).
    public mutating func instanceGroupsChanged(id: String, groups: [String]) throws(DocumentError) -> Plan {
        try requireLoaded()
        guard var inst = model.doc.instances[id] else {
            throw DocumentError([ValidationIssue(path: joinPath("instances", id), reason: "unknown instance")])
        }
        inst.groups = groups
        let issues = instanceIssues([(id, inst)])
        if !issues.isEmpty { throw DocumentError(issues) }
        return advance { m, t in m.replace(id, with: inst, &t) }
    }

    // MARK: machinery

    private func requireLoaded() throws(DocumentError) {
        if !loaded { throw DocumentError([ValidationIssue(path: "", reason: "no document applied yet")]) }
    }

    /// The spec's instance rules for records about to replace the current ones, including
    /// uniqueness of interfaces and addresses on this host against the rest of the model and
    /// within the batch.
    private func instanceIssues(_ changes: [(String, Instance?)]) -> [ValidationIssue] {
        var out: [ValidationIssue] = []
        let doc = model.doc
        var ifaceOwner: [String: String] = [:], addrOwner: [IPAddress: String] = [:]
        let changing = Set(changes.map(\.0))
        for (id, inst) in changes {
            guard let inst else { continue }
            out += Validate.instance(inst, id: id, at: joinPath("instances", id), thisHost: doc.host) { doc.groups[$0] != nil }
            guard inst.host == doc.host, let iface = inst.interface else { continue }
            let path = joinPath("instances", id)
            if let other = ifaceOwner[iface] ?? model.localInterfaces[iface], other != id, ifaceOwner[iface] != nil || !changing.contains(other) {
                out.append(ValidationIssue(path: joinPath(path, "interface"), reason: "\(quoted(iface)) is already used by instance \(other)"))
            }
            ifaceOwner[iface] = id
            for (i, a) in inst.ips.enumerated() {
                if let other = addrOwner[a] ?? model.localAddresses[a], other != id, addrOwner[a] != nil || !changing.contains(other) {
                    out.append(ValidationIssue(path: joinPath(path, "ips") + "[\(i)]", reason: "\(a) is already used by instance \(other)"))
                }
                addrOwner[a] = id
            }
        }
        return out
    }

    /// Runs an edit of the model, then builds the Plan from the touched objects only and advances
    /// the planned IR by it.
    private mutating func advance(_ edit: (inout HostModel, inout Touched) -> Void) -> Plan {
        var t = Touched()
        edit(&model, &t)
        guard planned != nil else {
            // Nothing planned yet (no document applied): a full diff.
            let ir = model.compileAll()
            let plan = diff(from: nil, to: ir)
            noteReplacedChains(plan)
            planned = ir
            return plan
        }
        let plan = plan(for: t)
        // `plan(for:)` holds no reference into the planned IR any more, so this updates it in
        // place instead of copying its dictionaries.
        noteReplacedChains(plan)
        applyUnchecked(plan, to: &planned!)
        return plan
    }

    /// The Plan for the touched objects: each compared between the planned IR and the model.
    private func plan(for t: Touched) -> Plan {
        let ir = planned!
        var b = PlanBuilder()
        for key in t.chains {
            let old = ir.chains[key.name], new = model.chain(key)
            if old != new { b.chain(old: old, new: new) }
        }
        for k in t.memberSets.union(t.memberCandidates.keys) {
            let old = ir.sets[k.name]
            let should = model.memberSetExists(k)
            switch (old, should) {
            case (nil, true): b.set(old: nil, new: model.memberSet(k))
            case (let o?, false): b.set(old: o, new: nil)
            case (let o?, true):
                for e in t.memberCandidates[k] ?? [] {
                    let want = model.memberSetContains(k, e), have = o.elements.contains(e)
                    if want && !have { b.addElements[k.name, default: []].append(e) }
                    if have && !want { b.removeElements[k.name, default: []].append(e) }
                }
            case (nil, false): break
            }
        }
        var sources: [String: [(set: String, element: SetElement)]] = [:]
        for (set, candidates) in t.sourceCandidates {
            for e in candidates {
                let want = model.sourceElementWanted(set, e, cache: &sources), have = ir.sets[set]?.elements.contains(e) ?? false
                if want && !have { b.addElements[set, default: []].append(e) }
                if have && !want { b.removeElements[set, default: []].append(e) }
            }
        }
        for iface in t.interfaces {
            let d = model.dispatch(iface)
            let have = ir.sets[Naming.instanceInterfaces]?.elements.contains(.ifname(iface)) ?? false
            if d != nil && !have { b.addElements[Naming.instanceInterfaces, default: []].append(.ifname(iface)) }
            if d == nil && have { b.removeElements[Naming.instanceInterfaces, default: []].append(.ifname(iface)) }
            b.mapKey(Naming.fromInstanceMap, iface, old: ir.maps[Naming.fromInstanceMap]?.elements[iface], new: d?.from)
            b.mapKey(Naming.toInstanceMap, iface, old: ir.maps[Naming.toInstanceMap]?.elements[iface], new: d?.to)
        }
        return b.build()
    }
}

/// The local instances as the model's indexes have them (`planned` is compiled from the same
/// model, so the answers are the IR's): a group chain serves its local members, an instance
/// chain its own instance; addresses and interfaces are looked up, not collected. What a revoke
/// or an unplug costs revocation then grows with what it touches, not with the host (the IR's
/// walks were ~40 % of a revoke's drain at host-1k, `rampart-bench controller`).
extension Engine: LocalInstances {
    public func localAddresses(reaching chains: Set<String>) -> [String: Set<IPAddress>] {
        var out: [String: Set<IPAddress>] = [:]
        for name in chains {
            let ids: Set<String>
            switch ChainKey(name: name) {
            case .groupIn(let g)?, .groupOut(let g)?: ids = model.localMembers[g] ?? []
            case .instanceIn(let id)?, .instanceOut(let id)?:
                guard model.doc.instances[id]?.host == model.host else { continue }
                ids = [id]
            case nil: continue
            }
            var addresses = Set<IPAddress>()
            for id in ids { addresses.formUnion(model.doc.instances[id]?.ips ?? []) }
            if !addresses.isEmpty { out[name] = addresses }
        }
        return out
    }

    public func addresses(onInterface interface: String) -> Set<IPAddress> {
        Set(model.localInterfaces[interface].flatMap { model.doc.instances[$0]?.ips } ?? [])
    }

    /// Local addresses are unique among local instances (`Document.localUniquenessIssues`), so
    /// the index names the one instance that has it.
    public func interface(of address: IPAddress) -> String? {
        model.localAddresses[address].flatMap { model.doc.instances[$0]?.interface }
    }

    public var everyAddress: Set<IPAddress> { Set(model.localAddresses.keys) }
}
