import CSQLite
import Foundation


private let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

/// A minimal SQLite connection: prepared statements with text/int/null bindings.
final class SQLiteConnection: SQLConnection {
    let db: OpaquePointer
    private var cache: [String: OpaquePointer] = [:]

    /// Opens the database at `path`; with `create: false` a missing file is an error (SQLite
    /// would otherwise create an empty database).
    init(path: String, create: Bool) throws(StoreError) {
        var handle: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &handle, flags, nil)
        guard rc == SQLITE_OK, let h = handle else {
            let msg = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            if let h = handle { sqlite3_close_v2(h) }
            throw StoreError(.database, "\(path): \(msg)")
        }
        db = h
        sqlite3_busy_timeout(db, 10_000)
    }

    deinit {
        for (_, s) in cache { sqlite3_finalize(s) }
        sqlite3_close_v2(db)
    }

    private func error(_ what: String) -> StoreError {
        StoreError(.database, "\(what): \(String(cString: sqlite3_errmsg(db)))")
    }

    func exec(_ sql: String) throws(StoreError) {
        var err: UnsafeMutablePointer<CChar>?
        if sqlite3_exec(db, sql, nil, nil, &err) != SQLITE_OK {
            let msg = err.map { String(cString: $0) } ?? "?"
            sqlite3_free(err)
            throw StoreError(.database, "\(sql.prefix(60)): \(msg)")
        }
    }

    private func statement(_ sql: String, _ args: [SQLValue]) throws(StoreError) -> OpaquePointer {
        let stmt: OpaquePointer
        if let s = cache[sql] {
            stmt = s
        } else {
            var s: OpaquePointer?
            guard sqlite3_prepare_v2(db, sql, -1, &s, nil) == SQLITE_OK, let p = s else { throw error("prepare \(sql.prefix(60))") }
            cache[sql] = p
            stmt = p
        }
        sqlite3_reset(stmt)
        sqlite3_clear_bindings(stmt)
        for (i, a) in args.enumerated() {
            let idx = Int32(i + 1)
            switch a {
            case .text(let t): sqlite3_bind_text(stmt, idx, t, -1, transient)
            case .int(let n): sqlite3_bind_int64(stmt, idx, n)
            case .null: sqlite3_bind_null(stmt, idx)
            }
        }
        return stmt
    }

    /// Runs a statement that returns no rows.
    func run(_ sql: String, _ args: [SQLValue]) throws(StoreError) {
        let s = try statement(sql, args)
        defer { sqlite3_reset(s) }
        let rc = sqlite3_step(s)
        guard rc == SQLITE_DONE || rc == SQLITE_ROW else { throw error(String(sql.prefix(60))) }
    }

    /// Runs a query; each row is given as an array of optional strings.
    func query(_ sql: String, _ args: [SQLValue]) throws(StoreError) -> [[String?]] {
        let s = try statement(sql, args)
        defer { sqlite3_reset(s) }
        var rows: [[String?]] = []
        while true {
            let rc = sqlite3_step(s)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw error(String(sql.prefix(60))) }
            let n = sqlite3_column_count(s)
            var row: [String?] = []
            row.reserveCapacity(Int(n))
            for c in 0..<n {
                if sqlite3_column_type(s, c) == SQLITE_NULL { row.append(nil) } else { row.append(String(cString: sqlite3_column_text(s, c))) }
            }
            rows.append(row)
        }
        return rows
    }

    var changes: Int { Int(sqlite3_changes(db)) }

    // MARK: checkpoints off the commit path

    /// The WAL's length in frames after this connection's last commit, as SQLite's WAL hook
    /// reported it (`deferCheckpoints`).
    private final class WALLength { var frames: Int32 = 0 }
    private let walLength = WALLength()

    /// Stops this connection's commits from checkpointing the WAL (SQLite's auto-checkpoint runs
    /// inside the COMMIT that takes the WAL past 1,000 frames, 20–30 ms on this machine, on the
    /// path of the verb that happened to commit then); `checkpointIfDue` runs it later instead.
    /// Other connections keep their own auto-checkpoint.
    func deferCheckpoints() {
        // Replaces the hook auto-checkpointing installs (sqlite3_wal_autocheckpoint is one):
        // it only notes the length, read by `checkpointIfDue`.
        sqlite3_wal_hook(db, { context, _, _, frames in
            Unmanaged<WALLength>.fromOpaque(context!).takeUnretainedValue().frames = frames
            return SQLITE_OK
        }, Unmanaged.passUnretained(walLength).toOpaque())
    }

    /// The checkpoint auto-checkpointing would have run (PASSIVE: waits for no reader or writer;
    /// what they still use is left for the next), when this connection's commits took the WAL to
    /// `threshold` frames or more. Returns whether it ran.
    @discardableResult
    func checkpointIfDue(threshold: Int32 = 1000) throws(StoreError) -> Bool {
        guard walLength.frames >= threshold else { return false }
        var log: Int32 = 0, done: Int32 = 0
        let rc = sqlite3_wal_checkpoint_v2(db, nil, SQLITE_CHECKPOINT_PASSIVE, &log, &done)
        guard rc == SQLITE_OK || rc == SQLITE_BUSY else { throw error("checkpoint") }
        walLength.frames = 0
        return true
    }
}
