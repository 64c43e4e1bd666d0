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
        do {
            // Instances first (their groups decide what is local), then rules, then members.
            for item in items.sorted(by: { Self.order($0) < Self.order($1) }) {
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
            // Only its groups changed: every new group must already be enforced here.
            let others = HostProjection.localGroups(of: locals.filter { $0.key != id }.values)
            guard Set(rec.groups).subtracting(c.groups).isSubset(of: others) else { throw Reload() }
            return try engine.instanceGroupsChanged(id: id, groups: rec.groups)
        }
        guard current == nil, Set(rec.groups).isSubset(of: HostProjection.localGroups(of: locals.values)) else { throw Reload() }
        return try engine.instancePlugged(id: id, instance: rec)
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
