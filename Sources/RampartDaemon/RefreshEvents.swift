import RampartCore
import RampartStore

/// Turns a drain's refreshes into engine events: each refresh reads what changed from the store
/// and becomes one event (plug, unplug, groups changed, rules changed, members changed), whose
/// Plan is the kernel work. What is new to the host (a group it did not enforce, a group whose
/// members it did not keep) is read from the store and given to the engine as events too; what
/// an event cannot express (a deleted object, an instance moved between hosts) falls back to
/// reloading the host's whole document (compile + diff), in the same drain.
///
/// What the host's document holds is `HostProjection`'s answer, as in the store.
struct RefreshEvents {
    let host: String
    let store: Store

    init(host: String, store: Store) {
        self.host = host
        self.store = store
    }

    /// A drain that failed part-way (a store read failed, or the reload after a refused event
    /// did): `applied` is the Plan of every event the engine took before the failure. Each
    /// refresh reads everything before its first event, so a store failure leaves whole
    /// refreshes in the engine. Their Plan must reach the kernel (a revoke among them, read from
    /// the store, is owed to it); the rest waits for the store.
    struct PartlyPlanned: Error, CustomStringConvertible {
        let applied: Plan
        let underlying: any Error
        var description: String { "\(underlying)" }
    }

    /// The Plans of a drain, concatenated (each applies to the state the previous one left; the
    /// kernel runs a batch in order). Throws `PartlyPlanned` when a refresh fails after others
    /// were given to the engine.
    mutating func plan(for items: Set<Refresh>, engine: inout Engine, readAhead: ReadAhead? = nil) throws -> Plan {
        applied = []
        ahead = readAhead
        defer { applied = []; ahead = nil }
        do {
            try planEach(items, &engine)
            return Plan(ops: applied)
        } catch {
            if applied.isEmpty { throw error }
            throw PartlyPlanned(applied: Plan(ops: applied), underlying: error)
        }
    }

    /// The operations of every event given to the engine in this drain so far, in order. Each
    /// event's Plan is kept as soon as the engine took it, so that a refresh that fails after
    /// some of its events (an event the engine refuses, then a reload) loses none of them: the
    /// reload's Plan is a difference from the engine's state, which already includes them.
    private var applied: [PlanOp] = []

    private mutating func record(_ p: Plan) { applied += p.ops }

    private mutating func planEach(_ items: Set<Refresh>, _ engine: inout Engine) throws {
        if items.contains(.host) { return record(try reload(&engine)) }
        refreshedInstances = Set(items.compactMap { if case .instance(let id) = $0 { id } else { nil } })
        pendingRules = Set(items.compactMap { if case .rules(let g) = $0 { g } else { nil } })
        defer { refreshedInstances = []; pendingRules = [] }
        do {
            // Instances first (their groups decide what is local), then rules, then members; in
            // a fixed order within each kind, so that a drain is reproducible.
            for item in items.sorted(by: { (Self.order($0), "\($0)") < (Self.order($1), "\($1)") }) {
                switch item {
                case .instance(let id): try instanceRefresh(id, &engine)
                case .rules(let g): try rulesRefresh(g, &engine)
                case .members(let g): try membersRefresh(g, &engine)
                case .host: break
                }
            }
        } catch is Reload {
            record(try reload(&engine))
        } catch is DocumentError {
            record(try reload(&engine))
        }
    }

    /// An event cannot express the change: reload the host's document.
    private struct Reload: Error {}

    private static func order(_ r: Refresh) -> Int {
        switch r { case .host: 0; case .instance: 1; case .rules: 2; case .members: 3 }
    }

    /// What the refreshes read so far: whole documents (the first sync's and resyncs' included),
    /// other reads of the store, and reads the drain's read-ahead answered.
    struct Reads: Equatable {
        var documents = 0
        var store = 0
        var ahead = 0
    }
    private(set) var reads = Reads()

    /// Loads the host's whole document into the engine; its Plan is the difference.
    mutating func reload(_ engine: inout Engine) throws -> Plan {
        reads.documents += 1
        return try engine.apply(document: store.document(forHost: host))
    }

    // MARK: reads

    /// This drain's read-ahead (`ReadAhead`): its answers stand for the store's, being at least
    /// as new as the refreshes that asked for them.
    private var ahead: ReadAhead?

    private mutating func instance(_ id: String) throws -> Instance? {
        if let answer = ahead?.instances[id] { reads.ahead += 1; return answer }
        reads.store += 1
        return try store.instance(id)
    }

    private mutating func group(_ id: String) throws -> Group? {
        if let answer = ahead?.groups[id] { reads.ahead += 1; return answer }
        reads.store += 1
        return try store.group(id)
    }

