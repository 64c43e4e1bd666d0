import Foundation

/// A store error: the database's message, or a refused change (unknown group, group in use, …).
public struct StoreError: Error, Sendable, CustomStringConvertible, Equatable {
    /// `database`: the database failed a statement; `unavailable`: it cannot be reached (no
    /// connection, or the connection was lost: nothing was committed); `notFound`, `conflict`,
    /// `invalid`: a refused change or an invalid stored value; `missing`: no store at the path
    /// (only the controller creates one); `unsafe`: the store or its directory could be changed
    /// by someone other than root.
    public enum Kind: String, Sendable { case database, unavailable, notFound, conflict, invalid, missing, unsafe }
    public var kind: Kind
    public var message: String
    /// The server's SQLSTATE, when a PostgreSQL statement failed (`40001`: serialization failure,
    /// retried by the transaction).
    public var sqlState: String?
    public init(_ kind: Kind, _ message: String, sqlState: String? = nil) {
        self.kind = kind
        self.message = message
        self.sqlState = sqlState
    }
    public var description: String { message }

    /// A failure that running the whole transaction again can cure, after a pause: it lost a
    /// serialization race (`40001`), a deadlock (`40P01`), or found the server's lock table full
    /// (`53200`, "out of shared memory": the predicate locks that serializable transactions
    /// hold, and keep after commit while transactions that overlapped them run, are bounded by
    /// `max_pred_locks_per_transaction` × connections; under a burst of verbs they fill, and
    /// free as those transactions end). Each rolled back whole: nothing was written.
    public var isTransientConflict: Bool {
        guard let sqlState else { return false }
        return sqlState == "40001" || sqlState == "40P01" || sqlState == "53200"
    }
}

/// A value bound to a statement's `?` placeholder.
public enum SQLValue: Sendable, Equatable {
    case text(String), int(Int64), null
}

/// The little a store needs of a database connection. Statements are written once, with `?`
/// placeholders, in the SQL that SQLite and PostgreSQL share; `SQLDialect` holds the few
/// spellings that differ. Not thread-safe: the store serializes its calls.
protocol SQLConnection: AnyObject {
    /// Runs statements without parameters (schema, `BEGIN`, `COMMIT`).
    func exec(_ sql: String) throws(StoreError)
    /// Runs a statement that returns no rows.
    func run(_ sql: String, _ args: [SQLValue]) throws(StoreError)
    /// Runs a query; each row is an array of the columns as text (nil: NULL).
    func query(_ sql: String, _ args: [SQLValue]) throws(StoreError) -> [[String?]]
}

extension SQLConnection {
    func run(_ sql: String, _ args: SQLValue...) throws(StoreError) { try run(sql, args) }
    func query(_ sql: String, _ args: SQLValue...) throws(StoreError) -> [[String?]] { try query(sql, args) }
}

/// What differs between the two databases, as SQL text.
struct SQLDialect: Sendable {
    /// Starts a write transaction. SQLite: `BEGIN IMMEDIATE` (one writer at a time);
    /// PostgreSQL: serializable, so concurrent verbs behave as if run one after the other (a
    /// fan-out query never misses a member or a reference another verb is adding).
    var beginWrite: String
    /// Starts a read transaction whose statements all see one snapshot.
    var beginRead: String
    /// The instance's groups in position order, comma-separated, for instance row `i`.
    var instanceGroupsColumn: String
    /// The references of the rules of row `groups` (its `group_refs`), comma-separated: the
    /// rules decode against them, and reading them in the same statement makes a group one
    /// round trip, consistent without a transaction.
    var groupRefsColumn: String
    /// Whether verbs append their fan-out to the per-host change log (and wake its readers).
    var keepsChangeLog: Bool
    /// Whether the rules verbs and an instance's addition and removal run as server-side
    /// routines (`PostgresRoutines.swift`): two round trips instead of seven for a rules verb,
    /// one instead of eleven or eight for an instance.
    var verbsOnServer: Bool

    static let sqlite = SQLDialect(
        beginWrite: "BEGIN IMMEDIATE",
        beginRead: "BEGIN",
        instanceGroupsColumn: "(SELECT group_concat(group_id, ',') FROM (SELECT group_id FROM instance_groups WHERE instance = i.id ORDER BY position))",
        groupRefsColumn: "(SELECT group_concat(r.ref, ',') FROM group_refs r WHERE r.group_id = groups.id)",
        keepsChangeLog: false,
        verbsOnServer: false)

    static let postgres = SQLDialect(
        beginWrite: "BEGIN ISOLATION LEVEL SERIALIZABLE",
        beginRead: "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        instanceGroupsColumn: "(SELECT string_agg(group_id, ',' ORDER BY position) FROM instance_groups WHERE instance = i.id)",
        groupRefsColumn: "(SELECT string_agg(r.ref, ',') FROM group_refs r WHERE r.group_id = groups.id)",
        keepsChangeLog: true,
        verbsOnServer: true)
}
