/// Which groups and members a host needs: the per-host document of the spec, worked out from
/// the instances on the host, the groups they belong to and the instances elsewhere that are
/// members of a group those groups' rules reference.
///
/// The store builds a host's document with it (`SQLiteStore.document(forHost:)`) and the daemon
/// answers its refresh calls with it, so both agree on what a host's document holds:
///
/// - the host's own instances, in full;
/// - the groups with a member on the host (local groups), with their rules;
/// - every group those rules reference, without rules unless it is local too (nothing on the
///   host enforces a group with no member there);
/// - every instance elsewhere that is a member of a referenced group, projected: only the groups
///   of the document, without interface or MAC (the host only needs its addresses).
public enum HostProjection {
    /// The groups with a member among `instances` (pass the host's own instances).
    public static func localGroups(of instances: some Sequence<Instance>) -> Set<String> {
        var out = Set<String>()
        for i in instances { out.formUnion(i.groups) }
        return out
    }

    /// The groups that the rules of `groups` reference (their members elsewhere are in the
    /// document).
    public static func referencedGroups(by groups: some Sequence<Group>) -> Set<String> {
        var out = Set<String>()
        for g in groups {
            for r in g.rules { if case .group(let ref) = r.remote { out.insert(ref) } }
        }
        return out
    }

    /// How `instance` appears in the document of `host`: unchanged if it is on `host`; otherwise
    /// with only the groups that `isInDocument` accepts and without interface or MAC.
    public static func project(_ instance: Instance, onto host: String, isInDocument: (String) -> Bool) -> Instance {
        if instance.host == host { return instance }
        var i = instance
        i.groups = i.groups.filter(isInDocument)
        i.interface = nil
        i.mac = nil
        return i
    }

    /// How `instance` appears in the document of `host` whose groups are `groups`.
    public static func project(_ instance: Instance, onto host: String, groups: [String: Group]) -> Instance {
        project(instance, onto: host) { groups[$0] != nil }
    }

    /// The groups of the host's document: the local ones with their rules, the others it
    /// references without rules.
    public static func groups(local: [String: Group], referenced: some Sequence<String>) -> [String: Group] {
        var groups = local
        for r in referenced where groups[r] == nil { groups[r] = Group() }
        return groups
    }

    /// The host's document from its parts: `local` (the host's instances), `localGroups` (the
    /// groups with a member among them, with their rules), `referenced` (every group their rules
    /// reference; those not local are listed without rules) and `remote` (instances elsewhere
    /// that are members of a referenced group; projected here).
    public static func document(host: String, local: [String: Instance], localGroups: [String: Group], referenced: some Sequence<String>,
                                remote: [String: Instance], guardedPrefixes: [String] = []) -> Document {
        let groups = Self.groups(local: localGroups, referenced: referenced)
        var instances = local
        for (id, inst) in remote where inst.host != host {
            instances[id] = project(inst, onto: host, groups: groups)
        }
        return Document(host: host, groups: groups, instances: instances, guardedPrefixes: guardedPrefixes)
    }
}
