import RampartCore
import RampartStore

/// Turns a drain's refreshes into engine events: each refresh reads what changed from the store
/// and becomes one event (plug, unplug, groups changed, rules changed, members changed), whose
/// Plan is the kernel work. Anything an event cannot express exactly (a group new to this host,
/// a reference to a group whose members this host does not have yet, a deleted object, an
/// instance moved between hosts) falls back to reloading the host's whole document (compile +
/// diff), in the same drain.
///
/// What the host's document holds is `HostProjection`'s answer, as in the store.
struct RefreshEvents {
    let host: String
    let store: Store
    /// This host's instances in the engine's document (rebuilt after an event that may change them).
    private var localCache: [String: Instance]?

    init(host: String, store: Store) {
        self.host = host
        self.store = store
    }

    /// The engine's document changed wholesale (a reload, a first sync): forget what was derived.
    mutating func documentReplaced() { localCache = nil }

    /// The Plans of a drain, concatenated (each applies to the state the previous one left; the
    /// kernel runs a batch in order).
    mutating func plan(for items: Set<Refresh>, engine: inout Engine) throws -> Plan {
        if items.contains(.host) { return try reload(&engine) }
        var ops: [PlanOp] = []
        refreshedInstances = Set(items.compactMap { if case .instance(let id) = $0 { id } else { nil } })
        defer { refreshedInstances = [] }
        do {
            // Instances first (their groups decide what is local), then rules, then members; in
            // a fixed order within each kind, so that a drain is reproducible.
            for item in items.sorted(by: { (Self.order($0), "\($0)") < (Self.order($1), "\($1)") }) {
                let p: Plan
                switch item {
                case .instance(let id): p = try instanceRefresh(id, &engine)
                case .rules(let g): p = try rulesRefresh(g, &engine)
                case .members(let g): p = try membersRefresh(g, &engine)
                case .host: p = Plan()
                }
                ops += p.ops
            }
            return Plan(ops: ops)
        } catch is Reload {
            ops += try reload(&engine).ops
            return Plan(ops: ops)
        } catch is DocumentError {
            ops += try reload(&engine).ops
            return Plan(ops: ops)
        }
    }

    /// An event cannot express the change: reload the host's document.
    private struct Reload: Error {}

    private static func order(_ r: Refresh) -> Int {
        switch r { case .host: 0; case .instance: 1; case .rules: 2; case .members: 3 }
    }

    /// Whole-document reads so far (the first sync's and resyncs' included).
    private(set) var documentReads = 0

    /// Loads the host's whole document into the engine; its Plan is the difference.
    mutating func reload(_ engine: inout Engine) throws -> Plan {
        localCache = nil
        documentReads += 1
        return try engine.apply(document: store.document(forHost: host))
    }

    /// The instances this drain refreshes: their records in the engine may be behind the store.
    private var refreshedInstances: Set<String> = []

    /// The groups whose rules (and whose references' members) the engine has kept up to date:
    /// those with a member here that this drain does not refresh. A group whose only members
    /// here are being refreshed may have had none in the store for a while (one instance left
    /// it, then another joined, in the same drain): its rules refreshes then went to other hosts
    /// only, and the engine's copy may be stale. (Seen: such a group's rule missing from the
    /// kernel after a batched drain, `randomVerbsConverge`, seed 46.)
    private mutating func upToDateGroups(_ engine: Engine) -> Set<String> {
        HostProjection.localGroups(of: localInstances(engine).filter { !refreshedInstances.contains($0.key) }.values)
    }

    /// This host's instances as the engine has them (only instance events and reloads change them).
    private mutating func localInstances(_ engine: Engine) -> [String: Instance] {
        if let c = localCache { return c }
        let out = engine.document.instances.filter { $0.value.host == host }
        localCache = out
        return out
    }

    private mutating func instanceRefresh(_ id: String, _ engine: inout Engine) throws -> Plan {
        defer { localCache = nil }
        let current = engine.document.instances[id]
        let record = try store.instance(id)
        guard let rec = record, rec.host == host else {
            if let c = current, c.host == host, record == nil { return try engine.instanceUnplugged(id: id) }
            if current == nil && record == nil { return Plan() }
            throw Reload()
        }
        let locals = localInstances(engine)
        if let c = current, c.host == host {
            if c == rec { return Plan() }
            var same = c
            same.groups = rec.groups
            guard same == rec else { throw Reload() }
            // Only its groups changed: an event if every new group is already enforced here,
            // with rules the engine kept up to date.
            let upToDate = upToDateGroups(engine)
            guard Set(rec.groups).subtracting(c.groups).isSubset(of: upToDate) else {
                return try documentWith(locals.merging([id: rec]) { _, new in new }, upToDate: upToDate, &engine)
            }
            return try engine.instanceGroupsChanged(id: id, groups: rec.groups)
        }
        guard current == nil else { throw Reload() }  // moved here from another host
        let upToDate = upToDateGroups(engine)
        guard Set(rec.groups).isSubset(of: upToDate) else {
            return try documentWith(locals.merging([id: rec]) { _, new in new }, upToDate: upToDate, &engine)
        }
        return try engine.instancePlugged(id: id, instance: rec)
    }

