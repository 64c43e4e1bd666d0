extension Validate {
    /// What `Document.issues()` reports, in the document of `inst.host`, about instance `id` once
    /// it is `inst` there: the host's name (at `host`), the instance's own rules as an instance of
    /// this host (`instance(_:id:at:thisHost:)`: its id, addresses, a required interface, at most
    /// `Instance.maxGroups` groups) and the uniqueness of its interface and addresses among the
    /// host's instances, with the document's paths (`instances.<id>.…`) and words (the instance
    /// with the smaller id keeps a shared interface or address; the other is reported).
    ///
    /// `sharing`: the other instances of the host that share an interface or an address with
    /// `inst` — the only ones a cross-instance rule can pair it with (instances of other hosts
    /// are ignored). A store whose host documents are valid before a change that only adds or
    /// re-groups one instance needs no more than this to tell whether the host's document stays
    /// valid, without reading it (the rest of the document is what it was). Groups are not
    /// looked up: their existence is the caller's to check.
    public static func instanceOnHost(_ inst: Instance, id: String, sharing: [String: Instance] = [:]) -> [ValidationIssue] {
        var out = host(inst.host, at: "host")
        out += instance(inst, id: id, at: joinPath("instances", id), thisHost: inst.host)
        var local = sharing.filter { $0.key != id && $0.value.host == inst.host }
        local[id] = inst
        out += Document(host: inst.host, instances: local).localUniquenessIssues()
        return out.sorted()
    }
}
