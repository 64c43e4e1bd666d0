import Foundation
import RampartCore

// What the EC2 API (RampartEC2) keeps beside the contract's groups and rules: VPCs, each group's
// VPC and name, tags, and rule descriptions. A security group is a Rampart group whose id is its
// `sg-…` id; its rules are the contract's rules, each with its `sgr-…` id in the rule's `id`.
// The API's calls run in one transaction each (`ec2Change`), like the controller verbs.

extension SQLStore {
    /// The EC2 tables, in the SQL both databases accept (SQLite: created on every open;
    /// PostgreSQL: schema version 3).
    static let ec2Schema = [
        """
        CREATE TABLE IF NOT EXISTS ec2_vpcs(id TEXT PRIMARY KEY, account TEXT NOT NULL, region TEXT NOT NULL,
            cidr TEXT NOT NULL, is_default INTEGER NOT NULL)
        """,
        "CREATE UNIQUE INDEX IF NOT EXISTS ec2_vpcs_default ON ec2_vpcs(account, region) WHERE is_default = 1",
        """
        CREATE TABLE IF NOT EXISTS ec2_groups(id TEXT PRIMARY KEY REFERENCES groups(id), vpc_id TEXT NOT NULL REFERENCES ec2_vpcs(id),
            name TEXT NOT NULL, UNIQUE(vpc_id, name))
        """,
        "CREATE TABLE IF NOT EXISTS ec2_tags(resource TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY(resource, key))",
        """
        CREATE TABLE IF NOT EXISTS ec2_rule_descriptions(rule_id TEXT PRIMARY KEY, group_id TEXT NOT NULL REFERENCES groups(id),
            description TEXT NOT NULL)
        """,
        "CREATE INDEX IF NOT EXISTS ec2_rule_descriptions_group ON ec2_rule_descriptions(group_id)",
        """
        CREATE TABLE IF NOT EXISTS ec2_instances(id TEXT PRIMARY KEY REFERENCES instances(id), vpc_id TEXT NOT NULL REFERENCES ec2_vpcs(id),
            reservation TEXT NOT NULL, image TEXT NOT NULL, type TEXT NOT NULL, launched TEXT NOT NULL, client_token TEXT)
        """,
        "CREATE INDEX IF NOT EXISTS ec2_instances_vpc ON ec2_instances(vpc_id)",
    ]

    /// The EC2 tables of PostgreSQL's schema version 4, in the SQL both databases accept: the
    /// instance lifecycle (SQLStore+EC2Lifecycle.swift) and rule tags.
    static let ec2LifecycleSchema = [
        // A row only for a live instance that is not running (absent: running).
        "CREATE TABLE IF NOT EXISTS ec2_instance_states(id TEXT PRIMARY KEY REFERENCES instances(id), state TEXT NOT NULL)",
        """
        CREATE TABLE IF NOT EXISTS ec2_terminated(id TEXT PRIMARY KEY, vpc_id TEXT NOT NULL REFERENCES ec2_vpcs(id),
            reservation TEXT NOT NULL, image TEXT NOT NULL, type TEXT NOT NULL, launched TEXT NOT NULL, client_token TEXT,
            host TEXT NOT NULL, groups TEXT NOT NULL, ips TEXT NOT NULL, interface TEXT, mac TEXT, terminated_at BIGINT NOT NULL)
        """,
        "CREATE INDEX IF NOT EXISTS ec2_terminated_vpc ON ec2_terminated(vpc_id)",
        // A rule's id lives in its group's JSON, so its tags name the group too: read and removed with it.
        """
        CREATE TABLE IF NOT EXISTS ec2_rule_tags(rule_id TEXT NOT NULL, group_id TEXT NOT NULL REFERENCES groups(id),
            key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY(rule_id, key))
        """,
        "CREATE INDEX IF NOT EXISTS ec2_rule_tags_group ON ec2_rule_tags(group_id)",
    ]


    /// Runs `body` as one write transaction (a verb: with PostgreSQL its fan-out is appended to
    /// the hosts' change logs before COMMIT). Any error `body` throws rolls everything back and
    /// is rethrown as it was. `body` may run more than once (PostgreSQL serialization retries).
    public func ec2Change<T>(_ body: (EC2Transaction) throws -> (T, [Delivery])) throws -> (T, [Delivery]) {
        var value: T?
        var failure: (any Error)?
        do {
            let deliveries = try verb { () throws(StoreError) -> [Delivery] in
                failure = nil
                do {
                    let (v, d) = try body(EC2Transaction(self))
                    value = v
                    return d
                } catch let e as StoreError {
                    throw e
                } catch {
                    failure = error
                    throw StoreError(.invalid, "rolled back")
                }
            }
            return (value!, deliveries)
        } catch {
            if let failure { throw failure }
            throw error
        }
    }

