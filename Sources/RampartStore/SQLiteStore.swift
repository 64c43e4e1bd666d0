import Foundation
import RampartCore

/// The embedded store: one SQLite file (WAL mode, so the daemon reads while the CLI writes).
/// Every verb is one `BEGIN IMMEDIATE … COMMIT` transaction; the fan-out is computed with indexed
/// queries inside it, in time proportional to the answer. Nothing here is SQLite-specific but the
/// connection: the same schema and queries run on PostgreSQL.
public final class SQLiteStore: Store, @unchecked Sendable {
    public let path: String
    private let db: SQLiteConnection
    private let lock = NSLock()

    public static let schema = """
        CREATE TABLE IF NOT EXISTS hosts(name TEXT PRIMARY KEY);
        CREATE TABLE IF NOT EXISTS groups(id TEXT PRIMARY KEY, description TEXT, rules TEXT NOT NULL DEFAULT '[]');
        CREATE TABLE IF NOT EXISTS group_refs(group_id TEXT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
            ref TEXT NOT NULL REFERENCES groups(id), PRIMARY KEY(group_id, ref));
        CREATE INDEX IF NOT EXISTS group_refs_ref ON group_refs(ref);
        CREATE TABLE IF NOT EXISTS instances(id TEXT PRIMARY KEY, host TEXT NOT NULL REFERENCES hosts(name),
            ips TEXT NOT NULL, interface TEXT, mac TEXT);
        CREATE INDEX IF NOT EXISTS instances_host ON instances(host);
        CREATE TABLE IF NOT EXISTS instance_groups(instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
            position INTEGER NOT NULL, group_id TEXT NOT NULL REFERENCES groups(id), PRIMARY KEY(instance, position));
        CREATE INDEX IF NOT EXISTS instance_groups_group ON instance_groups(group_id);
        """

    /// Opens (creating if needed) the store at `path`; its directory is created too.
    public init(path: String) throws(StoreError) {
        self.path = path
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        db = try SQLiteConnection(path: path)
        try db.exec("PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;")
        try db.exec(Self.schema)
    }

    private func locked<T>(_ body: () throws(StoreError) -> T) throws(StoreError) -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    /// One write transaction.
    private func transaction<T>(_ body: () throws(StoreError) -> T) throws(StoreError) -> T {
        try locked { () throws(StoreError) -> T in
            try db.exec("BEGIN IMMEDIATE")
            do throws(StoreError) {
                let r = try body()
                try db.exec("COMMIT")
                return r
            } catch {
                try? db.exec("ROLLBACK")
                throw error
            }
        }
    }

    // MARK: reads

    private static let recordColumns = """
        SELECT i.id, i.host, i.ips, i.interface, i.mac,
          (SELECT group_concat(group_id, ',') FROM (SELECT group_id FROM instance_groups WHERE instance = i.id ORDER BY position))
        FROM instances i
        """

    private func records(_ whereClause: String, _ args: [SQLiteConnection.Value]) throws(StoreError) -> [String: Instance] {
        var out: [String: Instance] = [:]
        for row in try db.query(Self.recordColumns + " " + whereClause, args) {
            guard let id = row[0], let host = row[1], let ipText = row[2] else { continue }
            let ips = ipText.split(separator: ",").compactMap { IPAddress(String($0)) }
            let groups = (row[5] ?? "").split(separator: ",").map(String.init)
            out[id] = Instance(host: host, groups: groups, ips: ips, interface: row[3], mac: row[4].flatMap { MACAddress($0) })
        }
        return out
    }

    private func groupRow(_ id: String) throws(StoreError) -> Group? {
        guard let row = try db.query("SELECT description, rules FROM groups WHERE id = ?", .text(id)).first else { return nil }
        let refs = try db.query("SELECT ref FROM group_refs WHERE group_id = ?", .text(id)).compactMap { $0[0] }
        let rules = try RulesCodec.decode(row[1] ?? "[]", group: id, references: refs)
        return Group(description: row[0], rules: rules)
    }

