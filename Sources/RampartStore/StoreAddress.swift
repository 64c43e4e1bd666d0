import Foundation

/// What `--store` (or `RAMPART_STORE`) names: a `postgres://` URL is a PostgreSQL store, anything
/// else the path of a SQLite file.
public enum StoreAddress: Sendable, Equatable, CustomStringConvertible {
    case sqlite(path: String)
    case postgres(PostgresLocation)

    /// The embedded store's default path.
    public static let defaultPath = "/var/lib/rampart/rampart.db"

    /// `given` (an option), else `RAMPART_STORE`, else the default SQLite path.
    public init(_ given: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws(StoreError) {
        let text = given ?? environment["RAMPART_STORE"].flatMap { $0.isEmpty ? nil : $0 } ?? Self.defaultPath
        if PostgresLocation.isURL(text) {
            self = .postgres(try PostgresLocation(url: text, environment: environment))
        } else if text.contains("://") {
            throw StoreError(.invalid, "store \(PostgresLocation.redacted(text)): only postgres:// URLs are stores; anything else is a SQLite file path")
        } else {
            self = .sqlite(path: text)
        }
    }

    public var description: String {
        switch self {
        case .sqlite(let p): p
        case .postgres(let l): l.description
        }
    }

    /// For the controller's verbs and `import`: creates the SQLite file (0600), or creates and
    /// upgrades the PostgreSQL schema.
    public func openForWriting() throws(StoreError) -> SQLStore {
        switch self {
        case .sqlite(let p): try SQLiteStore(path: p)
        case .postgres(let l): try PostgresStore(location: l, migrate: true)
        }
    }

    /// For readers (the daemon, `export`): never creates a store. A SQLite file must pass
    /// `StoreFiles.check` (owned by `owner`, not writable by others) when `checkFiles`; a
    /// PostgreSQL store must have this version's schema. Returns warnings worth logging.
    public func openExisting(checkFiles: Bool, owner: uid_t = 0) throws(StoreError) -> (store: SQLStore, warnings: [String]) {
        switch self {
        case .sqlite(let p):
            if checkFiles { return try SQLiteStore.openExisting(path: p, owner: owner) }
            return (try SQLiteStore(path: p, create: false), [])
        case .postgres(let l):
            return (try PostgresStore(location: l, migrate: false), [])
        }
    }
}