    /// Runs `body` in one read transaction (one snapshot).
    public func ec2Read<T>(_ body: (EC2Transaction) throws -> T) throws -> T {
        var value: T?
        var failure: (any Error)?
        do {
            try reading { () throws(StoreError) in
                do { value = try body(EC2Transaction(self)) } catch let e as StoreError { throw e } catch {
                    failure = error
                    throw StoreError(.invalid, "read failed")
                }
            }
            return value!
        } catch {
            if let failure { throw failure }
            throw error
        }
    }
}

/// A VPC: the namespace of security groups.
public struct EC2VPC: Hashable, Sendable {
    public var id: String
    public var account: String
    public var region: String
    public var cidr: String
    public var isDefault: Bool
    public init(id: String, account: String, region: String, cidr: String, isDefault: Bool) {
        self.id = id
        self.account = account
        self.region = region
        self.cidr = cidr
        self.isDefault = isDefault
    }
}

/// A security group as the EC2 API sees it.
public struct EC2Group: Hashable, Sendable {
    public var id: String
    public var name: String
    public var description: String
    public var vpc: EC2VPC
    /// The contract's rules, each with its `sgr-…` id.
    public var rules: [Rule]
    /// Rule id → description (rules without one are absent).
    public var ruleDescriptions: [String: String]
    public var tags: [String: String]
    /// Rule id → its tags (rules without tags are absent).
    public var ruleTags: [String: [String: String]] = [:]
}

/// The calls of one EC2 transaction (see `SQLStore.ec2Change`). Valid only inside its body.
public struct EC2Transaction {
    let store: SQLStore
    init(_ store: SQLStore) { self.store = store }
    var db: any SQLConnection { store.db }

    // MARK: VPCs

    func vpcs(_ whereClause: String, _ args: [SQLValue]) throws(StoreError) -> [EC2VPC] {
        try db.query("SELECT id, account, region, cidr, is_default FROM ec2_vpcs " + whereClause, args).map { r in
            EC2VPC(id: r[0] ?? "", account: r[1] ?? "", region: r[2] ?? "", cidr: r[3] ?? "", isDefault: r[4] == "1")
        }
    }

    public func defaultVPC(account: String, region: String) throws(StoreError) -> EC2VPC? {
        try vpcs("WHERE account = ? AND region = ? AND is_default = 1", [.text(account), .text(region)]).first
    }

    public func vpc(_ id: String) throws(StoreError) -> EC2VPC? {
        try vpcs("WHERE id = ?", [.text(id)]).first
    }

    public func insertVPC(_ v: EC2VPC) throws(StoreError) {
        try db.run("INSERT INTO ec2_vpcs(id, account, region, cidr, is_default) VALUES (?, ?, ?, ?, ?)",
                   .text(v.id), .text(v.account), .text(v.region), .text(v.cidr), .int(v.isDefault ? 1 : 0))
    }

    // MARK: groups

    /// The groups of every VPC of `account` in `region`, by id.
    public func groups(account: String, region: String) throws(StoreError) -> [EC2Group] {
        try loadGroups("g.vpc_id IN (SELECT id FROM ec2_vpcs WHERE account = ? AND region = ?)", [.text(account), .text(region)])
    }

    /// The account's groups in `region` among `ids` (those that exist; any order): a Describe
    /// of a few groups reads those groups, not all of them.
    public func groups(account: String, region: String, ids: [String]) throws(StoreError) -> [EC2Group] {
        guard !ids.isEmpty else { return [] }
        let marks = Array(repeating: "?", count: ids.count).joined(separator: ", ")
        return try loadGroups("g.id IN (\(marks)) AND g.vpc_id IN (SELECT id FROM ec2_vpcs WHERE account = ? AND region = ?)",
                              ids.map { .text($0) } + [.text(account), .text(region)])
    }

    /// The groups of `vpc` named among `names` (those that exist).
    public func groups(vpc: String, names: [String]) throws(StoreError) -> [EC2Group] {
        guard !names.isEmpty else { return [] }
        let marks = Array(repeating: "?", count: names.count).joined(separator: ", ")
        return try loadGroups("g.vpc_id = ? AND g.name IN (\(marks))", [.text(vpc)] + names.map { .text($0) })
    }

    public func group(_ id: String) throws(StoreError) -> EC2Group? {
        try loadGroups("g.id = ?", [.text(id)]).first
    }

