import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import RampartSystem

/// A blocking PostgreSQL connection over postgres-nio, so that `SQLStore`'s synchronous SQL runs
/// unchanged on PostgreSQL. Its I/O runs on one event-loop thread of its own; callers block on
/// the result, so they must not be event-loop threads (the daemon's reconciler and change-log
/// threads, the CLI's main thread are not). `?` placeholders become `$1, $2, …`.
///
/// A lost connection fails the statement with `.unavailable` and is re-established by the next
/// statement (a transaction in flight is then gone: `SQLStore` runs it again or reports it).
final class PostgresSyncConnection: SQLConnection, @unchecked Sendable {
    let location: PostgresLocation
    /// How long one statement may take before the connection is given up as lost.
    var statementTimeout: TimeAmount = .seconds(30)
    private let group: MultiThreadedEventLoopGroup
    private var connection: PostgresConnection?
    private var placeholders: [String: String] = [:]
    private let logger: Logger
    /// Fails the statement in flight, if any, when its connection closes (`wait`).
    private let pending = PendingStatement()
    /// Counts the connections opened, so that a closed one's callback (which may run after a
    /// new connection took its place) fails only its own statement.
    private var generation = 0

    /// The event-loop thread every store connection of the process shares unless given another
    /// (one process, one daemon: one thread is plenty).
    static let sharedGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    init(location: PostgresLocation, eventLoopGroup: MultiThreadedEventLoopGroup = sharedGroup,
         logger: Logger = Logger(label: "rampart.store.postgres")) {
        self.location = location
        self.group = eventLoopGroup
        var l = logger
        l.logLevel = .critical  // postgres-nio logs every statement at debug/trace
        self.logger = l
    }

    deinit {
        // postgres-nio requires a connection closed before it is released.
        if let c = connection { let closing: EventLoopFuture<Void> = c.close(); try? closing.wait() }
    }

    /// Connects now (the first statement would otherwise): a wrong URL or an unreachable
    /// server is reported before anything else happens.
    func connect() throws(StoreError) { _ = try live() }

    /// Closes the connection; the next statement opens a new one.
    func close() {
        if let c = connection { let closing: EventLoopFuture<Void> = c.close(); try? closing.wait() }
        connection = nil
    }

    private func live() throws(StoreError) -> PostgresConnection {
        if let c = connection, !c.isClosed { return c }
        if let c = connection { let closing: EventLoopFuture<Void> = c.close(); try? closing.wait() }
        connection = nil
        prepared = [:]
        let config = try Self.configuration(location)
        do {
            let c = try PostgresConnection.connect(on: group.next(), configuration: config, id: 1, logger: logger).wait()
            let pending = pending
            let location = location
            generation += 1
            let mine = generation
            c.closeFuture.whenComplete { _ in pending.fail(StoreError(.unavailable, "lost the store \(location): the connection closed"), connection: mine) }
            connection = c
            return c
        } catch {
            throw StoreError(.unavailable, "cannot connect to the store \(location): \(Self.describeConnecting(error, to: location))")
        }
    }

    static func configuration(_ location: PostgresLocation) throws(StoreError) -> PostgresConnection.Configuration {
        var config: PostgresConnection.Configuration
        if let socket = location.socketPath {
            config = .init(unixSocketPath: socket, username: location.user, password: location.password, database: location.database)
        } else {
            let tls: PostgresConnection.Configuration.TLS
            switch location.tls {
            case .disable:
                tls = .disable
            case .require, .verifyFull:
                tls = .require(try tlsContext(location))
            }
            config = .init(host: location.host ?? "localhost", port: location.port, username: location.user,
                           password: location.password, database: location.database, tls: tls)
        }
        config.options.connectTimeout = .seconds(Int64(location.connectTimeout))
        return config
    }

