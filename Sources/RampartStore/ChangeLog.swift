import Foundation

/// One row of a host's change log: a refresh call, at its position in the host's sequence.
public struct LogEntry: Sendable, Equatable, CustomStringConvertible {
    public var sequence: Int64
    public var refresh: Refresh
    public init(sequence: Int64, refresh: Refresh) { self.sequence = sequence; self.refresh = refresh }
    public var description: String { "#\(sequence) \(refresh)" }
}

/// What a reader gets after its position.
public struct LogPage: Sendable, Equatable {
    /// The rows after the position asked for, in sequence order (at most the limit asked for).
    public var entries: [LogEntry]
    /// The host's last sequence number (0: nothing was ever logged for it).
    public var head: Int64
    /// The log was trimmed past the position asked for: rows are missing, so the reader must
    /// reload the host's whole document and continue from `head`.
    public var trimmed: Bool
    /// What the rows' refreshes will read, read with them (a store that can; nil otherwise).
    public var readAhead: ReadAhead?
    public init(entries: [LogEntry], head: Int64, trimmed: Bool, readAhead: ReadAhead? = nil) {
        self.entries = entries
        self.head = head
        self.trimmed = trimmed
        self.readAhead = readAhead
    }
}

/// A host's place in its log, as the controller sees it (`rampart changelog status`).
public struct LogProgress: Sendable, Equatable {
    public var host: String
    /// The last sequence number written for the host.
    public var head: Int64
    /// The last one its daemon recorded as applied (0: never).
    public var applied: Int64
    /// Rows after `applied` (sequence numbers have gaps: this is the count of rows).
    public var pending: Int
    /// When it recorded it, as the server's clock had it (ISO 8601), if ever.
    public var appliedAt: String?
}

/// The durable per-host change log: each verb's transaction appends, for every (host, refresh)
/// of its fan-out, a row with the host's next sequence number. A daemon applies its host's rows
/// in order and records the last one it applied; a controller can wait for that. The log is
/// the truth; how readers are woken (`ChangeWakeups`) is replaceable.
public protocol ChangeLog: AnyObject, Sendable {
    /// The host's rows after `sequence`, at most `limit` of them.
    func entries(host: String, after sequence: Int64, limit: Int) throws(StoreError) -> LogPage
    /// The same page, with what its refreshes will read (`LogPage.readAhead`) when it has at most
    /// `ahead` rows, if the store can read both at once; otherwise as `entries(host:after:limit:)`.
    func entries(host: String, after sequence: Int64, limit: Int, readingAhead ahead: Int) throws(StoreError) -> LogPage
    /// Records that the host's daemon applied everything through `sequence` (never moves back).
    func recordApplied(host: String, sequence: Int64) throws(StoreError)
    /// Each host's head and applied positions (the hosts asked for that the log knows).
    func progress(hosts: [String]?) throws(StoreError) -> [LogProgress]
    /// Deletes rows older than `maxAge` seconds and rows more than `keep` behind their host's
    /// head; returns how many went. Readers behind a trimmed row reload their document.
    func trim(maxAge: Int?, keep: Int?) throws(StoreError) -> Int
    /// Many hosts' rows at once, for a reader that serves many hosts (the relay, docs/relay.md):
    /// for each host, its rows after its position, at most `limit` per host (`limit` 0: only
    /// the heads). One page per host asked for.
    func entries(positions: [String: Int64], limit: Int) throws(StoreError) -> [String: LogPage]
    /// Records many hosts' applied positions at once (never moving one back): the relay's
    /// batched acknowledgements.
    func recordApplied(_ positions: [String: Int64]) throws(StoreError)
}

extension ChangeLog {
    /// No read-ahead: the page alone.
    public func entries(host: String, after sequence: Int64, limit: Int, readingAhead ahead: Int) throws(StoreError) -> LogPage {
        try entries(host: host, after: sequence, limit: limit)
    }

    /// One `entries(host:after:limit:)` per host (a store with a one-statement form overrides it).
    public func entries(positions: [String: Int64], limit: Int) throws(StoreError) -> [String: LogPage] {
        var pages: [String: LogPage] = [:]
        for (host, after) in positions { pages[host] = try entries(host: host, after: after, limit: limit) }
        return pages
    }

