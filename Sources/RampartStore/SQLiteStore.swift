import Foundation
import RampartCore

/// The embedded store: one SQLite file (WAL mode, so the daemon reads while the CLI writes).
/// Every verb is one `BEGIN IMMEDIATE … COMMIT` transaction. The SQL is `SQLStore`'s, shared
/// with PostgreSQL; this type only opens, creates and checks the file.
public final class SQLiteStore: SQLStore, @unchecked Sendable {
    public let path: String
    /// The file opened (device and inode): a transaction first checks that `path` still names
    /// it (`checkBeforeUse`).
    private let opened: (device: UInt64, inode: UInt64)

    /// Opens the store at `path`, creating it if needed (the controller verbs and `import`):
    /// missing directories are made 0700 and the database file 0600, whatever the umask.
    public convenience init(path: String) throws(StoreError) {
        try self.init(path: path, create: true)
    }

    /// Opens an existing store for the daemon: never creates one (a mistyped `--store` must not
    /// become an empty policy), refuses one that someone other than root could change (see
    /// `StoreFiles.check`), and refuses a file that is not a Rampart store. `warnings` lists what
    /// the check found worth logging.
    public static func openExisting(path: String, owner: uid_t = 0) throws(StoreError) -> (store: SQLiteStore, warnings: [String]) {
        let warnings = try StoreFiles.check(path, owner: owner)
        return (try SQLiteStore(path: path, create: false), warnings)
    }

    /// `create: false`: a missing file or one without the schema is an error (no checks of
    /// ownership: `openExisting` does those).
    public init(path: String, create: Bool) throws(StoreError) {
        self.path = path
        if create {
            try StoreFiles.makeDirectories((path as NSString).deletingLastPathComponent)
            try StoreFiles.refuseNonRegular(path)
            try StoreFiles.createPrivateFile(path)
        } else {
            var st = stat()
            if lstat(path, &st) != 0 { throw StoreError(.missing, "no store at \(path)") }
            try StoreFiles.refuseNonRegular(path)
        }
        // The path names the same file before and after SQLite opened it: the identity kept is
        // the file's that SQLite holds, not one swapped in meanwhile.
        let before = try Self.identity(path)
        let db = try SQLiteConnection(path: path, create: create)
        opened = try Self.identity(path)
        guard opened == before else {
            throw StoreError(.unsafe, "the store \(path) was replaced while it was being opened: not using it; try again")
        }
        if !create {
            // Checked before anything writes (setting WAL would turn an empty file into a database).
            let have = Set(try db.query("SELECT name FROM sqlite_master WHERE type = 'table'").compactMap { $0[0] })
            let missing = Self.tables.filter { !have.contains($0) }
            if !missing.isEmpty {
                throw StoreError(.invalid, "\(path) is not a Rampart store (no table \(missing.joined(separator: ", "))); `rampart` verbs and `rampart import` create one")
            }
        }
        try db.exec("PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;")
        if create { for statement in Self.schema { try db.exec(statement) } }
        for statement in Self.additions { try db.exec(statement) }
        connection = db
        super.init(db: db, dialect: .sqlite)
    }

    private let connection: SQLiteConnection

    /// Takes WAL checkpoints off this store's commits: a writer that answers before it is done
    /// (the `rampart` verbs deliver their refresh calls after COMMIT) calls `checkpointIfDue()`
    /// once it has answered. Why: SQLite checkpoints inside the COMMIT that takes the WAL past
    /// 1,000 pages, and that commit's verb paid it (20–30 ms here, once every few hundred verbs).
    public func deferCheckpoints() {
        try? locked { () throws(StoreError) in connection.deferCheckpoints() }
    }

    /// Runs the checkpoint this store's commits deferred, if the WAL has reached SQLite's
    /// auto-checkpoint length (1,000 pages); returns whether it ran.
    @discardableResult
    public func checkpointIfDue() throws(StoreError) -> Bool {
        try locked { () throws(StoreError) -> Bool in try connection.checkpointIfDue() }
    }

    /// Device and inode of the file at `path` (not following a link: none is ever opened).
    private static func identity(_ path: String) throws(StoreError) -> (device: UInt64, inode: UInt64) {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            throw StoreError(.missing, "the store \(path) is gone since it was opened (removed or renamed): nothing read from it; restart with the store back in place")
        }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
    }

    /// A store file replaced under an open connection (a backup restored by `mv`, a new file
    /// renamed over it) goes on being read from the old, unlinked file while verbs write to
    /// the new one: a daemon would apply stale policy, a revocation written since never taking
    /// effect, and say nothing. So every use of the connection first checks that the path still
    /// names the file opened (one `lstat`), and fails naming what happened if not: the daemon keeps the
    /// kernel's rules, reports the error and is not ready until restarted on the new file.
    override func checkBeforeUse() throws(StoreError) {
        let now = try Self.identity(path)
        guard now == opened else {
            throw StoreError(.unsafe, "the store \(path) was replaced since it was opened (another file is at that path now): not reading the old one; restart to open the new one")
        }
    }
}