    private mutating func memberRecords(of group: String) throws -> [String: Instance] {
        if let answer = ahead?.members[group] { reads.ahead += 1; return answer }
        reads.store += 1
        return try store.memberRecords(of: group)
    }

    /// The instances this drain refreshes: their records in the engine may be behind the store.
    private var refreshedInstances: Set<String> = []
    /// The groups whose rules this drain refreshes: the engine's copy may be behind the store,
    /// and for the whole drain (after their refresh too) what they reference may have gone
    /// unreferenced here in the store for a while, so that members refreshes skipped this host.
    private var pendingRules: Set<String> = []

    /// Whether the engine has kept `group`'s rules (and its references' members) up to date: it
    /// has a member here that this drain does not refresh, and this drain does not refresh its
    /// rules. A group whose only members here are being refreshed may have had none in the store
    /// for a while (one instance left it, then another joined, in the same drain): its rules
    /// refreshes then went to other hosts only, and the engine's copy may be stale. (Seen: such a
    /// group's rule missing from the kernel after a batched drain, `randomVerbsConverge`, seed
    /// 46.) A group whose rules this drain refreshes may have dropped a reference and taken it
    /// back while this host was behind: a drain holding a rule revoked from g5 (its reference to
    /// g4, so a member that joined g4 next was not sent here) and then an instance joining a
    /// group that references g4 trusted g5's old rules, took g4's members as kept up to date, and
    /// missed that member (`randomVerbsConverge`, seed 276, batched, when the drain held all
    /// three). From the engine's index of the group's members here: no walk of the host.
    private func isUpToDate(_ group: String, _ engine: Engine) -> Bool {
        !pendingRules.contains(group) && engine.localMemberIDs(of: group).contains { !refreshedInstances.contains($0) }
    }

    /// The enforced groups that are not up to date (`isUpToDate`): only among the groups this
    /// drain refreshes the rules of and those of the instances it refreshes. Their references do
    /// not keep a group's members trusted (`isReferencedByEnforcedGroup(_:excluding:)`).
    private func enforcedButNotUpToDate(_ engine: Engine) -> Set<String> {
        var candidates = pendingRules
        for id in refreshedInstances { candidates.formUnion(engine.document.instances[id]?.groups ?? []) }
        return candidates.filter { engine.enforces($0) && !isUpToDate($0, engine) }
    }

    /// Gives the engine the members of `groups` exactly as the store has them (elsewhere:
    /// projected onto this host; here: as the engine has them, since this host's own changes
    /// arrive as instance refreshes), first creating in the document, without rules, each of
    /// `groups` and `alsoCreate` it lacks (so that records and rules can name them). Every read
    /// comes before the first event.
    private mutating func membersAfresh(_ groups: Set<String>, alsoCreate: some Sequence<String>, _ engine: inout Engine) throws {
        var elsewhere: [String: [String: Instance]] = [:]
        for g in groups {
            elsewhere[g] = try memberRecords(of: g).filter { $0.value.host != host }
        }
        for g in groups.union(alsoCreate).sorted() where engine.document.groups[g] == nil {
            record(try engine.rulesChanged(group: g, rules: []))
        }
        for g in groups.sorted() {
            let docGroups = engine.document.groups
            var members: [String: Instance] = [:]
            for (id, inst) in elsewhere[g]! { members[id] = HostProjection.project(inst, onto: host, groups: docGroups) }
            for (id, inst) in engine.localMembers(of: g) { members[id] = inst }
            record(try engine.membersChanged(group: g, members: members))
        }
    }

    private mutating func instanceRefresh(_ id: String, _ engine: inout Engine) throws {
        let current = engine.document.instances[id]
        let stored = try instance(id)
        guard let rec = stored, rec.host == host else {
            if let c = current, c.host == host, stored == nil { return record(try engine.instanceUnplugged(id: id)) }
            if current == nil && stored == nil { return }
            throw Reload()
        }
        if let c = current, c.host == host {
            if c == rec { return }
            var same = c
            same.groups = rec.groups
            guard same == rec else { throw Reload() }
            // Only its groups changed: an event if every new group is already enforced here,
            // with rules the engine kept up to date.
            guard Set(rec.groups).subtracting(c.groups).allSatisfy({ isUpToDate($0, engine) }) else {
                return try joinGroupsNewHere(id, rec, &engine)
            }
            return record(try engine.instanceGroupsChanged(id: id, groups: rec.groups))
        }
        guard current == nil else { throw Reload() }  // moved here from another host
        guard rec.groups.allSatisfy({ isUpToDate($0, engine) }) else {
            return try joinGroupsNewHere(id, rec, &engine)
        }
        record(try engine.instancePlugged(id: id, instance: rec))
    }