    /// The host's instances become `local` (one instance plugged or its groups changed) and some
    /// group becomes enforced here that was not: the document is rebuilt from what the engine
    /// holds plus what is new to it, read from the store (the new local groups' rules, and the
    /// members elsewhere of every group new to the document, in full), and the engine plans the
    /// difference. That reads what changed, not the host's whole document (a whole reload: 45 ms
    /// for a 100-instance host at cloud-1M, `rampart-bench controller`); the engine's compile and
    /// diff still grow with the host, as a reload's do.
    ///
    /// What the engine holds is trusted only where refreshes kept it up to date
    /// (`upToDateGroups`): those groups' rules, and the members of the groups their rules
    /// reference. Instances elsewhere already in the document are projected (only the document's
    /// groups): for such a referenced group that is exactly their membership; the members of any
    /// other group referenced now are read in full, and what the document said of them is
    /// dropped, so the projection below is the one the store makes.
    /// `upToDate`: `upToDateGroups(engine)`, as the caller computed it (a walk of the host's instances).
    private mutating func documentWith(_ local: [String: Instance], upToDate: Set<String>, _ engine: inout Engine) throws -> Plan {
        let doc = engine.document
        var localGroups: [String: Group] = [:]
        for g in HostProjection.localGroups(of: local.values) {
            if upToDate.contains(g), let known = doc.groups[g] {
                localGroups[g] = known
            } else {
                guard let read = try store.group(g) else { throw Reload() }  // deleted meanwhile: the store decides
                localGroups[g] = read
            }
        }
        let referenced = HostProjection.referencedGroups(by: localGroups.values)
        let keptReferenced = HostProjection.referencedGroups(by: upToDate.compactMap { doc.groups[$0] })
        // A group referenced only now (new to the document, or in it but referenced by nothing
        // here): members refreshes did not reach this host for it, so what the document says of
        // its members may be stale or missing. That membership comes only from the store.
        let referencedNow = referenced.subtracting(keptReferenced)
        var remote = doc.instances.filter { $0.value.host != host }
        if !referencedNow.isEmpty {
            for (id, inst) in remote { remote[id]!.groups = inst.groups.filter { !referencedNow.contains($0) } }
        }
        for g in referencedNow {
            for (id, inst) in try store.memberRecords(of: g) where inst.host != host { remote[id] = inst }
        }
        // Only members of a referenced group stay (a group left by the changed instance may no
        // longer be referenced by anything here).
        remote = remote.filter { !referenced.isDisjoint(with: $0.value.groups) }
        let next = HostProjection.document(host: host, local: local, localGroups: localGroups, referenced: referenced,
                                           remote: remote, guardedPrefixes: doc.guardedPrefixes)
        defer { localCache = nil }
        return try engine.apply(document: next)
    }

    private mutating func rulesRefresh(_ group: String, _ engine: inout Engine) throws -> Plan {
        let doc = engine.document
        let local = HostProjection.localGroups(of: localInstances(engine).values)
        guard local.contains(group) else {
            // Not enforced here (as far as this host knows): only a reload can tell.
            if try store.hostsForRulesRefresh(group).contains(host) { throw Reload() }
            return Plan()
        }
        guard let g = try store.group(group) else { throw Reload() }
        // Only the groups that this host's own groups reference have their members kept up to
        // date here (that is where the store sends members refreshes); a group referenced only by
        // a group with no member here any more may hold stale members.
        let known = HostProjection.referencedGroups(by: local.compactMap { doc.groups[$0] })
        guard HostProjection.referencedGroups(by: [g]).isSubset(of: known) else { throw Reload() }
        return try engine.rulesChanged(group: group, rules: g.rules, description: g.description)
    }

    private mutating func membersRefresh(_ group: String, _ engine: inout Engine) throws -> Plan {
        let doc = engine.document
        guard HostProjection.referencedGroups(by: doc.groups.values).contains(group) else { return Plan() }
        var members: [String: Instance] = [:]
        // Instances elsewhere as the store has them; instances of this host as the engine has
        // them: their changes arrive as instance refreshes (which decide whether a group becomes
        // enforced here and so needs its real rules), never through a members refresh.
        for (id, inst) in try store.memberRecords(of: group) where inst.host != host {
            members[id] = HostProjection.project(inst, onto: host, groups: doc.groups)
        }
        for (id, inst) in localInstances(engine) where inst.groups.contains(group) {
            members[id] = inst
        }
        return try engine.membersChanged(group: group, members: members)
    }
}
