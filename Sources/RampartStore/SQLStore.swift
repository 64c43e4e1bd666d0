import Foundation
import RampartCore

/// The store's one body of SQL, over SQLite (`SQLiteStore`, the embedded default) or PostgreSQL
/// (`PostgresStore`, a cloud's shared store). Every verb is one write transaction; the fan-out
/// is computed with indexed queries inside it, in time proportional to the answer. Where the
/// dialect keeps a change log (PostgreSQL), the same transaction appends the fan-out to each
/// host's log (`ChangeLog.swift`). Calls are serialized on the one connection.
public class SQLStore: Store, @unchecked Sendable {
    let db: any SQLConnection
    let dialect: SQLDialect
    private let lock = NSLock()
    /// Members changes check the host's whole document (`validateHost`) instead of their
    /// instance (`validateMember`): for the test that runs the same changes both ways.
    var checksWholeHost = false

    /// The tables of the first schema: a database without them is not a Rampart store.
    public static let tables = ["hosts", "groups", "group_refs", "instances", "instance_groups"]

    /// The first schema, in the SQL both databases accept.
    static let schema = [
        "CREATE TABLE IF NOT EXISTS hosts(name TEXT PRIMARY KEY)",
        "CREATE TABLE IF NOT EXISTS groups(id TEXT PRIMARY KEY, description TEXT, rules TEXT NOT NULL DEFAULT '[]')",
        """
        CREATE TABLE IF NOT EXISTS group_refs(group_id TEXT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
            ref TEXT NOT NULL REFERENCES groups(id), PRIMARY KEY(group_id, ref))
        """,
        "CREATE INDEX IF NOT EXISTS group_refs_ref ON group_refs(ref)",
        """
        CREATE TABLE IF NOT EXISTS instances(id TEXT PRIMARY KEY, host TEXT NOT NULL REFERENCES hosts(name),
            ips TEXT NOT NULL, interface TEXT, mac TEXT)
        """,
        "CREATE INDEX IF NOT EXISTS instances_host ON instances(host)",
        """
        CREATE TABLE IF NOT EXISTS instance_groups(instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
            position INTEGER NOT NULL, group_id TEXT NOT NULL REFERENCES groups(id), PRIMARY KEY(instance, position))
        """,
        "CREATE INDEX IF NOT EXISTS instance_groups_group ON instance_groups(group_id)",
    ]

    /// Tables added after the first schema. SQLite creates them on every open, so that a store
    /// written by an earlier version gains them (an addition, never a change of what is there).
    /// `host_guards`: each host's `guarded_prefixes` (contract rule 9), in document order.
    /// `ec2Schema`, `ec2LifecycleSchema`: the EC2 API's metadata (SQLStore+EC2.swift).
    static let additions = guardsSchema + ec2Schema + ec2LifecycleSchema

    static let guardsSchema = [
        """
        CREATE TABLE IF NOT EXISTS host_guards(host TEXT NOT NULL REFERENCES hosts(name), position INTEGER NOT NULL,
            prefix TEXT NOT NULL, PRIMARY KEY(host, position))
        """,
    ]

    init(db: any SQLConnection, dialect: SQLDialect) {
        self.db = db
        self.dialect = dialect
    }

    /// What a store checks before each use of its connection (the SQLite store: that its file
    /// was not replaced); nothing here.
    func checkBeforeUse() throws(StoreError) {}

    /// Every use of the connection: serialized, after `checkBeforeUse`.
    func locked<T>(_ body: () throws(StoreError) -> T) throws(StoreError) -> T {
        lock.lock()
        defer { lock.unlock() }
        try checkBeforeUse()
        return try body()
    }

    /// One write transaction.
    func transaction<T>(_ body: () throws(StoreError) -> T) throws(StoreError) -> T {
        try inTransaction(dialect.beginWrite, body)
    }

    /// A verb: one write transaction whose fan-out is appended to the hosts' change logs (where
    /// the dialect keeps them) before COMMIT; the deliveries come back with their log positions.
    func verb(_ body: () throws(StoreError) -> [Delivery]) throws(StoreError) -> [Delivery] {
        try transaction { () throws(StoreError) -> [Delivery] in
            let deliveries = try body()
            return dialect.keepsChangeLog ? try appendToChangeLog(deliveries) : deliveries
        }
    }

    /// One read transaction: every statement of `body` sees the same snapshot (SQLite's WAL,
    /// PostgreSQL's repeatable read: writers committing meanwhile are not seen), so a document
    /// is never assembled from two states.
    func reading<T>(_ body: () throws(StoreError) -> T) throws(StoreError) -> T {
        try inTransaction(dialect.beginRead, body)
    }