    public func group(_ id: String) throws(StoreError) -> Group? {
        try locked { () throws(StoreError) in try groupRow(id) }
    }

    public func groupExists(_ id: String) throws(StoreError) -> Bool {
        try locked { () throws(StoreError) in try !db.query("SELECT 1 FROM groups WHERE id = ?", .text(id)).isEmpty }
    }

    public func instance(_ id: String) throws(StoreError) -> Instance? {
        try locked { () throws(StoreError) in try records("WHERE i.id = ?", [.text(id)])[id] }
    }

    public func memberRecords(of group: String) throws(StoreError) -> [String: Instance] {
        try locked { () throws(StoreError) in
            try records("WHERE i.id IN (SELECT instance FROM instance_groups WHERE group_id = ?)", [.text(group)])
        }
    }

    public func hosts() throws(StoreError) -> [String] {
        try locked { () throws(StoreError) in try db.query("SELECT name FROM hosts ORDER BY name").compactMap { $0[0] } }
    }

    /// The spec's document for `host`: its instances and their groups (with rules); every group
    /// those rules reference, and every instance elsewhere that is a member of one. A group that
    /// is only referenced (no member here) is listed without its rules, which nothing here
    /// enforces; instances elsewhere list only the groups of the document, without interface or MAC.
    public func document(forHost host: String) throws(StoreError) -> Document {
        try locked { () throws(StoreError) in try documentUnlocked(forHost: host) }
    }

    private func documentUnlocked(forHost host: String) throws(StoreError) -> Document {
        let local = try records("WHERE i.host = ?", [.text(host)])
        let localGroupsSQL = "SELECT DISTINCT ig.group_id FROM instance_groups ig JOIN instances j ON j.id = ig.instance WHERE j.host = ?"
        let localGroups = try db.query(localGroupsSQL, .text(host)).compactMap { $0[0] }
        let refsSQL = "SELECT DISTINCT ref FROM group_refs WHERE group_id IN (\(localGroupsSQL))"
        let refs = try db.query(refsSQL, .text(host)).compactMap { $0[0] }
        var groups: [String: Group] = [:]
        for g in localGroups { groups[g] = try groupRow(g) ?? Group() }
        for r in refs where groups[r] == nil { groups[r] = Group() }
        let remote = try records("WHERE i.host <> ? AND i.id IN (SELECT instance FROM instance_groups WHERE group_id IN (\(refsSQL)))",
                                 [.text(host), .text(host)])
        var instances = local
        for (id, var inst) in remote {
            inst.groups = inst.groups.filter { groups[$0] != nil }
            inst.interface = nil
            inst.mac = nil
            instances[id] = inst
        }
        return Document(host: host, groups: groups, instances: instances)
    }

    // MARK: fan-out

    private static let rulesFanOut = "SELECT DISTINCT i.host FROM instance_groups ig JOIN instances i ON i.id = ig.instance WHERE ig.group_id = ? ORDER BY 1"
    private static let membersFanOut = """
        SELECT DISTINCT i.host FROM group_refs r JOIN instance_groups ig ON ig.group_id = r.group_id
        JOIN instances i ON i.id = ig.instance WHERE r.ref = ? ORDER BY 1
        """

    public func hostsForRulesRefresh(_ group: String) throws(StoreError) -> [String] {
        try locked { () throws(StoreError) in try db.query(Self.rulesFanOut, .text(group)).compactMap { $0[0] } }
    }

    public func hostsForMembersRefresh(_ group: String) throws(StoreError) -> [String] {
        try locked { () throws(StoreError) in try db.query(Self.membersFanOut, .text(group)).compactMap { $0[0] } }
    }

    private func fanOut(members groups: some Sequence<String>) throws(StoreError) -> Set<Delivery> {
        var out = Set<Delivery>()
        for g in groups {
            for h in try db.query(Self.membersFanOut, .text(g)).compactMap({ $0[0] }) { out.insert(Delivery(host: h, refresh: .members(g))) }
        }
        return out
    }