    /// One `recordApplied(host:sequence:)` per host.
    public func recordApplied(_ positions: [String: Int64]) throws(StoreError) {
        for (host, sequence) in positions.sorted(by: { $0.key < $1.key }) { try recordApplied(host: host, sequence: sequence) }
    }
}

/// Why a change-log reader was woken.
public enum Wakeup: Sendable, Equatable {
    /// Rows may have been appended for these hosts (nil: for any host).
    case appended(hosts: Set<String>?)
    /// The wake-up source is gone (connection lost): the reader must reconnect and catch up.
    case lost(String)
}

/// Wakes a change-log reader when its host's log may have grown. The direct mode is one
/// PostgreSQL LISTEN connection per daemon (`PostgresWakeups`); a relay tier replaces it without
/// changing the log. A missed wake-up costs latency, never a change: readers also poll.
public protocol ChangeWakeups: AnyObject, Sendable {
    /// Starts delivering wake-ups to `handler` (from any thread). Throws `.unavailable` if the
    /// source cannot be reached.
    func start(_ handler: @escaping @Sendable (Wakeup) -> Void) throws(StoreError)
    /// Stops; no wake-up is delivered afterwards.
    func stop()
}

/// A page that a wake-up source read for its reader as the wake-up came (`PrefetchingWakeups`).
public struct PrefetchedPage: Sendable {
    /// The page after `after`, as `ChangeLog.entries(host:after:limit:readingAhead:)` reads it.
    public var page: LogPage
    /// The position it was read after: the reader uses it only if that is still its own.
    public var after: Int64
    /// When the wake-up arrived and when the page did (`DispatchTime.uptimeNanoseconds`).
    public var notified: UInt64
    public var read: UInt64
    public init(page: LogPage, after: Int64, notified: UInt64, read: UInt64) {
        self.page = page; self.after = after; self.notified = notified; self.read = read
    }
}

/// A wake-up source that can read a sleeping reader's page itself, on its own connection, the
/// moment it hears that the reader's host has rows: the reader then wakes once, with the page,
/// instead of waking to send the read and again for its answer (the direct mode's
/// `PostgresWakeups`; a relay already streams the rows).
///
/// Only a shortcut: the page is the one the reader would have read (the same statement, on a
/// snapshot taken after the NOTIFY's commit), and whatever goes wrong ends in the usual path.
public protocol PrefetchingWakeups: ChangeWakeups {
    /// Arms one read for the next wake-up that names `host` (or every host): the source reads
    /// the host's page after `position` and hands it to `deliver` instead of waking the handler
    /// given to `start`; `deliver(nil)` when the read failed or took too long (the reader then
    /// reads itself). One read per arming; `disarm` or a new `arm` replaces it.
    func arm(host: String, after position: Int64, limit: Int, readingAhead: Int, deliver: @escaping @Sendable (PrefetchedPage?) -> Void)
    /// Withdraws an armed read that has not started.
    func disarm()
}

/// The NOTIFY payload of a verb, written by `rampart_log_append` (PostgresRoutines.swift): the
/// hosts whose logs grew, comma-separated, or `*` when the list would not fit (PostgreSQL's
/// payload limit is 8000 bytes). One channel for everything: PostgreSQL 15–18 wakes every
/// listening backend for every NOTIFY whatever its channel, so more channels would cost the same
/// server CPU and only lose the collapsing of duplicates.
///
/// Only a wake-up, never data: any role that can connect to the database can NOTIFY on any
/// channel (PostgreSQL checks no privilege), so a reader trusts nothing in a payload but "read
/// the log". A payload that carried the rows spared a relay its read per verb, and let a
/// hypervisor's read-only credentials forge rows that move other hosts' positions past real ones
/// (docs/relay.md, "Why the NOTIFY carries no rows").
public enum WakeupPayload {
    public static let channel = "rampart_changes"
    static let limit = 7900

