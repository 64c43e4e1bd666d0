import Foundation

/// Where a PostgreSQL store is, parsed from the URL given to `--store` or `RAMPART_STORE`:
///
///     postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=MODE&sslrootcert=FILE
///                                                     &sslcert=FILE&sslkey=FILE&connect_timeout=S]
///     postgres://USER@/DATABASE?host=/run/postgresql&port=5432      (a Unix socket directory)
///
/// `postgresql://` is accepted too; the parameters keep libpq's names and meanings. As in
/// libpq, a `host` parameter that is a directory names the Unix socket `DIR/.s.PGSQL.PORT`.
/// `sslmode`: `disable` (the default for a Unix socket), `require` (encrypted, server not
/// verified), `verify-full` (the default over TCP: encrypted, the certificate must chain to
/// `sslrootcert`, which it needs, and name HOST: a DNS name in its subject alternative names,
/// or an IP address entry holding the address connected to). `sslrootcert=system` trusts the
/// system's roots, as in libpq 16; it is never implied: NIOSSL accepts a certificate whose IP
/// entry is the address connected to even when HOST is a name, so whoever can both answer for
/// HOST in DNS and get an IP certificate from a trusted CA could pose as the server, and only a
/// CA the operator chose (and that issues no certificates to others' addresses) rules that out.
/// `sslcert`/`sslkey`: a client certificate for `hostssl … cert` authentication (the key must
/// be this process's and 0600). A password may also come from `PGPASSWORD`, which keeps it
/// out of `ps`. A parameter that would be ignored (`sslrootcert` without `verify-full`, a
/// client certificate without TLS) is refused rather than silently dropped.
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
    /// CA certificates (PEM) that `verify-full` trusts, or `system` for the system's roots
    /// (`systemRoots`).
    public var rootCertificate: String?
    /// The `sslrootcert` that names the system's trusted roots instead of a file.
    public static let systemRoots = "system"
    /// The CA file `verify-full` trusts; nil for the system's roots (or without `verify-full`).
    public var rootCertificateFile: String? { rootCertificate == Self.systemRoots ? nil : rootCertificate }
    /// The client's certificate chain (PEM, `sslcert`) and its private key (PEM, `sslkey`),
    /// sent when the server asks for one; both or neither.
    public var clientCertificate: String?
    public var clientKey: String?
    /// How long connecting may take, TLS and authentication included (`connect_timeout`, in
    /// whole seconds; 5 when not given).
    public var connectTimeout: Int

    /// The bounds of `connect_timeout`. libpq's 0 (wait for ever) is refused: a daemon that
    /// waits for ever on a dead address never reports the store as unreachable.
    public static let connectTimeouts = 1...3600

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
        let known: Set = ["host", "port", "sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout"]
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
        if rootCertificate != nil && tls != .verifyFull {
            throw bad("sslrootcert is used only by sslmode=verify-full (sslmode=\(mode) does not check the server's certificate)")
        }
        if rootCertificate == nil && tls == .verifyFull {
            throw bad("sslmode=verify-full (the default over TCP) needs sslrootcert=FILE, the CA that signs the server's certificate (or sslrootcert=system for the system's roots)")
        }
        clientCertificate = params["sslcert"]
        clientKey = params["sslkey"]
        if (clientCertificate == nil) != (clientKey == nil) { throw bad("sslcert and sslkey go together") }
        if clientCertificate != nil && tls == .disable { throw bad("sslcert without TLS (sslmode=disable)") }
        if let t = params["connect_timeout"] {
            guard let seconds = Int(t), Self.connectTimeouts.contains(seconds) else {
                throw bad("connect_timeout \(t) is not a whole number of seconds \(Self.connectTimeouts.lowerBound)–\(Self.connectTimeouts.upperBound)")
            }
            connectTimeout = seconds
        } else {
            connectTimeout = 5
        }
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