    private func fanOut(rules group: String) throws(StoreError) -> Set<Delivery> {
        Set(try db.query(Self.rulesFanOut, .text(group)).compactMap { $0[0] }.map { Delivery(host: $0, refresh: .rules(group)) })
    }

    // MARK: checks

    private func requireGroup(_ id: String) throws(StoreError) {
        if try db.query("SELECT 1 FROM groups WHERE id = ?", .text(id)).isEmpty { throw StoreError(.notFound, "unknown group \(id)") }
    }

    private func checkID(_ id: String, _ what: String) throws(StoreError) {
        let issues = Document(host: "-", groups: [id: Group()]).issues()
        if !issues.isEmpty { throw StoreError(.invalid, "invalid \(what) id \(jsonString(id)): " + issues.map(\.reason).joined(separator: "; ")) }
    }

    /// The host's document must stay valid (unique interfaces and addresses, …): checked after
    /// the change, inside the transaction, which a failure rolls back.
    private func validateHost(_ host: String) throws(StoreError) {
        let doc = try documentUnlocked(forHost: host)
        let issues = doc.issues()
        if !issues.isEmpty { throw StoreError(.invalid, "host \(host) would be invalid:\n  " + issues.map(\.description).joined(separator: "\n  ")) }
    }

    // MARK: verbs

    public func createGroup(_ id: String, description: String?) throws(StoreError) -> [Delivery] {
        try checkID(id, "group")
        if let d = description {
            let issues = Document(host: "-", groups: [id: Group(description: d)]).issues()
            if !issues.isEmpty { throw StoreError(.invalid, issues.map(\.description).joined(separator: "; ")) }
        }
        return try transaction { () throws(StoreError) in
            if try !db.query("SELECT 1 FROM groups WHERE id = ?", .text(id)).isEmpty { throw StoreError(.conflict, "group \(id) exists") }
            try db.run("INSERT INTO groups(id, description, rules) VALUES (?, ?, '[]')", .text(id), description.map { .text($0) } ?? .null)
            return []
        }
    }