    /// Instance `id` becomes `rec` (plugged here, or its groups changed) and brings a group
    /// this host does not enforce yet, or enforces with a copy of its rules that may be stale
    /// (not `isUpToDate`): those groups' rules are read from the store, and the members of every
    /// group their rules reference that no up-to-date group here references, in full; then all
    /// of it goes to the engine as events, so the cost is what changed. Before, the document was
    /// rebuilt and compiled and diffed whole: 136 ms verb → applied for an instance joining a
    /// group new to a host-1k host (`rampart-bench controller`, one notified host).
    ///
    /// The events, in order: the groups new to the document are created (no rules yet) and the
    /// referenced groups get their members (`membersAfresh`); the groups read get their rules;
    /// the instance is plugged, or its groups change. A group or member the change leaves
    /// unreferenced stays in the document, compiling to nothing (no member here, or no rule here
    /// reads it), as after any unplug; it is read afresh should it be needed again. Every read
    /// comes before the first event, so a failed read leaves the engine as it was.
    private mutating func joinGroupsNewHere(_ id: String, _ rec: Instance, _ engine: inout Engine) throws {
        let untrusted = enforcedButNotUpToDate(engine)
        // The groups local after the change that are not up to date: the instance's new ones,
        // and those enforced but not up to date that keep a member here besides it.
        var stale = Set(rec.groups.filter { !isUpToDate($0, engine) })
        for g in untrusted where engine.localMemberIDs(of: g).contains(where: { $0 != id }) { stale.insert(g) }
        var fresh: [String: Group] = [:]
        for g in stale {
            guard let read = try group(g) else { throw Reload() }  // deleted meanwhile: the store decides
            fresh[g] = read
        }
        let unkept = HostProjection.referencedGroups(by: fresh.values).filter { !engine.isReferencedByEnforcedGroup($0, excluding: untrusted) }
        let plugged = engine.document.instances[id] == nil
        try membersAfresh(unkept, alsoCreate: fresh.keys, &engine)
        for (g, group) in fresh.sorted(by: { $0.key < $1.key }) {
            record(try engine.rulesChanged(group: g, rules: group.rules, description: group.description))
        }
        record(try plugged
            ? engine.instancePlugged(id: id, instance: rec)
            : engine.instanceGroupsChanged(id: id, groups: rec.groups))
    }

    // Both below ask the engine's indexes (which groups have a member here, which groups their
    // rules reference) instead of walking the host's instances and groups: at a host with 1,000
    // instances in 2,000 groups those walks were most of a refresh's CPU (`rampart-bench
    // controller`, one notified host).

    private mutating func rulesRefresh(_ group: String, _ engine: inout Engine) throws {
        guard engine.enforces(group) else {
            // Not enforced here (as far as this host knows): only a reload can tell.
            reads.store += 1
            if try store.hostsForRulesRefresh(group).contains(host) { throw Reload() }
            return
        }
        guard let g = try self.group(group) else { throw Reload() }
        // Only the groups that this host's up-to-date groups reference have their members kept
        // up to date here (that is where the store sends members refreshes); any other group the
        // new rules reference (new to the host, or referenced only by groups whose own rules or
        // members here are being refreshed) has its members read afresh, before the rules that
        // read them. (Until 2026-12-04 that was a reload of the whole document.)
        let untrusted = enforcedButNotUpToDate(engine)
        let stale = HostProjection.referencedGroups(by: [g]).filter { !engine.isReferencedByEnforcedGroup($0, excluding: untrusted) }
        try membersAfresh(stale, alsoCreate: [String](), &engine)
        record(try engine.rulesChanged(group: group, rules: g.rules, description: g.description))
    }

    private mutating func membersRefresh(_ group: String, _ engine: inout Engine) throws {
        // Members matter here only to a rule of a group with a member here; a group referenced
        // only by groups without one is read afresh when one of them gains a member here
        // (`joinGroupsNewHere`), so its members need not be kept meanwhile.
        guard engine.isReferencedByEnforcedGroup(group) else { return }
        let groups = engine.document.groups
        var members: [String: Instance] = [:]
        // Instances elsewhere as the store has them; instances of this host as the engine has
        // them: their changes arrive as instance refreshes (which decide whether a group becomes
        // enforced here and so needs its real rules), never through a members refresh.
        for (id, inst) in try memberRecords(of: group) where inst.host != host {
            members[id] = HostProjection.project(inst, onto: host, groups: groups)
        }
        for (id, inst) in engine.localMembers(of: group) { members[id] = inst }
        record(try engine.membersChanged(group: group, members: members))
    }
}
