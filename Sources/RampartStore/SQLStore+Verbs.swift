import Foundation
import RampartCore

/// The verbs of the store: each checks its input, then changes the store and computes the
/// fan-out in one transaction (`verb`, SQLStore.swift).
extension SQLStore {
    // MARK: checks

    func requireGroup(_ id: String) throws(StoreError) {
        if try db.query("SELECT 1 FROM groups WHERE id = ?", .text(id)).isEmpty { throw StoreError(.notFound, "unknown group \(id)") }
    }

    func checkID(_ id: String, _ what: String) throws(StoreError) {
        let issues = Validate.id(id, at: "")
        if !issues.isEmpty { throw StoreError(.invalid, "invalid \(what) id: " + issues.map(\.reason).joined(separator: "; ")) }
    }

    /// The host's document must stay valid (unique interfaces and addresses, …): checked after
    /// the change, inside the transaction, which a failure rolls back. It reads the host's whole
    /// document (~38 ms on PostgreSQL at ~100 instances): kept for `importDocument`, which can
    /// break anything; a members change checks only its instance (`validateMember`).
    func validateHost(_ host: String) throws(StoreError) {
        let doc = try documentUnlocked(forHost: host)
        try refuse(doc.issues(), host: host)
    }

    /// Refuses a change that would leave these issues in the host's document, in the same words
    /// whichever check found them.
    func refuse(_ issues: [ValidationIssue], host: String) throws(StoreError) {
        if !issues.isEmpty { throw StoreError(.invalid, "host \(host) would be invalid:\n  " + issues.map(\.description).joined(separator: "\n  ")) }
    }

    /// What a members change (an instance added, or its groups set) can make invalid in its
    /// host's document, checked after the change, inside the transaction: the instance's own
    /// rules (id, host, addresses, interface, at most `Instance.maxGroups` groups) and, when
    /// `added`, its interface and addresses against the other instances of its host — one
    /// statement fetching only those that share one. Groups that do not exist were refused
    /// when written (`writeInstance`). Nothing else in the host's document changes with such a
    /// verb: the groups it now enforces, their rules and the members elsewhere they reference
    /// were each validated when written, and only this host's instances must be unique, so the
    /// host's document is valid after the change exactly when these issues are empty (the
    /// equivalence with `validateHost` is tested on random changes, MembersCheckTests). Same
    /// error, with the same paths, as `validateHost`.
    func validateMember(_ id: String, _ inst: Instance, added: Bool) throws(StoreError) {
        if checksWholeHost { return try validateHost(inst.host) }
        var sharing: [String: Instance] = [:]
        if added {
            // ips is the addresses' text joined by commas: a comma on each side finds one whole
            // (an address's text has no LIKE wildcard in it).
            var match: [String] = []
            var args: [SQLValue] = [.text(inst.host), .text(id)]
            if let name = inst.interface {
                match.append("i.interface = ?")
                args.append(.text(name))
            }
            for a in Set(inst.ips.map(\.description)) {
                match.append("(',' || i.ips || ',') LIKE ?")
                args.append(.text("%,\(a),%"))
            }
            if !match.isEmpty {
                sharing = try records("WHERE i.host = ? AND i.id <> ? AND (\(match.joined(separator: " OR ")))", args)
            }
        }
        try refuse(Validate.instanceOnHost(inst, id: id, sharing: sharing), host: inst.host)
    }

    // MARK: verbs

    public func createGroup(_ id: String, description: String?) throws(StoreError) -> [Delivery] {
        try checkID(id, "group")
        if let d = description {
            let issues = Validate.description(d, at: "groups.\(id).description")
            if !issues.isEmpty { throw StoreError(.invalid, issues.map(\.description).joined(separator: "; ")) }
        }
        return try verb { () throws(StoreError) in
            if try !db.query("SELECT 1 FROM groups WHERE id = ?", .text(id)).isEmpty { throw StoreError(.conflict, "group \(id) exists") }
            try db.run("INSERT INTO groups(id, description, rules) VALUES (?, ?, '[]')", .text(id), description.map { .text($0) } ?? .null)
            return []
        }
    }

    public func deleteGroup(_ id: String) throws(StoreError) -> [Delivery] {
        try verb { () throws(StoreError) in
            try requireGroup(id)
            let members = try db.query("SELECT instance FROM instance_groups WHERE group_id = ? LIMIT 3", .text(id)).compactMap { $0[0] }
            if !members.isEmpty { throw StoreError(.conflict, "group \(id) has members (\(members.joined(separator: ", "))…)") }
            let referrers = try db.query("SELECT group_id FROM group_refs WHERE ref = ? AND group_id <> ? LIMIT 3", .text(id), .text(id)).compactMap { $0[0] }
            if !referrers.isEmpty { throw StoreError(.conflict, "group \(id) is referenced by the rules of \(referrers.joined(separator: ", "))") }
            try db.run("DELETE FROM group_refs WHERE group_id = ?", .text(id))
            try db.run("DELETE FROM groups WHERE id = ?", .text(id))
            return []
        }
    }

