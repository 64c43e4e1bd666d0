/// The whole-ruleset differ: (committed IR, desired IR) → Plan. nil means "no table".
/// Cost is proportional to the size of both IRs; the incremental events avoid it.
public func diff(from old: RulesetIR?, to new: RulesetIR?) -> Plan {
    var b = PlanBuilder()
    switch (old, new) {
    case (nil, nil):
        return Plan()
    case (_?, nil):
        b.deleteTable = true
        return b.build()
    case (nil, let n?):
        b.createTable = true
        diffObjects(RulesetIR(), n, into: &b)
    case (let o?, let n?):
        // A chain whose hook, priority or policy differs (only possible after drift: Rampart's
        // own names fix their headers) cannot be fixed by a rewrite, and deleting and re-creating
        // a name in one batch would break the creation-before-deletion order. Rebuild the table
        // instead, still in one transaction.
        // The same holds for a set whose key type differs, or a set and a map that swapped a name.
        let headerDrift = o.chains.contains { name, c in n.chains[name].map { $0.header != c.header } ?? false }
            || o.sets.contains { name, s in (n.sets[name].map { $0.header != s.header } ?? false) || n.maps[name] != nil }
            || o.maps.keys.contains { n.sets[$0] != nil }
        if headerDrift {
            return Plan(ops: [.deleteTable] + diff(from: nil, to: n).ops)
        }
        diffObjects(o, n, into: &b)
    }
    return b.build()
}

private func diffObjects(_ o: RulesetIR, _ n: RulesetIR, into b: inout PlanBuilder) {
    for name in Set(o.sets.keys).union(n.sets.keys) {
        let (x, y) = (o.sets[name], n.sets[name])
        if x != y { b.set(old: x, new: y) }
    }
    for name in Set(o.maps.keys).union(n.maps.keys) {
        let (x, y) = (o.maps[name], n.maps[name])
        if x == y { continue }
        if x == nil { b.createMaps.append(name) }
        for key in Set(x?.elements.keys ?? [:].keys).union(y?.elements.keys ?? [:].keys) {
            b.mapKey(name, key, old: x?.elements[key], new: y?.elements[key])
        }
        if y == nil { b.deleteMaps.append(name) }
    }
    for name in Set(o.chains.keys).union(n.chains.keys) {
        let (x, y) = (o.chains[name], n.chains[name])
        if x != y { b.chain(old: x, new: y) }
    }
}