    /// How long a transaction that keeps losing serialization races (PostgreSQL's SQLSTATE
    /// 40001, a deadlock, 40P01, or a full lock table, 53200: `StoreError.isTransientConflict`)
    /// is run again before the error is returned.
    static let serializationRetrySeconds = 30.0

    /// `body` between `begin` and COMMIT, rolled back if it throws; run again (from the start:
    /// the body only reads and writes the database) when PostgreSQL reports that it conflicted
    /// with a concurrent transaction, after a random pause that doubles each time (up to 50 ms),
    /// so that the contenders spread out instead of colliding again.
    func inTransaction<T>(_ begin: String, _ body: () throws(StoreError) -> T) throws(StoreError) -> T {
        try locked { () throws(StoreError) -> T in
            var attempt = 0
            let start = DispatchTime.now().uptimeNanoseconds
            while true {
                attempt += 1
                try db.exec(begin)
                do throws(StoreError) {
                    let r = try body()
                    try db.exec("COMMIT")
                    return r
                } catch {
                    if error.kind != .unavailable { try? db.exec("ROLLBACK") }
                    let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                    if error.isTransientConflict, elapsed < Self.serializationRetrySeconds {
                        let ceiling = min(50_000, 250 << min(attempt, 8))  // µs
                        usleep(UInt32.random(in: 0...UInt32(ceiling)))
                        continue
                    }
                    throw error
                }
            }
        }
    }

    // MARK: reads

    private var recordColumns: String {
        "SELECT i.id, i.host, i.ips, i.interface, i.mac, \(dialect.instanceGroupsColumn) FROM instances i"
    }

    /// Instance rows as the document's records. A value that does not parse (a corrupted row) is
    /// an error naming the row, never dropped: dropping a MAC or an address would disable that
    /// check for the instance. (What parses but breaks the spec is caught by validating the
    /// document.)
    func records(_ whereClause: String, _ args: [SQLValue]) throws(StoreError) -> [String: Instance] {
        var out: [String: Instance] = [:]
        for row in try db.query(recordColumns + " " + whereClause, args) {
            let (id, instance) = try Self.record(row)
            out[id] = instance
        }
        return out
    }

    /// One instance row (`recordColumns`: id, host, ips, interface, mac, groups) as a record.
    ///
    /// A daemon's members refresh parses every member of the group this way (a first sync, every
    /// instance of the host): the error texts are built only for an error, and the lists are
    /// split over their UTF-8 bytes (`commaFields`).
    static func record(_ row: [String?]) throws(StoreError) -> (id: String, instance: Instance) {
        guard row.count >= 6, let id = row[0] else { throw StoreError(.invalid, "store: an instance row has no id") }
        func path() -> String { "store: instances.\(id)" }
        guard let host = row[1] else { throw StoreError(.invalid, "\(path()).host: missing") }
        guard let ipText = row[2] else { throw StoreError(.invalid, "\(path()).ips: missing") }
        var ips: [IPAddress] = []
        for t in commaFields(ipText) {
            guard let a = IPAddress(String(t)) else { throw StoreError(.invalid, "\(path()).ips: \(jsonString(String(t))) is not an IP address") }
            ips.append(a)
        }
        var mac: MACAddress?
        if let m = row[4] {
            guard let x = MACAddress(m) else { throw StoreError(.invalid, "\(path()).mac: \(jsonString(m)) is not a MAC address") }
            mac = x
        }
        let groups = row[5].map { commaFields($0).map(String.init) } ?? []
        return (id, Instance(host: host, groups: groups, ips: ips, interface: row[3], mac: mac))
    }

    /// `text` split at every comma byte, empty fields kept (`""` is one empty field), as
    /// `split(separator: ",", omittingEmptySubsequences: false)` splits it, but over UTF-8
    /// bytes instead of `Character`s (so it also splits at a comma that a combining mark
    /// follows, where `split` would not; valid data has neither): `perf` put `Character`
    /// splitting (the lists' and the MAC address's) at nearly half of a member record's parse.
    static func commaFields(_ text: String) -> [Substring] {
        var out: [Substring] = []
        let utf8 = text.utf8
        var start = utf8.startIndex
        var i = start
        while i != utf8.endIndex {
            if utf8[i] == UInt8(ascii: ",") {
                out.append(Substring(utf8[start..<i]))
                start = utf8.index(after: i)
            }
            i = utf8.index(after: i)
        }
        out.append(Substring(utf8[start..<utf8.endIndex]))
        return out
    }