    /// The hosts named, or nil for all (`*`, or a payload this version cannot read).
    public static func decode(_ payload: String) -> Set<String>? {
        if payload == "*" || payload.isEmpty { return nil }
        return Set(payload.split(separator: ",").map(String.init))
    }
}

extension SQLStore {
    /// The change log's tables (PostgreSQL's schema version 2, `PostgresStore`).
    /// `change_log`: the rows; `change_log_seq`: where their sequence numbers come from;
    /// `change_log_heads`: per host, the last sequence number trimmed away; `host_progress`:
    /// what each host's daemon applied (written by the daemon, so that the controller's writes
    /// and the daemons' never touch the same rows).
    static let changeLogSchema = [
        "CREATE SEQUENCE IF NOT EXISTS change_log_seq",
        """
        CREATE TABLE IF NOT EXISTS change_log(host TEXT NOT NULL REFERENCES hosts(name), seq BIGINT NOT NULL,
            refresh TEXT NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY(host, seq))
        """,
        "CREATE INDEX IF NOT EXISTS change_log_age ON change_log(committed_at)",
        """
        CREATE TABLE IF NOT EXISTS change_log_heads(host TEXT PRIMARY KEY REFERENCES hosts(name),
            trimmed_through BIGINT NOT NULL DEFAULT 0)
        """,
        """
        CREATE TABLE IF NOT EXISTS host_progress(host TEXT PRIMARY KEY REFERENCES hosts(name),
            applied_seq BIGINT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())
        """,
    ]

    /// The advisory-lock class of a host's log (the other key is the host name's hash).
    static let hostLockClass = 0x52_4C_4F_47  // "RLOG"

    /// Appends each delivery to its host's log, then notifies the readers; returns the
    /// deliveries with their sequence numbers. Runs inside the verb's transaction: the rows and
    /// the NOTIFY exist only if it commits.
    ///
    /// Why a global sequence and a lock per host, not a counter row per host: under serializable
    /// isolation two verbs updating one host's counter row conflict, and one is rolled back and
    /// run again; with many controllers and shared hosts that is most verbs. Instead, each host's
    /// rows are numbered from one sequence (no conflicts: `nextval` is outside transactions) while
    /// the verb holds the host's advisory lock, until COMMIT. So a host's numbers grow in commit
    /// order, and a reader that has applied through N never later meets a row below N. Numbers
    /// have gaps (other hosts' rows, rolled-back verbs); readers only need the order. Hosts are
    /// locked in name order (two verbs waiting for each other in a cycle would be a deadlock,
    /// which PostgreSQL breaks by aborting one: it is then run again).
    func appendToChangeLog(_ deliveries: [Delivery]) throws(StoreError) -> [Delivery] {
        guard !deliveries.isEmpty else { return [] }
        // One statement whatever the fan-out (each is a round trip to the server): the hosts'
        // locks, the NOTIFY (queued now, delivered at COMMIT, dropped by a rollback) and every
        // row, in `rampart_log_append` (PostgresRoutines.swift), which every writer of the log
        // goes through, so that all take the hosts' locks in one order.
        let order = deliveries.indices.sorted { deliveries[$0] < deliveries[$1] }
        let rows = try db.query("SELECT array_to_string(rampart_log_append(CAST(? AS text[]), CAST(? AS text[])), ',')",
                                .text(Self.arrayLiteral(order.map { deliveries[$0].host })),
                                .text(Self.arrayLiteral(order.map { deliveries[$0].refresh.logText })))
        let seqs = (rows.first?[0] ?? nil).map { $0.split(separator: ",").compactMap { Int64($0) } } ?? []
        guard seqs.count == order.count else { throw StoreError(.database, "store: \(seqs.count) change-log rows written for \(order.count) deliveries") }
        // In the order given: the rows were numbered in it.
        var out = deliveries
        for (k, i) in order.enumerated() { out[i].sequence = seqs[k] }
        return out
    }