    public func deleteGroup(_ id: String) throws(StoreError) -> [Delivery] {
        try transaction { () throws(StoreError) in
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

    private func writeRules(_ group: String, _ rules: [Rule]) throws(StoreError) {
        try db.run("UPDATE groups SET rules = ? WHERE id = ?", .text(RulesCodec.encode(rules)), .text(group))
        try db.run("DELETE FROM group_refs WHERE group_id = ?", .text(group))
        for r in rules {
            if case .group(let ref) = r.remote {
                try requireGroup(ref)
                try db.run("INSERT OR IGNORE INTO group_refs(group_id, ref) VALUES (?, ?)", .text(group), .text(ref))
            }
        }
    }

    public func authorize(group: String, rule: Rule) throws(StoreError) -> [Delivery] {
        try transaction { () throws(StoreError) in
            try requireGroup(group)
            guard var g = try groupRow(group) else { throw StoreError(.notFound, "unknown group \(group)") }
            var bare = rule
            bare.id = nil
            if g.rules.contains(where: { var o = $0; o.id = nil; return o == bare }) {
                throw StoreError(.conflict, "group \(group) already has this rule")
            }
            if let id = rule.id, g.rules.contains(where: { $0.id == id }) { throw StoreError(.conflict, "group \(group) already has a rule with id \(id)") }
            g.rules.append(rule)
            try writeRules(group, g.rules)
            return try fanOut(rules: group).sorted()
        }
    }

    public func revoke(group: String, rule: Rule?, id: String?) throws(StoreError) -> [Delivery] {
        try transaction { () throws(StoreError) in
            guard var g = try groupRow(group) else { throw StoreError(.notFound, "unknown group \(group)") }
            let before = g.rules.count
            if let id { g.rules.removeAll { $0.id == id } }
            if let rule {
                var bare = rule
                bare.id = nil
                g.rules.removeAll { var o = $0; o.id = nil; return o == bare }
            }
            if g.rules.count == before { throw StoreError(.notFound, "group \(group) has no such rule") }
            try writeRules(group, g.rules)
            return try fanOut(rules: group).sorted()
        }
    }

    private func writeInstance(_ id: String, _ inst: Instance) throws(StoreError) {
        try db.run("INSERT OR IGNORE INTO hosts(name) VALUES (?)", .text(inst.host))
        for g in inst.groups { try requireGroup(g) }
        try db.run("DELETE FROM instance_groups WHERE instance = ?", .text(id))
        try db.run("INSERT OR REPLACE INTO instances(id, host, ips, interface, mac) VALUES (?, ?, ?, ?, ?)",
                   .text(id), .text(inst.host), .text(inst.ips.map(\.description).joined(separator: ",")),
                   inst.interface.map { .text($0) } ?? .null, inst.mac.map { .text($0.description) } ?? .null)
        var seen = Set<String>()
        for (i, g) in inst.groups.enumerated() where seen.insert(g).inserted {
            try db.run("INSERT INTO instance_groups(instance, position, group_id) VALUES (?, ?, ?)", .text(id), .int(Int64(i)), .text(g))
        }
    }

    public func addInstance(_ id: String, _ inst: Instance) throws(StoreError) -> [Delivery] {
        try checkID(id, "instance")
        return try transaction { () throws(StoreError) in
            if try !records("WHERE i.id = ?", [.text(id)]).isEmpty { throw StoreError(.conflict, "instance \(id) exists") }
            try writeInstance(id, inst)
            try validateHost(inst.host)
            var out = try fanOut(members: inst.groups)
            out.insert(Delivery(host: inst.host, refresh: .instance(id)))
            return out.sorted()
        }
    }

    public func removeInstance(_ id: String) throws(StoreError) -> [Delivery] {
        try transaction { () throws(StoreError) in
            guard let inst = try records("WHERE i.id = ?", [.text(id)])[id] else { throw StoreError(.notFound, "unknown instance \(id)") }
            var out = try fanOut(members: inst.groups)
            try db.run("DELETE FROM instance_groups WHERE instance = ?", .text(id))
            try db.run("DELETE FROM instances WHERE id = ?", .text(id))
            out.formUnion(try fanOut(members: inst.groups))
            out.insert(Delivery(host: inst.host, refresh: .instance(id)))
            return out.sorted()
        }
    }

    public func setGroups(instance id: String, groups: [String]) throws(StoreError) -> [Delivery] {
        try transaction { () throws(StoreError) in
            guard var inst = try records("WHERE i.id = ?", [.text(id)])[id] else { throw StoreError(.notFound, "unknown instance \(id)") }
            let changed = Set(inst.groups).symmetricDifference(groups)
            var out = try fanOut(members: changed)
            inst.groups = groups
            try writeInstance(id, inst)
            try validateHost(inst.host)
            out.formUnion(try fanOut(members: changed))
            out.insert(Delivery(host: inst.host, refresh: .instance(id)))
            return out.sorted()
        }
    }

    /// Upserts every group (rules replaced) and instance of a valid document. Every host that
    /// has an instance in the store afterwards and is touched by the document gets a whole reload.
    public func importDocument(_ document: Document) throws(StoreError) -> [Delivery] {
        do { try document.validate() } catch { throw StoreError(.invalid, error.description) }
        return try transaction { () throws(StoreError) in
            for id in document.groups.keys.sorted() {
                let g = document.groups[id]!
                try db.run("INSERT INTO groups(id, description, rules) VALUES (?, ?, '[]') ON CONFLICT(id) DO UPDATE SET description = excluded.description",
                           .text(id), g.description.map { .text($0) } ?? .null)
            }
            for id in document.groups.keys.sorted() { try writeRules(id, document.groups[id]!.rules) }
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
            for h in hosts { out.insert(Delivery(host: h, refresh: .host)) }
            return out.sorted()
        }
    }
}