    func groupRow(_ id: String) throws(StoreError) -> Group? {
        try groupRows(where: "id = ?", [.text(id)])[id]
    }

    /// The groups `condition` (on `groups`) selects, with their rules decoded against their
    /// references: one statement however many groups (so one group is one round trip, and
    /// needs no transaction to be read whole).
    func groupRows(where condition: String, _ args: [SQLValue]) throws(StoreError) -> [String: Group] {
        var out: [String: Group] = [:]
        for row in try db.query("SELECT id, description, rules, \(dialect.groupRefsColumn) FROM groups WHERE \(condition)", args) {
            guard let id = row[0] else { continue }
            out[id] = Group(description: row[1], rules: try Self.rules(row[2], references: row[3], group: id))
        }
        return out
    }

    /// A group's rules from its row: the stored text and its references column
    /// (`dialect.groupRefsColumn`, comma-separated).
    static func rules(_ text: String?, references: String?, group: String) throws(StoreError) -> [Rule] {
        try RulesCodec.decode(text ?? "[]", group: group, references: references.map { $0.split(separator: ",").map(String.init) } ?? [])
    }

    /// The group's description and rules, or nil. One statement, consistent without a read
    /// transaction, whose BEGIN and COMMIT would be two more round trips of a daemon's rules refresh.
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

    /// A host is known once a verb registered it: an instance was ever added for it, or a
    /// document for it (or with an instance on it) was imported. Removing its last instance
    /// does not forget it.
    public func knowsHost(_ host: String) throws(StoreError) -> Bool {
        try locked { () throws(StoreError) in try !db.query("SELECT 1 FROM hosts WHERE name = ?", .text(host)).isEmpty }
    }

    /// The spec's document for `host`: its instances and their groups (with rules); every group
    /// those rules reference, and every instance elsewhere that is a member of one. A group that
    /// is only referenced (no member here) is listed without its rules, which nothing here
    /// enforces; instances elsewhere list only the groups of the document, without interface or MAC.
    /// Read in one transaction; a document that breaks the spec (a corrupted row) is an error.
    public func document(forHost host: String) throws(StoreError) -> Document {
        let doc = try reading { () throws(StoreError) in try documentUnlocked(forHost: host) }
        let issues = doc.issues()
        if !issues.isEmpty {
            throw StoreError(.invalid, "the store's document for \(host) is invalid:\n  " + issues.map(\.description).joined(separator: "\n  "))
        }
        return doc
    }

    /// The host's document as `rampart export` prints it, for `rampart import` to restore
    /// exactly (in this store or a fresh one): `document(forHost:)`, plus what it leaves out for
    /// the daemon's sake: the rules of groups only referenced here (and of the groups those
    /// reference, and of every group an instance listed belongs to), and the instances elsewhere
    /// in full (interface, MAC, all their groups). It compiles to the same kernel state: only
    /// groups with a member on the host are enforced.
    public func exportDocument(forHost host: String) throws(StoreError) -> Document {
        let doc = try reading { () throws(StoreError) -> Document in
            var doc = try documentUnlocked(forHost: host, full: true)
            var queue = Array(doc.groups.keys)
            for (_, i) in doc.instances { queue += i.groups }
            var done = Set<String>()
            while let g = queue.popLast() {
                guard done.insert(g).inserted else { continue }
                let grp = try groupRow(g) ?? Group()
                doc.groups[g] = grp
                for r in grp.rules { if case .group(let ref) = r.remote { queue.append(ref) } }
            }
            return doc
        }
        let issues = doc.issues()
        if !issues.isEmpty {
            throw StoreError(.invalid, "the store's document for \(host) is invalid:\n  " + issues.map(\.description).joined(separator: "\n  "))
        }
        return doc
    }