    /// A PostgreSQL array literal of strings: every element quoted, `\` and `"` escaped.
    ///
    /// Built in one pass over UTF-8: this runs for every log read, ack write and append (a
    /// relay's read after a poll names every host it follows), and Foundation's
    /// `replacingOccurrences`, twice per element, was a third of a relay reader thread's time
    /// in a `perf` of `rampart-bench fleet`.
    static func arrayLiteral(_ items: [String]) -> String {
        var bytes: [UInt8] = [UInt8(ascii: "{")]
        bytes.reserveCapacity(items.reduce(2) { $0 + $1.utf8.count + 3 })
        for (i, item) in items.enumerated() {
            if i > 0 { bytes.append(UInt8(ascii: ",")) }
            bytes.append(UInt8(ascii: "\""))
            for b in item.utf8 {
                if b == UInt8(ascii: "\\") || b == UInt8(ascii: "\"") { bytes.append(UInt8(ascii: "\\")) }
                bytes.append(b)
            }
            bytes.append(UInt8(ascii: "\""))
        }
        bytes.append(UInt8(ascii: "}"))
        return String(decoding: bytes, as: UTF8.self)
    }

    /// One host's page: the many-host statement for one host (one round trip, where a read
    /// transaction of the head and the rows took four).
    func logEntries(host: String, after sequence: Int64, limit: Int) throws(StoreError) -> LogPage {
        try logEntries(positions: [host: sequence], limit: limit)[host] ?? LogPage(entries: [], head: 0, trimmed: false)
    }

    /// Several hosts' applied positions in one statement (one host: the daemon's own write).
    ///
    /// `durable: false` commits without waiting for the WAL flush (`synchronous_commit` off for
    /// this statement's transaction alone): 0.26 → 0.11 ms a write (pgbench, one client), on the
    /// path of every verb's `--wait`. For a daemon's own position only: should the server crash
    /// before the flush, the position reads older than the daemon's, and the daemon writes it
    /// again once it reconnects (`ChangeLogFollower`: it forgets what it recorded when the store
    /// was down). Nothing is lost meanwhile, a `--wait` only waits longer. The relay's
    /// acknowledgements stay durable: it does not write them again after a reconnect.
    func logRecordApplied(_ positions: [String: Int64], durable: Bool = true) throws(StoreError) {
        guard !positions.isEmpty else { return }
        // Rows in name order: two relays writing overlapping hosts lock them in the same order.
        let sorted = positions.sorted { $0.key < $1.key }
        // One statement, committed on its own (no BEGIN and COMMIT round trips): it is atomic,
        // and GREATEST keeps a position from moving back whatever order writers come in. A
        // position is never recorded past the host's head (its last row, or the last trimmed):
        // a position beyond it would stay forever under GREATEST, and every later `--wait` and
        // status would call the host up to date whatever it applied (one host's relay token was
        // enough: subscribe far ahead, then acknowledge that).
        // The statement is `rampart_record_applied` (PostgresRoutines.swift, schema version 8),
        // so that its plan keeps to the log's primary key.
        // set_config(…, true) lasts to the end of the statement's own transaction, whose COMMIT
        // it governs; the connection's other statements keep the server's setting.
        let sql = durable
            ? "SELECT rampart_record_applied(CAST(? AS text[]), CAST(? AS bigint[]))"
            : "SELECT set_config('synchronous_commit', 'off', true), rampart_record_applied(CAST(? AS text[]), CAST(? AS bigint[]))"
        try locked { () throws(StoreError) in
            try db.run(sql, .text(Self.arrayLiteral(sorted.map(\.key))), .text(Self.arrayLiteral(sorted.map { String($0.value) })))
        }
    }

    /// Several hosts' pages in one statement (the relay's read after a wake-up; a daemon's, for
    /// its host): per host, the rows after its position (at most `limit` each, from the primary
    /// key), its head (the last number, also when trimmed away) and whether the log was trimmed
    /// past the position, in which case no row is returned and the reader reloads. One
    /// statement (`rampart_log_read`, PostgresRoutines.swift) sees one snapshot, so the head,
    /// the trim mark and the rows agree without a read transaction (whose BEGIN and COMMIT would
    /// be two more round trips).
    func logEntries(positions: [String: Int64], limit: Int) throws(StoreError) -> [String: LogPage] {
        guard !positions.isEmpty else { return [:] }
        let hosts = positions.keys.sorted()
        let rows = try locked { () throws(StoreError) -> [[String?]] in
            try db.query("SELECT * FROM rampart_log_read(CAST(? AS text[]), CAST(? AS bigint[]), ?)",
                         [.text(Self.arrayLiteral(hosts)), .text(Self.arrayLiteral(hosts.map { String(positions[$0]!) })), .int(Int64(limit))])
        }
        return Self.logPages(rows, positions: positions)
    }