    /// Writes the group's rules and the groups they reference. `previous`: the rules the group
    /// had, read in this transaction; when they reference the same groups, the references are
    /// left as they are (the usual rule change: two round trips fewer on PostgreSQL).
    func writeRules(_ group: String, _ rules: [Rule], previous: [Rule]? = nil) throws(StoreError) {
        try db.run("UPDATE groups SET rules = ? WHERE id = ?", .text(RulesCodec.encode(rules)), .text(group))
        if let previous, Self.referencedGroups(previous) == Self.referencedGroups(rules) { return }
        try db.run("DELETE FROM group_refs WHERE group_id = ?", .text(group))
        for r in rules {
            if case .group(let ref) = r.remote {
                try requireGroup(ref)
                try db.run("INSERT INTO group_refs(group_id, ref) VALUES (?, ?) ON CONFLICT DO NOTHING", .text(group), .text(ref))
            }
        }
    }

    /// The groups `rules` name as their remote side.
    static func referencedGroups(_ rules: [Rule]) -> Set<String> {
        Set(rules.compactMap { r -> String? in if case .group(let g) = r.remote { return g } else { return nil } })
    }

    public func authorize(group: String, rule: Rule) throws(StoreError) -> [Delivery] {
        // A typed rule can still break the contract (ports with icmp, protocol 0, …); the remote
        // group's existence is checked in the transaction.
        let issues = Validate.rule(rule, at: "rule")
        if !issues.isEmpty { throw StoreError(.invalid, issues.map(\.description).joined(separator: "; ")) }
        return try changeRules(group) { (rules: [Rule]) throws(StoreError) -> [Rule] in
            var bare = rule
            bare.id = nil
            if rules.contains(where: { var o = $0; o.id = nil; return o == bare }) {
                throw StoreError(.conflict, "group \(group) already has this rule")
            }
            if let id = rule.id, rules.contains(where: { $0.id == id }) { throw StoreError(.conflict, "group \(group) already has a rule with id \(id)") }
            return rules + [rule]
        }
    }

    public func revoke(group: String, rule: Rule?, id: String?) throws(StoreError) -> [Delivery] {
        try changeRules(group) { (rules: [Rule]) throws(StoreError) -> [Rule] in
            var kept = rules
            if let id { kept.removeAll { $0.id == id } }
            if let rule {
                var bare = rule
                bare.id = nil
                kept.removeAll { var o = $0; o.id = nil; return o == bare }
            }
            if kept.count == rules.count { throw StoreError(.notFound, "group \(group) has no such rule") }
            return kept
        }
    }

    /// A rules verb: `change` maps the group's rules to the new ones (or refuses); the group's
    /// members' hosts get `rules(group)`. On PostgreSQL a read and one server-side call
    /// (`changeRulesOnServer`), elsewhere one transaction.
    func changeRules(_ group: String, _ change: ([Rule]) throws(StoreError) -> [Rule]) throws(StoreError) -> [Delivery] {
        if dialect.verbsOnServer { return try changeRulesOnServer(group, change) }
        return try verb { () throws(StoreError) in
            guard let g = try groupRow(group) else { throw StoreError(.notFound, "unknown group \(group)") }
            try writeRules(group, try change(g.rules), previous: g.rules)
            return try fanOut(rules: group).sorted()
        }
    }

    func writeInstance(_ id: String, _ inst: Instance) throws(StoreError) {
        try db.run("INSERT INTO hosts(name) VALUES (?) ON CONFLICT DO NOTHING", .text(inst.host))
        for g in inst.groups { try requireGroup(g) }
        try db.run("DELETE FROM instance_groups WHERE instance = ?", .text(id))
        try db.run("INSERT INTO instances(id, host, ips, interface, mac) VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET host = excluded.host, ips = excluded.ips, interface = excluded.interface, mac = excluded.mac",
                   .text(id), .text(inst.host), .text(inst.ips.map(\.description).joined(separator: ",")),
                   inst.interface.map { .text($0) } ?? .null, inst.mac.map { .text($0.description) } ?? .null)
        var seen = Set<String>()
        for (i, g) in inst.groups.enumerated() where seen.insert(g).inserted {
            try db.run("INSERT INTO instance_groups(instance, position, group_id) VALUES (?, ?, ?)", .text(id), .int(Int64(i)), .text(g))
        }
    }

