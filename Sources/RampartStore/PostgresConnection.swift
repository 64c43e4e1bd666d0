import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO

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

    /// The event-loop thread every store connection of the process shares.
    static let sharedGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    init(location: PostgresLocation, logger: Logger = Logger(label: "rampart.store.postgres")) {
        self.location = location
        self.group = Self.sharedGroup
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
        let config = try Self.configuration(location)
        do {
            let c = try PostgresConnection.connect(on: group.next(), configuration: config, id: 1, logger: logger).wait()
            connection = c
            return c
        } catch {
            throw StoreError(.unavailable, "cannot connect to the store \(location): \(Self.describe(error))")
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
                var t = TLSConfiguration.makeClientConfiguration()
                if location.tls == .require { t.certificateVerification = .none }
                if let ca = location.rootCertificate { t.trustRoots = .file(ca) }
                do { tls = .require(try NIOSSLContext(configuration: t)) } catch {
                    throw StoreError(.invalid, "store \(location): TLS set-up failed: \(error)")
                }
            }
            config = .init(host: location.host ?? "localhost", port: location.port, username: location.user,
                           password: location.password, database: location.database, tls: tls)
        }
        config.options.connectTimeout = .seconds(5)
        return config
    }

    /// `?` → `$n`, outside string literals (cached per statement text).
    func numbered(_ sql: String) -> String {
        if let s = placeholders[sql] { return s }
        var out = ""
        var n = 0
        var quoted = false
        for ch in sql {
            if ch == "'" { quoted.toggle() }
            if ch == "?" && !quoted {
                n += 1
                out += "$\(n)"
            } else {
                out.append(ch)
            }
        }
        placeholders[sql] = out
        return out
    }

    func exec(_ sql: String) throws(StoreError) { _ = try query(sql, []) }

    func run(_ sql: String, _ args: [SQLValue]) throws(StoreError) { _ = try query(sql, args) }

    func query(_ sql: String, _ args: [SQLValue]) throws(StoreError) -> [[String?]] {
        let c = try live()
        var binds = PostgresBindings(capacity: args.count)
        for a in args {
            switch a {
            case .text(let t): binds.append(t)
            case .int(let n): binds.append(n)
            case .null: binds.appendNull()
            }
        }
        let q = PostgresQuery(unsafeSQL: numbered(sql), binds: binds)
        let promise = c.eventLoop.makePromise(of: PostgresQueryResult.self)
        c.query(q, logger: logger).cascade(to: promise)
        // A server that stops answering must not hang a verb or the daemon: give the statement
        // up and drop the connection (the server rolls back what it had not committed).
        let timeout = statementTimeout
        let timer = c.eventLoop.scheduleTask(in: timeout) {
            promise.fail(StoreError(.unavailable, "the store \(self.location) did not answer within \(timeout.nanoseconds / 1_000_000_000) s"))
            Self.closeSoon(c)
        }
        let result: PostgresQueryResult
        do {
            result = try promise.futureResult.wait()
            timer.cancel()
        } catch {
            timer.cancel()
            throw classify(error, sql: sql, connection: c)
        }
        var rows: [[String?]] = []
        rows.reserveCapacity(result.count)
        for row in result {
            var out: [String?] = []
            for cell in row { out.append(try Self.text(cell)) }
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
            // The timeout closed it: release it only once closed (postgres-nio requires that).
            let closing: EventLoopFuture<Void> = c.close()
            try? closing.wait()
            connection = nil
            return e
        }
        if let e = error as? PSQLError, e.code == .server, let info = e.serverInfo {
            let message = info[.message] ?? "error"
            var text = "store: \(message)"
            if let d = info[.detail] { text += " (\(d))" }
            return StoreError(.database, text + " [\(sql.prefix(60))]", sqlState: info[.sqlState])
        }
        let closing: EventLoopFuture<Void> = c.close()
        try? closing.wait()
        connection = nil
        return StoreError(.unavailable, "lost the store \(location): \(Self.describe(error))")
    }

    /// Starts closing `c` without waiting (the future-returning `close`, not the async one).
    static func closeSoon(_ c: PostgresConnection) {
        let closing: EventLoopFuture<Void> = c.close()
        _ = closing
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