    /// `rampart_log_read`'s rows (host, head, trimmed through, sequence, refresh) as pages.
    static func logPages(_ rows: [[String?]], positions: [String: Int64]) -> [String: LogPage] {
        var pages: [String: LogPage] = [:]
        for row in rows {
            guard let host = row[0], let after = positions[host] else { continue }
            let head = Int64(row[1] ?? "0") ?? 0
            let trimmedThrough = Int64(row[2] ?? "0") ?? 0
            var page = pages[host] ?? LogPage(entries: [], head: head, trimmed: after < trimmedThrough)
            if !page.trimmed, let seqText = row[3] {
                if let s = Int64(seqText), let text = row[4], let r = Refresh(logText: text) {
                    page.entries.append(LogEntry(sequence: s, refresh: r))
                } else {
                    // A row this version cannot read: the whole document says everything it could.
                    page = LogPage(entries: [], head: head, trimmed: true)
                }
            }
            pages[host] = page
        }
        return pages
    }

    func logProgress(hosts: [String]?) throws(StoreError) -> [LogProgress] {
        let sql = """
            SELECT h.name, GREATEST(COALESCE((SELECT max(seq) FROM change_log l WHERE l.host = h.name), 0), COALESCE(c.trimmed_through, 0)),
                   COALESCE(p.applied_seq, 0), to_char(p.applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   (SELECT count(*) FROM change_log l WHERE l.host = h.name AND l.seq > COALESCE(p.applied_seq, 0))
            FROM hosts h LEFT JOIN change_log_heads c ON c.host = h.name LEFT JOIN host_progress p ON p.host = h.name
            """
        let rows: [[String?]]
        if let hosts {
            // One indexed lookup per host asked for (a --wait names a handful of a fleet's hosts).
            var all: [[String?]] = []
            for h in hosts { all += try db.query(sql + " WHERE h.name = ?", .text(h)) }
            rows = all
        } else {
            rows = try db.query(sql + " ORDER BY h.name")
        }
        return rows.compactMap { r in
            guard let h = r[0] else { return nil }
            return LogProgress(host: h, head: Int64(r[1] ?? "0") ?? 0, applied: Int64(r[2] ?? "0") ?? 0,
                               pending: Int(r[4] ?? "0") ?? 0, appliedAt: r[3])
        }
    }

    func logTrim(maxAge: Int?, keep: Int?) throws(StoreError) -> Int {
        try transaction { () throws(StoreError) -> Int in
            var conditions: [String] = []
            var args: [SQLValue] = []
            if let maxAge { conditions.append("c.committed_at < now() - make_interval(secs => ?)"); args.append(.int(Int64(maxAge))) }
            // The keep-th newest row of its host and everything older than it go.
            if let keep {
                conditions.append("c.seq <= (SELECT seq FROM change_log k WHERE k.host = c.host ORDER BY seq DESC OFFSET ? LIMIT 1)")
                args.append(.int(Int64(keep)))
            }
            guard !conditions.isEmpty else { return 0 }
            let rows = try db.query("""
                WITH gone AS (DELETE FROM change_log c WHERE \(conditions.joined(separator: " OR ")) RETURNING c.host, c.seq),
                     marks AS (SELECT host, max(seq) AS s, count(*) AS n FROM gone GROUP BY host),
                     moved AS (INSERT INTO change_log_heads(host, trimmed_through) SELECT host, s FROM marks
                               ON CONFLICT(host) DO UPDATE SET trimmed_through = GREATEST(change_log_heads.trimmed_through, excluded.trimmed_through))
                SELECT COALESCE(sum(n), 0)::bigint FROM marks
                """, args)
            return Int(rows.first?[0] ?? "0") ?? 0
        }
    }
}