    public func addInstance(_ id: String, _ inst: Instance) throws(StoreError) -> [Delivery] {
        try checkID(id, "instance")
        // On PostgreSQL one `CALL` when the instance is fine on its own (the procedure checks
        // what the store holds); whatever it declines, the transaction below refuses in words.
        if dialect.verbsOnServer, !checksWholeHost, Validate.instanceOnHost(inst, id: id).isEmpty,
           let deliveries = try addInstanceOnServer(id, inst) {
            return deliveries
        }
        return try verb { () throws(StoreError) in try insertInstance(id, inst) }
    }

    /// `addInstance` inside a transaction (the EC2 API's RunInstances shares it).
    func insertInstance(_ id: String, _ inst: Instance) throws(StoreError) -> [Delivery] {
        if try !records("WHERE i.id = ?", [.text(id)]).isEmpty { throw StoreError(.conflict, "instance \(id) exists") }
        try writeInstance(id, inst)
        try validateMember(id, inst, added: true)
        var out = try fanOut(members: inst.groups)
        out.insert(Delivery(host: inst.host, refresh: .instance(id)))
        return out.sorted()
    }

    public func removeInstance(_ id: String) throws(StoreError) -> [Delivery] {
        if dialect.verbsOnServer, let deliveries = try removeInstanceOnServer(id) { return deliveries }
        return try verb { () throws(StoreError) in try deleteInstance(id) }
    }

    /// `removeInstance` inside a transaction (the EC2 API's TerminateInstances shares it).
    func deleteInstance(_ id: String) throws(StoreError) -> [Delivery] {
        guard let inst = try records("WHERE i.id = ?", [.text(id)])[id] else { throw StoreError(.notFound, "unknown instance \(id)") }
        var out = try fanOut(members: inst.groups)
        try db.run("DELETE FROM instance_groups WHERE instance = ?", .text(id))
        try db.run("DELETE FROM instances WHERE id = ?", .text(id))
        out.formUnion(try fanOut(members: inst.groups))
        out.insert(Delivery(host: inst.host, refresh: .instance(id)))
        return out.sorted()
    }

    public func setGroups(instance id: String, groups: [String]) throws(StoreError) -> [Delivery] {
        try verb { () throws(StoreError) in try updateGroups(instance: id, groups) }
    }

    /// `setGroups` inside a transaction (the EC2 API's ModifyInstanceAttribute shares it).
    func updateGroups(instance id: String, _ groups: [String]) throws(StoreError) -> [Delivery] {
        guard var inst = try records("WHERE i.id = ?", [.text(id)])[id] else { throw StoreError(.notFound, "unknown instance \(id)") }
        let changed = Set(inst.groups).symmetricDifference(groups)
        var out = try fanOut(members: changed)
        inst.groups = groups
        try writeInstance(id, inst)
        try validateMember(id, inst, added: false)
        out.formUnion(try fanOut(members: changed))
        out.insert(Delivery(host: inst.host, refresh: .instance(id)))
        return out.sorted()
    }

    /// Upserts every group (rules replaced) and instance of a valid document. Every host that
    /// has an instance in the store afterwards and is touched by the document gets a whole reload.
    public func importDocument(_ document: Document) throws(StoreError) -> [Delivery] {
        do { try document.validate() } catch { throw StoreError(.invalid, error.description) }
        return try verb { () throws(StoreError) in
            for id in document.groups.keys.sorted() {
                let g = document.groups[id]!
                try db.run("INSERT INTO groups(id, description, rules) VALUES (?, ?, '[]') ON CONFLICT(id) DO UPDATE SET description = excluded.description",
                           .text(id), g.description.map { .text($0) } ?? .null)
            }
            for id in document.groups.keys.sorted() { try writeRules(id, document.groups[id]!.rules) }
            // The document's host becomes known (a new hypervisor is registered by importing its
            // document, even with no instance yet).
            try db.run("INSERT INTO hosts(name) VALUES (?) ON CONFLICT DO NOTHING", .text(document.host))
            // The document is the host's whole policy: its guarded prefixes replace the stored ones.
            try writeGuards(document.host, document.guardedPrefixes)
            var hosts = Set<String>()
            for (id, inst) in document.instances {
                try writeInstance(id, inst)
                hosts.insert(inst.host)
            }
            for h in hosts { try validateHost(h) }
            // Every host whose document may have changed: hosts of members of the document's groups.
            var out = Set<Delivery>()
            for g in document.groups.keys {
                for h in try db.query(Self.rulesFanOut, .text(g)).compactMap({ $0[0] }) { out.insert(Delivery(host: h, refresh: .host)) }
                for h in try db.query(Self.membersFanOut, .text(g)).compactMap({ $0[0] }) { out.insert(Delivery(host: h, refresh: .host)) }
            }
            for h in hosts.union([document.host]) { out.insert(Delivery(host: h, refresh: .host)) }
            return out.sorted()
        }
    }
}