    /// The client's TLS context: `.fullVerification` (NIOSSL's default) checks the chain and the
    /// name: a DNS entry matching the server name sent (postgres-nio sends HOST unless it is an
    /// address), or an IP entry matching the address connected to (checked whatever the name:
    /// why `PostgresLocation` wants a CA the operator chose). `require` checks neither. The
    /// client key is read as a secret: this process's own file, mode 0600, never through a
    /// symbolic link.
    static func tlsContext(_ location: PostgresLocation) throws(StoreError) -> NIOSSLContext {
        var t = TLSConfiguration.makeClientConfiguration()
        if location.tls == .require { t.certificateVerification = .none }
        for case let (file?, parameter) in [(location.rootCertificateFile, "sslrootcert"), (location.clientCertificate, "sslcert")] {
            try checkCertificateFile(file, parameter, location)
        }
        if let ca = location.rootCertificateFile { t.trustRoots = .file(ca) }
        do {
            if let certificate = location.clientCertificate, let key = location.clientKey {
                let pem = try SecretFile.read(key, what: "the TLS client key (sslkey)")
                t.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
                t.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(pem.utf8), format: .pem))
            }
            return try NIOSSLContext(configuration: t)
        } catch let refusal as SecretFile.Refusal {
            throw StoreError(.invalid, "store \(location): \(refusal.description)")
        } catch {
            throw StoreError(.invalid, "store \(location): TLS set-up failed: \(error)")
        }
    }

    /// `?` → `$n`, outside string literals (cached per statement text).
    func numbered(_ sql: String) -> String {
        if let s = placeholders[sql] { return s }
        let out = Self.placeholders(sql) { n in "$\(n)" }
        placeholders[sql] = out
        return out
    }

    /// `sql` with each `?` outside string literals replaced by `placeholder(n)`, n from 1.
    static func placeholders(_ sql: String, _ placeholder: (Int) -> String) -> String {
        var out = ""
        var n = 0
        var quoted = false
        for ch in sql {
            if ch == "'" { quoted.toggle() }
            if ch == "?" && !quoted {
                n += 1
                out += placeholder(n)
            } else {
                out.append(ch)
            }
        }
        return out
    }

    func exec(_ sql: String) throws(StoreError) { _ = try query(sql, []) }

    func run(_ sql: String, _ args: [SQLValue]) throws(StoreError) { _ = try query(sql, args) }

    /// Statements with arguments, prepared on this connection, by their text with typed
    /// placeholders (`typed`).
    ///
    /// Why: an unnamed statement is parsed and planned by the server on every call, which cost
    /// more than executing the store's short statements (pgbench, the fleet bench's data: a
    /// rules verb 1.12 ms unnamed, 0.49 ms prepared; docs/postgres.md). A statement is prepared
    /// the first time it runs (one round trip more, once per connection) and run by name after.
    /// Statements without arguments (BEGIN, COMMIT, the schema) stay unnamed.
    private var prepared: [String: PreparedQuery] = [:]

    /// At most this many prepared statements per connection: statements built with a varying
    /// number of terms (an instance's addresses, …) beyond it run unnamed.
    static let preparedLimit = 256

    func query(_ sql: String, _ args: [SQLValue]) throws(StoreError) -> [[String?]] {
        let c = try live()
        if args.isEmpty { return try unnamed(sql, [], c) }
        let text = typed(sql, args)
        let statement: PreparedQuery
        if let known = prepared[text] {
            statement = known
        } else if prepared.count < Self.preparedLimit {
            statement = try wait(sql: sql, connection: c) { c.prepare(query: text) }
            prepared[text] = statement
        } else {
            return try unnamed(sql, args, c)
        }
        let binds: [PostgresData] = args.map { a in
            switch a {
            case .text(let t): PostgresData(string: t)
            case .int(let n): PostgresData(int64: n)
            case .null: PostgresData(type: .null)
            }
        }
        do throws(StoreError) {
            return try Self.rows(wait(sql: sql, connection: c) { statement.execute(binds) }, binary: true)
        } catch {
            // The statement is gone or its plan cannot serve any more (another process changed
            // the schema): prepared again next time.
            if error.sqlState == "26000" || error.sqlState == "0A000" { prepared[text] = nil }
            throw error
        }
    }

    /// `?` → `$n::text` / `$n::bigint` (NULL: `$n`, typed by its context), so that a prepared
    /// statement's parameters have the types the arguments are sent with, as an unnamed
    /// statement's do. Outside string literals.
    func typed(_ sql: String, _ args: [SQLValue]) -> String {
        // Cached by the text and the arguments' kinds: rewriting the statement on every call
        // was work on every refresh's path.
        let key = sql + "\u{0}" + String(args.map { a -> Character in
            switch a { case .text: "t"; case .int: "i"; case .null: "n" }
        })
        if let known = typedTexts[key] { return known }
        let out = Self.placeholders(sql) { n in
            guard n <= args.count else { return "$\(n)" }
            switch args[n - 1] {
            case .text: return "$\(n)::text"
            case .int: return "$\(n)::bigint"
            case .null: return "$\(n)"
            }
        }
        if typedTexts.count < 4 * Self.preparedLimit { typedTexts[key] = out }
        return out
    }

    /// `typed`'s answers (bounded like the prepared statements they name).
    private var typedTexts: [String: String] = [:]

    private func unnamed(_ sql: String, _ args: [SQLValue], _ c: PostgresConnection) throws(StoreError) -> [[String?]] {
        var binds = PostgresBindings(capacity: args.count)
        for a in args {
            switch a {
            case .text(let t): binds.append(t)
            case .int(let n): binds.append(n)
            case .null: binds.appendNull()
            }
        }
        let q = PostgresQuery(unsafeSQL: numbered(sql), binds: binds)
        let logger = logger
        let result: PostgresQueryResult = try wait(sql: sql, connection: c) { c.query(q, logger: logger) }
        return try Self.rows(result, binary: false)
    }

    /// Runs a statement (`start` sends it) and waits for its result. A server that stops
    /// answering must not hang a verb or the daemon: the statement is given up and the connection
    /// dropped (the server rolls back what it had not committed).
    ///
    /// One hop to the event loop and one wake-up back: the statement is sent, its timer set and
    /// its completion watched from inside the loop. (Sent from the calling thread, with the timer
    /// scheduled, the result awaited and the timer cancelled from there too, each of those crossed
    /// to the loop on its own: `perf` over `rampart-bench controller` put the timer's scheduling
    /// and cancelling alone at a quarter of a daemon's change-log thread.)
    private func wait<T: Sendable>(sql: String, connection c: PostgresConnection, _ start: @escaping () -> EventLoopFuture<T>) throws(StoreError) -> T {
        let promise = c.eventLoop.makePromise(of: T.self)
        let outcome = StatementOutcome<T>()
        // postgres-nio can leave a statement unanswered for ever when it is sent as the
        // connection closes (a server restart: vapor/postgres-nio#487, whose fix was reverted in
        // #501); seen here as a relay stalled for the whole statement timeout after PostgreSQL
        // restarted. The connection's close fails the statement at once instead. Registered
        // before `isClosed` is read (on the loop, below): a close before it is seen there, one
        // after it fails this.
        pending.set(connection: generation) { promise.fail($0) }
        defer { pending.clear() }
        let timeout = statementTimeout
        let location = location
        let send = LoopWork(start)
        c.eventLoop.execute {
            promise.futureResult.whenComplete(outcome.complete)
            if c.isClosed { return promise.fail(StoreError(.unavailable, "lost the store \(location): the connection closed")) }
            let timer = c.eventLoop.scheduleTask(in: timeout) {
                promise.fail(StoreError(.unavailable, "the store \(location) did not answer within \(timeout.nanoseconds / 1_000_000_000) s"))
                Self.closeSoon(c)
            }
            promise.futureResult.whenComplete { _ in timer.cancel() }
            send.body().cascade(to: promise)
        }
        switch outcome.wait() {
        case .success(let value): return value
        case .failure(let error): throw classify(error, sql: sql, connection: c)
        }
    }

    /// `binary`: the cells are binary whatever they say. postgres-nio (1.33) asks for binary
    /// results when it runs a prepared statement but labels its cells with the formats of the
    /// statement's description, which are text (the server describes a statement before any
    /// Bind chose formats).
    static func rows<S: Sequence<PostgresRow>>(_ result: S, binary: Bool) throws(StoreError) -> [[String?]] {
        var rows: [[String?]] = []
        for row in result {
            var out: [String?] = []
            for var cell in row {
                if binary { cell.format = .binary }
                out.append(try Self.text(cell))
            }
            rows.append(out)
        }
        return rows
    }

    /// A cell as text, whatever its type (the store's SQL reads text and integers).
    static func text(_ cell: PostgresCell) throws(StoreError) -> String? {
        guard cell.bytes != nil else { return nil }
        do {
            switch cell.dataType {
            case .int2, .int4, .int8: return String(try cell.decode(Int64.self))
            case .bool: return try cell.decode(Bool.self) ? "1" : "0"
            case .float4, .float8, .numeric: return String(try cell.decode(Double.self))
            default: return try cell.decode(String.self)
            }
        } catch {
            throw StoreError(.database, "column \(cell.columnName): cannot read a \(cell.dataType) as text")
        }
    }

    /// A server's refusal (with its SQLSTATE) is `.database`; anything else is a lost or
    /// unusable connection: `.unavailable`, and the connection is dropped.
    private func classify(_ error: any Error, sql: String, connection c: PostgresConnection) -> StoreError {
        if let e = error as? StoreError {
            // The timeout or the close closed it: released only once closed (postgres-nio requires that).
            drop(c)
            return e
        }
        // The new API's error, or the one its prepared statements report (the older type).
        var server: (message: String, detail: String?, state: String?)?
        if let e = error as? PSQLError, e.code == .server, let info = e.serverInfo {
            server = (info[.message] ?? "error", info[.detail], info[.sqlState])
        } else if let e = error as? PostgresError, case .server(let info) = e {
            server = (info.fields[.message] ?? "error", info.fields[.detail], info.fields[.sqlState])
        }
        if let server, let state = server.state, Self.endsTheSession(state) {
            // The server said goodbye (a terminated backend, a shutdown, a restart): the
            // connection is gone, not the statement refused.
            drop(c)
            return StoreError(.unavailable, "lost the store \(location): \(server.message)", sqlState: state)
        }
        if let server {
            // Raised by Rampart's own routines (PostgresRoutines.swift, class P0): their message
            // is meant for the user as it is.
            if let state = server.state, state.hasPrefix("P0") { return StoreError(.database, server.message, sqlState: state) }
            var text = "store: \(server.message)"
            if let d = server.detail { text += " (\(d))" }
            return StoreError(.database, text + " [\(sql.prefix(60))]", sqlState: server.state)
        }
        drop(c)
        return StoreError(.unavailable, "lost the store \(location): \(Self.describe(error))")
    }

    /// Closes `c` and waits until it is closed; the next statement opens a new connection.
    private func drop(_ c: PostgresConnection) {
        let closing: EventLoopFuture<Void> = c.close()
        try? closing.wait()
        connection = nil
    }

    /// SQLSTATEs with which the server ends the session: class 57P (operator intervention:
    /// `pg_terminate_backend`, shutdown, crash recovery, database dropped) and class 08
    /// (connection exception). A statement refused for itself never carries them.
    static func endsTheSession(_ state: String) -> Bool {
        state.hasPrefix("57P") || state.hasPrefix("08")
    }

    /// Starts closing `c` without waiting (the future-returning `close`, not the async one).
    static func closeSoon(_ c: PostgresConnection) {
        let closing: EventLoopFuture<Void> = c.close()
        _ = closing
    }

    /// A certificate file the connection trusts or presents: readable (named here: NIOSSL's own
    /// error for a missing file names no path), and writable by nobody but its owner, this
    /// process's user or root. Not secret, but whoever can write the CA file chooses which
    /// servers `verify-full` accepts.
    static func checkCertificateFile(_ file: String, _ parameter: String, _ location: PostgresLocation) throws(StoreError) {
        var st = stat()
        guard stat(file, &st) == 0, access(file, R_OK) == 0 else {
            throw StoreError(.invalid, "store \(location): cannot read \(parameter) \(file): \(String(cString: strerror(errno)))")
        }
        if st.st_uid != geteuid() && st.st_uid != 0 {
            throw StoreError(.unsafe, "store \(location): \(parameter) \(file) is owned by uid \(st.st_uid), not by this process's user or root: its owner could change whom this trusts (chown it)")
        }
        if st.st_mode & 0o022 != 0 {
            throw StoreError(.unsafe, "store \(location): \(parameter) \(file) has mode \(StoreFiles.modeText(st.st_mode)): writable by group or others, who could change whom this trusts (chmod go-w)")
        }
    }

    /// Why connecting failed, in the URL's terms where the library's words are a code: what
    /// the operator must change (sslrootcert, sslcert, the password), then the library's own
    /// text for the record.
    static func describeConnecting(_ error: any Error, to location: PostgresLocation) -> String {
        let raw = describe(error)
        guard let e = error as? PSQLError, e.serverInfo?[.message] == nil else { return raw }
        switch e.code {
        case .sslUnsupported:
            return "the server does not offer TLS, and sslmode=\(location.tls.rawValue) never falls back to plain text"
        case .authMechanismRequiresPassword:
            return "the server asks for a password: give it in PGPASSWORD (or the URL)"
        default:
            break
        }
        if let channel = e.underlying as? ChannelError, case .connectTimeout = channel {
            return "no answer within connect_timeout=\(location.connectTimeout) s (connecting, TLS and authentication)"
        }
        if let extra = e.underlying as? NIOSSLExtraError, extra == .failedToValidateHostname {
            return "the server's certificate names neither \(location.host ?? "") nor the address connected to (\(raw))"
        }
        if raw.contains("CERTIFICATE_VERIFY_FAILED") {
            let ca = location.rootCertificateFile ?? "the system's roots"
            return "the server's certificate is not signed by a CA of sslrootcert (\(ca)), or has expired (\(raw))"
        }
        if raw.contains("ALERT_UNKNOWN_CA") || raw.contains("ALERT_BAD_CERTIFICATE") || raw.contains("ALERT_CERTIFICATE_REQUIRED") {
            let sent = location.clientCertificate.map { "the client certificate \($0)" } ?? "a missing client certificate"
            return "the server refused \(sent): it must be signed by the server's client CA (\(raw))"
        }
        return raw
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? PSQLError {
            if let m = e.serverInfo?[.message] { return m }
            if let u = e.underlying { return "\(e.code): \(u)" }
            return "\(e.code)"
        }
        return "\(error)"
    }
}