    /// The groups `condition` (on `ec2_groups g`) selects, by id, in three statements however
    /// many groups (each statement is a round trip to PostgreSQL: a Describe of 1,000 groups is
    /// not 5,000 of them, and a Describe of one group is three): the groups with their rules,
    /// their VPCs, and their descriptions and tags together.
    private func loadGroups(_ condition: String, _ args: [SQLValue]) throws(StoreError) -> [EC2Group] {
        let rows = try db.query("""
            SELECT g.id, g.name, g.vpc_id, groups.description, groups.rules, \(store.dialect.groupRefsColumn)
            FROM ec2_groups g JOIN groups ON groups.id = g.id WHERE \(condition) ORDER BY g.id
            """, args)
        if rows.isEmpty { return [] }
        let selected = "SELECT g.id FROM ec2_groups g WHERE \(condition)"
        var vpcs: [String: EC2VPC] = [:]
        for v in try self.vpcs("WHERE id IN (SELECT g.vpc_id FROM ec2_groups g WHERE \(condition))", args) { vpcs[v.id] = v }
        var descriptions: [String: [String: String]] = [:]
        var tags: [String: [String: String]] = [:]
        var ruleTags: [String: [String: [String: String]]] = [:]
        let metadata = """
            SELECT 'd', group_id, rule_id, description, NULL FROM ec2_rule_descriptions WHERE group_id IN (\(selected))
            UNION ALL SELECT 't', resource, key, value, NULL FROM ec2_tags WHERE resource IN (\(selected))
            UNION ALL SELECT 'r', group_id, rule_id, key, value FROM ec2_rule_tags WHERE group_id IN (\(selected))
            """
        for r in try db.query(metadata, args + args + args) {
            guard let g = r[1], let k = r[2], let v = r[3] else { continue }
            switch r[0] {
            case "d": descriptions[g, default: [:]][k] = v
            case "t": tags[g, default: [:]][k] = v
            default: if let value = r[4] { ruleTags[g, default: [:]][k, default: [:]][v] = value }
            }
        }
        var groups: [EC2Group] = []
        for r in rows {
            guard let id = r[0], let name = r[1], let vpc = r[2].flatMap({ vpcs[$0] }) else { continue }
            let rules = try SQLStore.rules(r[4], references: r[5], group: id)
            groups.append(EC2Group(id: id, name: name, description: r[3] ?? "", vpc: vpc, rules: rules,
                                   ruleDescriptions: descriptions[id] ?? [:], tags: tags[id] ?? [:], ruleTags: ruleTags[id] ?? [:]))
        }
        return groups
    }

    /// The id of the group named `name` in `vpc`.
    public func groupID(vpc: String, name: String) throws(StoreError) -> String? {
        try db.query("SELECT id FROM ec2_groups WHERE vpc_id = ? AND name = ?", .text(vpc), .text(name)).first?[0] ?? nil
    }

    /// Creates the group (no rules: `setRules` adds them).
    public func insertGroup(id: String, vpc: String, name: String, description: String) throws(StoreError) {
        try db.run("INSERT INTO groups(id, description, rules) VALUES (?, ?, '[]')", .text(id), .text(description))
        try db.run("INSERT INTO ec2_groups(id, vpc_id, name) VALUES (?, ?, ?)", .text(id), .text(vpc), .text(name))
    }

    /// Up to three instances in the group.
    public func members(of group: String) throws(StoreError) -> [String] {
        try db.query("SELECT instance FROM instance_groups WHERE group_id = ? ORDER BY instance LIMIT 3", .text(group)).compactMap { $0[0] }
    }

    /// Up to three other groups whose rules reference `group`.
    public func referrers(of group: String) throws(StoreError) -> [String] {
        try db.query("SELECT group_id FROM group_refs WHERE ref = ? AND group_id <> ? ORDER BY group_id LIMIT 3", .text(group), .text(group)).compactMap { $0[0] }
    }

    /// Deletes the group with its metadata (the caller has checked `members` and `referrers`).
    public func deleteGroup(_ id: String) throws(StoreError) {
        try db.run("DELETE FROM ec2_rule_descriptions WHERE group_id = ?", .text(id))
        try db.run("DELETE FROM ec2_rule_tags WHERE group_id = ?", .text(id))
        try db.run("DELETE FROM ec2_tags WHERE resource = ?", .text(id))
        try db.run("DELETE FROM ec2_groups WHERE id = ?", .text(id))
        try db.run("DELETE FROM group_refs WHERE group_id = ?", .text(id))
        try db.run("DELETE FROM groups WHERE id = ?", .text(id))
    }

