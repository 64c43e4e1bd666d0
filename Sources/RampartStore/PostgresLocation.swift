import Foundation

/// Where a PostgreSQL store is, parsed from the URL given to `--store` or `RAMPART_STORE`:
///
///     postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=MODE&sslrootcert=FILE]
///     postgres://USER@/DATABASE?host=/run/postgresql&port=5432      (a Unix socket directory)
///
/// `postgresql://` is accepted too. As in libpq, a `host` parameter that is a directory
/// names the Unix socket `DIR/.s.PGSQL.PORT`. `sslmode`: `disable` (the default for a Unix
/// socket), `require` (encrypted, server not verified), `verify-full` (the default over TCP:
/// encrypted, the certificate must chain to `sslrootcert`, else to the system's roots, and
/// match HOST when HOST is a name: postgres-nio sends no server name for an address). A password may also come from `PGPASSWORD`, which keeps it out of `ps`.
public struct PostgresLocation: Sendable, Equatable, CustomStringConvertible {
    public enum TLSMode: String, Sendable { case disable, require, verifyFull = "verify-full" }

    public var user: String
    public var password: String?
    /// The server's name or address (TCP), or nil with `socketDirectory`.
    public var host: String?
    public var port: Int
    public var database: String
    /// The directory of the server's Unix socket.
    public var socketDirectory: String?
    public var tls: TLSMode
    /// CA certificates (PEM) that `verify-full` trusts instead of the system's.
    public var rootCertificate: String?

    /// Whether `text` names a PostgreSQL store (anything else given as a store is a SQLite file).
    public static func isURL(_ text: String) -> Bool {
        text.hasPrefix("postgres://") || text.hasPrefix("postgresql://")
    }

    /// Parses a store URL; errors name what is wrong (never echoing a password).
    public init(url text: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws(StoreError) {
        func bad(_ why: String) -> StoreError { StoreError(.invalid, "store URL \(Self.redacted(text)): \(why)") }
        guard Self.isURL(text), let url = URLComponents(string: text) else {
            throw bad("not a URL of the form postgres://USER@HOST[:PORT]/DATABASE")
        }
        guard let user = url.user, !user.isEmpty else { throw bad("no user (postgres://USER@…)") }
        self.user = user
        password = url.password ?? environment["PGPASSWORD"]
        let name = url.path.hasPrefix("/") ? String(url.path.dropFirst()) : url.path
        guard !name.isEmpty, !name.contains("/") else { throw bad("no database name (…/DATABASE)") }
        database = name
        var params: [String: String] = [:]
        for item in url.queryItems ?? [] {
            guard let value = item.value else { throw bad("parameter \(item.name) has no value") }
            guard params.updateValue(value, forKey: item.name) == nil else { throw bad("parameter \(item.name) given twice") }
        }
        let known: Set = ["host", "port", "sslmode", "sslrootcert", "connect_timeout"]
        if let unknown = params.keys.sorted().first(where: { !known.contains($0) }) {
            throw bad("unknown parameter \(unknown) (known: \(known.sorted().joined(separator: ", ")))")
        }
        var portText = url.port.map(String.init)
        if let p = params["port"] {
            guard portText == nil || portText == p else { throw bad("two different ports") }
            portText = p
        }
        guard let port = Int(portText ?? "5432"), (1...65535).contains(port) else { throw bad("port \(portText ?? "") is not 1–65535") }
        self.port = port
        let urlHost = url.host.flatMap { $0.isEmpty ? nil : $0 }
        if let h = params["host"], h.hasPrefix("/") {
            guard urlHost == nil || urlHost == "localhost" else { throw bad("both a server name and a socket directory") }
            socketDirectory = h
            host = nil
        } else {
            host = params["host"] ?? urlHost
            socketDirectory = nil
            guard host != nil else { throw bad("no server (postgres://USER@HOST/…, or ?host=/socket/directory)") }
        }
        let mode = params["sslmode"] ?? (socketDirectory == nil ? TLSMode.verifyFull.rawValue : TLSMode.disable.rawValue)
        guard let tls = TLSMode(rawValue: mode) else { throw bad("sslmode \(mode) is not disable, require or verify-full") }
        if tls != .disable && socketDirectory != nil { throw bad("sslmode \(mode) over a Unix socket") }
        self.tls = tls
        rootCertificate = params["sslrootcert"]
    }

    /// The Unix socket's path, when the store is reached through one.
    public var socketPath: String? { socketDirectory.map { "\($0)/.s.PGSQL.\(port)" } }

    /// The URL without its password: what logs and errors show.
    public var description: String {
        var s = "postgres://\(user)@\(host ?? "")"
        if host != nil { s += ":\(port)" }
        s += "/\(database)"
        if let d = socketDirectory { s += "?host=\(d)&port=\(port)" }
        return s
    }

    static func redacted(_ text: String) -> String {
        guard var url = URLComponents(string: text), url.password != nil else { return text }
        url.password = "***"
        return url.string ?? "postgres://…"
    }
}