/// The statement a `PostgresSyncConnection` waits for, failed from the connection's close
/// callback (on its event loop) while the caller's thread waits. A connection runs one statement
/// at a time, so one slot serves; one close callback per connection, not one per statement.
final class PendingStatement: Sendable {
    private let slot = NIOLockedValueBox<(connection: Int, fail: @Sendable (any Error) -> Void)?>(nil)

    /// The statement now waited for, on connection number `connection`.
    func set(connection: Int, _ fail: @escaping @Sendable (any Error) -> Void) { slot.withLockedValue { $0 = (connection, fail) } }

    func clear() { slot.withLockedValue { $0 = nil } }

    /// Fails the statement in flight if it runs on connection number `connection` (a completed
    /// promise ignores it).
    func fail(_ error: any Error, connection: Int) {
        let f = slot.withLockedValue { $0?.connection == connection ? $0?.fail : nil }
        f?(error)
    }
}

/// A statement's result, handed from the event loop to the thread that waits for it.
final class StatementOutcome<T: Sendable>: @unchecked Sendable {
    private let lock = NIOLock()
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<T, any Error>?

    /// Called once, on the loop, by the statement's promise.
    func complete(_ r: Result<T, any Error>) {
        lock.withLock { result = r }
        done.signal()
    }

    func wait() -> Result<T, any Error> {
        done.wait()
        return lock.withLock { result! }
    }
}

/// A closure that builds a statement's future, carried to the event loop it runs on: it is
/// called there once and never again, so its captures (a prepared statement, its bindings) are
/// not shared between threads.
struct LoopWork<T>: @unchecked Sendable {
    let body: () -> EventLoopFuture<T>
    init(_ body: @escaping () -> EventLoopFuture<T>) { self.body = body }
}