    /// Replaces the group's rules and their descriptions; returns the fan-out (the hosts of its
    /// members get `refresh_security_group_rules`). A referenced group must exist.
    /// `previous`: the group as read in this transaction, when the caller has it: what did not
    /// change (the groups referenced, the descriptions, the rules whose tags would go) is then
    /// not written again (an Authorize: three round trips fewer on PostgreSQL).
    public func setRules(_ group: String, _ rules: [Rule], descriptions: [String: String], previous: EC2Group? = nil) throws(StoreError) -> [Delivery] {
        let issues = rules.enumerated().flatMap { Validate.rule($1, at: "rules[\($0)]") }
        if !issues.isEmpty { throw StoreError(.invalid, issues.map(\.description).joined(separator: "; ")) }
        try store.writeRules(group, rules, previous: previous?.rules)
        let kept = Set(rules.compactMap(\.id))
        if previous?.ruleDescriptions != descriptions.filter({ kept.contains($0.key) }) {
            try setRuleDescriptions(group, rules, descriptions)
        }
        // The tags of rules that are gone go with them.
        if let previous, previous.rules.allSatisfy({ $0.id.map(kept.contains) ?? true }) { return try store.fanOut(rules: group).sorted() }
        for r in try db.query("SELECT DISTINCT rule_id FROM ec2_rule_tags WHERE group_id = ?", .text(group)) {
            if let id = r[0], !kept.contains(id) { try db.run("DELETE FROM ec2_rule_tags WHERE rule_id = ?", .text(id)) }
        }
        return try store.fanOut(rules: group).sorted()
    }

    /// Replaces the descriptions of the group's `rules` (ids absent from `descriptions` have
    /// none). Descriptions are not enforced: no fan-out.
    public func setRuleDescriptions(_ group: String, _ rules: [Rule], _ descriptions: [String: String]) throws(StoreError) {
        try db.run("DELETE FROM ec2_rule_descriptions WHERE group_id = ?", .text(group))
        for r in rules {
            if let id = r.id, let d = descriptions[id] {
                try db.run("INSERT INTO ec2_rule_descriptions(rule_id, group_id, description) VALUES (?, ?, ?)", .text(id), .text(group), .text(d))
            }
        }
    }

    // MARK: instances

    /// The hosts registered in the store, with how many instances each has.
    public func hostLoads() throws(StoreError) -> [(host: String, instances: Int)] {
        try db.query("SELECT h.name, (SELECT count(*) FROM instances i WHERE i.host = h.name) FROM hosts h ORDER BY h.name").compactMap { r in
            guard let h = r[0] else { return nil }
            return (h, Int(r[1] ?? "0") ?? 0)
        }
    }

    /// Adds an instance (the controller's `addInstance`, in this transaction) with its EC2 metadata.
    public func insertInstance(_ id: String, _ inst: Instance, _ meta: EC2Instance) throws(StoreError) -> [Delivery] {
        let out = try store.insertInstance(id, inst)
        try db.run("INSERT INTO ec2_instances(id, vpc_id, reservation, image, type, launched, client_token) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   .text(id), .text(meta.vpc.id), .text(meta.reservation), .text(meta.image), .text(meta.type), .text(meta.launched),
                   meta.clientToken.map { .text($0) } ?? .null)
        return out
    }

    /// Removes an instance and its metadata (`terminateInstance` keeps a snapshot).
    func deleteInstance(_ id: String) throws(StoreError) -> [Delivery] {
        try db.run("DELETE FROM ec2_tags WHERE resource = ?", .text(id))
        try db.run("DELETE FROM ec2_instances WHERE id = ?", .text(id))
        return try store.deleteInstance(id)
    }