    func documentUnlocked(forHost host: String, full: Bool = false) throws(StoreError) -> Document {
        var guards: [String] = []
        for row in try db.query("SELECT prefix FROM host_guards WHERE host = ? ORDER BY position", .text(host)) {
            // Like any corrupted row: an error, never a prefix silently dropped (fail closed).
            guard let p = row[0] else { throw StoreError(.invalid, "store: host_guards of \(host): a prefix is missing") }
            guards.append(p)
        }
        let local = try records("WHERE i.host = ?", [.text(host)])
        // Which groups the host needs is the core's answer (HostProjection), shared with the
        // daemon; the queries here fetch them, a few statements whatever the host's size (each
        // is a round trip to a PostgreSQL server).
        let localGroupsSQL = "SELECT DISTINCT ig.group_id FROM instance_groups ig JOIN instances j ON j.id = ig.instance WHERE j.host = ?"
        let refsSQL = "SELECT DISTINCT ref FROM group_refs WHERE group_id IN (\(localGroupsSQL))"
        let fetched = try groupRows(where: "id IN (\(localGroupsSQL))", [.text(host)])
        var localGroups: [String: Group] = [:]
        // A group named by a membership or a reference but missing from `groups` (a corrupted
        // store) is an error, not an empty group: that would silently change what is allowed.
        for g in HostProjection.localGroups(of: local.values) {
            guard let row = fetched[g] else { throw StoreError(.invalid, "store: a member of host \(host) is in group \(jsonString(g)), which does not exist") }
            localGroups[g] = row
        }
        let refs = HostProjection.referencedGroups(by: localGroups.values)
        let existing = Set(try db.query("SELECT id FROM groups WHERE id IN (\(refsSQL))", .text(host)).compactMap { $0[0] })
        for r in refs.sorted() where localGroups[r] == nil && !existing.contains(r) {
            throw StoreError(.invalid, "store: a rule references group \(jsonString(r)), which does not exist")
        }
        // The members of the referenced groups, in one query: group_refs holds the references
        // of each group's rules (the rules are decoded against it), so it names `refs`.
        let remote = try records("WHERE i.host <> ? AND i.id IN (SELECT instance FROM instance_groups WHERE group_id IN (\(refsSQL)))",
                                 [.text(host), .text(host)])
        if full {
            let groups = HostProjection.groups(local: localGroups, referenced: refs)
            return Document(host: host, groups: groups, instances: local.merging(remote) { a, _ in a }, guardedPrefixes: guards)
        }
        return HostProjection.document(host: host, local: local, localGroups: localGroups, referenced: refs, remote: remote, guardedPrefixes: guards)
    }

    func writeGuards(_ host: String, _ prefixes: [String]) throws(StoreError) {
        try db.run("DELETE FROM host_guards WHERE host = ?", .text(host))
        for (i, p) in prefixes.enumerated() {
            try db.run("INSERT INTO host_guards(host, position, prefix) VALUES (?, ?, ?)", .text(host), .int(Int64(i)), .text(p))
        }
    }

    /// Sets a host's guarded interface-name prefixes (contract rule 9), registering the host if
    /// it is new. The host reloads its document (its four base chains change).
    public func setGuardedPrefixes(host: String, _ prefixes: [String]) throws(StoreError) -> [Delivery] {
        let issues = Validate.host(host, at: "host")
            + prefixes.enumerated().flatMap { Validate.guardedPrefix($1, at: "guarded_prefixes[\($0)]") }
        if !issues.isEmpty { throw StoreError(.invalid, issues.map(\.description).joined(separator: "; ")) }
        return try verb { () throws(StoreError) in
            try db.run("INSERT INTO hosts(name) VALUES (?) ON CONFLICT DO NOTHING", .text(host))
            try writeGuards(host, prefixes)
            return [Delivery(host: host, refresh: .host)]
        }
    }

    // MARK: fan-out

    static let rulesFanOut = "SELECT DISTINCT i.host FROM instance_groups ig JOIN instances i ON i.id = ig.instance WHERE ig.group_id = ? ORDER BY 1"
    static let membersFanOut = """
        SELECT DISTINCT i.host FROM group_refs r JOIN instance_groups ig ON ig.group_id = r.group_id
        JOIN instances i ON i.id = ig.instance WHERE r.ref = ? ORDER BY 1
        """

    public func hostsForRulesRefresh(_ group: String) throws(StoreError) -> [String] {
        try locked { () throws(StoreError) in try db.query(Self.rulesFanOut, .text(group)).compactMap { $0[0] } }
    }

    public func hostsForMembersRefresh(_ group: String) throws(StoreError) -> [String] {
        try locked { () throws(StoreError) in try db.query(Self.membersFanOut, .text(group)).compactMap { $0[0] } }
    }

    func fanOut(members groups: some Sequence<String>) throws(StoreError) -> Set<Delivery> {
        var out = Set<Delivery>()
        for g in groups {
            for h in try db.query(Self.membersFanOut, .text(g)).compactMap({ $0[0] }) { out.insert(Delivery(host: h, refresh: .members(g))) }
        }
        return out
    }

    func fanOut(rules group: String) throws(StoreError) -> Set<Delivery> {
        Set(try db.query(Self.rulesFanOut, .text(group)).compactMap { $0[0] }.map { Delivery(host: $0, refresh: .rules(group)) })
    }
}