    /// The live (running or stopped) instances of every VPC of `account` in `region`, by id
    /// (only the one with `id` when given).
    public func instances(account: String, region: String, id: String? = nil) throws(StoreError) -> [EC2Instance] {
        // Five statements however many instances (PostgreSQL: each is a round trip).
        let filter = "e.vpc_id IN (SELECT id FROM ec2_vpcs WHERE account = ? AND region = ?)" + (id == nil ? "" : " AND e.id = ?")
        let args: [SQLValue] = [.text(account), .text(region)] + (id.map { [.text($0)] } ?? [])
        let rows = try db.query("SELECT e.id, e.vpc_id, e.reservation, e.image, e.type, e.launched, e.client_token FROM ec2_instances e WHERE \(filter) ORDER BY e.id", args)
        if rows.isEmpty { return [] }
        let selected = "SELECT e.id FROM ec2_instances e WHERE \(filter)"
        var vpcs: [String: EC2VPC] = [:]
        for v in try self.vpcs("WHERE account = ? AND region = ?", [.text(account), .text(region)]) { vpcs[v.id] = v }
        let records = try store.records("WHERE i.id IN (\(selected))", args)
        var states: [String: EC2InstanceState] = [:]
        for r in try db.query("SELECT id, state FROM ec2_instance_states WHERE id IN (\(selected))", args) {
            if let i = r[0], let s = r[1].flatMap(EC2InstanceState.init(rawValue:)) { states[i] = s }
        }
        return rows.compactMap { r in
            guard let id = r[0], let vpc = r[1].flatMap({ vpcs[$0] }), let record = records[id] else { return nil }
            return EC2Instance(id: id, vpc: vpc, reservation: r[2] ?? "", image: r[3] ?? "", type: r[4] ?? "", launched: r[5] ?? "",
                               clientToken: r[6], record: record, state: states[id] ?? .running)
        }
    }

    /// Every address used by an instance of `vpc`.
    public func addresses(vpc: String) throws(StoreError) -> Set<IPAddress> {
        try addresses("SELECT i.ips FROM instances i JOIN ec2_instances e ON e.id = i.id WHERE e.vpc_id = ?", [.text(vpc)])
    }

    /// The addresses in the `ips` column (comma-separated) of the rows `query` selects.
    func addresses(_ query: String, _ args: [SQLValue]) throws(StoreError) -> Set<IPAddress> {
        var out = Set<IPAddress>()
        for r in try db.query(query, args) {
            for t in (r[0] ?? "").split(separator: ",") { if let a = IPAddress(String(t)) { out.insert(a) } }
        }
        return out
    }

    // MARK: tags

    public func tags(_ resource: String) throws(StoreError) -> [String: String] {
        var out: [String: String] = [:]
        for r in try db.query("SELECT key, value FROM ec2_tags WHERE resource = ?", .text(resource)) {
            if let k = r[0], let v = r[1] { out[k] = v }
        }
        return out
    }

    public func setTag(_ resource: String, key: String, value: String) throws(StoreError) {
        try db.run("INSERT INTO ec2_tags(resource, key, value) VALUES (?, ?, ?) ON CONFLICT(resource, key) DO UPDATE SET value = excluded.value",
                   .text(resource), .text(key), .text(value))
    }

    public func deleteTag(_ resource: String, key: String) throws(StoreError) {
        try db.run("DELETE FROM ec2_tags WHERE resource = ? AND key = ?", .text(resource), .text(key))
    }

    /// The tags of the rule `rule` (an `sgr-` id).
    public func ruleTags(_ rule: String) throws(StoreError) -> [String: String] {
        var out: [String: String] = [:]
        for r in try db.query("SELECT key, value FROM ec2_rule_tags WHERE rule_id = ?", .text(rule)) {
            if let k = r[0], let v = r[1] { out[k] = v }
        }
        return out
    }

    /// Sets a tag of the rule `rule` of `group`.
    public func setRuleTag(_ rule: String, group: String, key: String, value: String) throws(StoreError) {
        try db.run("""
            INSERT INTO ec2_rule_tags(rule_id, group_id, key, value) VALUES (?, ?, ?, ?)
            ON CONFLICT(rule_id, key) DO UPDATE SET value = excluded.value
            """, .text(rule), .text(group), .text(key), .text(value))
    }

    public func deleteRuleTag(_ rule: String, key: String) throws(StoreError) {
        try db.run("DELETE FROM ec2_rule_tags WHERE rule_id = ? AND key = ?", .text(rule), .text(key))
    }
}

/// An instance as the EC2 API sees it.
public struct EC2Instance: Hashable, Sendable {
    public var id: String
    public var vpc: EC2VPC
    public var reservation: String
    public var image: String
    public var type: String
    /// ISO 8601, UTC.
    public var launched: String
    /// RunInstances' idempotency token.
    public var clientToken: String?
    /// The contract's record: host, groups, address, interface, MAC (for a terminated
    /// instance: what it was).
    public var record: Instance?
    public var state: EC2InstanceState

    public init(id: String, vpc: EC2VPC, reservation: String, image: String, type: String, launched: String,
                clientToken: String? = nil, record: Instance? = nil, state: EC2InstanceState = .running) {
        self.state = state
        self.id = id
        self.vpc = vpc
        self.reservation = reservation
        self.image = image
        self.type = type
        self.launched = launched
        self.clientToken = clientToken
        self.record = record
    }
}
