import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PostgresNIO

/// The store of a cloud: PostgreSQL, shared by the controller and every hypervisor's daemon.
/// The same SQL as SQLite (`SQLStore`), run serializable; each verb also appends its fan-out to
/// the hosts' change logs and NOTIFYs in the same transaction (`ChangeLog.swift`), so a daemon
/// learns its refresh calls from the store itself, wherever it runs. docs/postgres.md.
public final class PostgresStore: SQLStore, ChangeLog, @unchecked Sendable {
    public let location: PostgresLocation
    private let connection: PostgresSyncConnection

    /// The schema this version writes: 1 = the tables SQLite has, 2 = the change log, 3 = the
    /// EC2 API's metadata (VPCs, group names, tags, rule descriptions), 4 = instance lifecycle,
    /// 5 = the server-side routines (`PostgresRoutines.swift`: the log's append, the rules verbs),
    /// 6 = the rules verbs' procedure commits inside its `CALL`, 7 = the change log's read as a
    /// function (`rampart_log_read`), 8 = the log's statements keep to their indexes
    /// (`logPlansSchema`), 9 = an instance added or removed by one server-side call
    /// (`instanceRoutinesSchema`), 10 = the log read with its refreshes' reads
    /// (`readAheadSchema`), and generic plans for the log's reads and the verbs' procedures
    /// (`genericPlansSchema`), 11 = the read-ahead brings the members a rules refresh reads
    /// (`readAheadReferencesSchema`), 12 = the same read-ahead in fewer statements
    /// (`readAheadLeanSchema`), 13 = an added instance checked against its host's from indexes
    /// (`instanceChecksSchema`).
    public static let schemaVersion = 13

    /// The event-loop thread that runs this store's connection (and its follower's LISTEN).
    public let eventLoopGroup: MultiThreadedEventLoopGroup

    /// The event-loop thread every store connection of the process shares by default.
    public static var sharedEventLoopGroup: MultiThreadedEventLoopGroup { PostgresSyncConnection.sharedGroup }

    /// Connects. `migrate`: create or upgrade the schema (the controller's verbs and `import`);
    /// otherwise (the daemon) a database without the current schema is refused, never changed.
    /// `eventLoopGroup`: the thread that runs the connection; by default the one every store
    /// connection of the process shares. Several daemons in one process (a benchmark standing
    /// for several hypervisors) each pass their own, as separate processes would have.
    public init(location: PostgresLocation, migrate: Bool,
                eventLoopGroup: MultiThreadedEventLoopGroup = PostgresStore.sharedEventLoopGroup) throws(StoreError) {
        self.location = location
        self.eventLoopGroup = eventLoopGroup
        connection = PostgresSyncConnection(location: location, eventLoopGroup: eventLoopGroup)
        try connection.connect()
        super.init(db: connection, dialect: .postgres)
        if migrate { try self.migrate() } else { try checkSchema() }
    }

    /// Opens the store named by a `postgres://` URL.
    public convenience init(url: String, migrate: Bool,
                            eventLoopGroup: MultiThreadedEventLoopGroup = PostgresStore.sharedEventLoopGroup) throws(StoreError) {
        try self.init(location: PostgresLocation(url: url), migrate: migrate, eventLoopGroup: eventLoopGroup)
    }

    /// The schema's version in the database (0: none).
    public func installedSchemaVersion() throws(StoreError) -> Int {
        try reading { () throws(StoreError) -> Int in
            let exists = try db.query("SELECT to_regclass('rampart_schema') IS NOT NULL").first?[0] ?? nil
            guard exists == "1" else { return 0 }
            return Int(try db.query("SELECT max(version) FROM rampart_schema").first?[0] ?? "0") ?? 0
        }
    }

    private func checkSchema() throws(StoreError) {
        let v = try installedSchemaVersion()
        if v == 0 {
            throw StoreError(.missing, "the store \(location) has no Rampart schema (rampartd never creates one: `rampart` verbs and `rampart import` do)")
        }
        if v < Self.schemaVersion {
            throw StoreError(.invalid, "the store \(location) has schema version \(v), this rampartd needs \(Self.schemaVersion): run a `rampart` verb once (it upgrades the schema)")
        }
        if v > Self.schemaVersion {
            throw StoreError(.invalid, "the store \(location) has schema version \(v), newer than this rampartd knows (\(Self.schemaVersion)): upgrade rampartd")
        }
    }

    /// Brings the schema to `schemaVersion`, one version per step, each in one transaction
    /// under an advisory lock (two controllers starting at once do not race).
    private func migrate() throws(StoreError) {
        let steps: [[String]] = [Self.schema + Self.guardsSchema, Self.changeLogSchema, Self.ec2Schema, Self.ec2LifecycleSchema, Self.routinesSchema, Self.commitInsideSchema, Self.logReadSchema, Self.logPlansSchema, Self.instanceRoutinesSchema, Self.readAheadSchema + Self.genericPlansSchema, Self.readAheadReferencesSchema, Self.readAheadLeanSchema, Self.instanceChecksSchema]
        try transaction { () throws(StoreError) in
            // Transaction-scoped: released at COMMIT or ROLLBACK. The key is "rampart".
            _ = try db.query("SELECT pg_advisory_xact_lock(7233118244501612)")
            try db.exec("CREATE TABLE IF NOT EXISTS rampart_schema(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            let have = Int(try db.query("SELECT COALESCE(max(version), 0) FROM rampart_schema").first?[0] ?? "0") ?? 0
            if have > Self.schemaVersion {
                throw StoreError(.invalid, "the store \(location) has schema version \(have), newer than this rampart knows (\(Self.schemaVersion)): upgrade rampart")
            }
            guard have < Self.schemaVersion else { return }
            for version in (have + 1)...Self.schemaVersion {
                for statement in steps[version - 1] { try db.exec(statement) }
                try db.run("INSERT INTO rampart_schema(version) VALUES (?)", .int(Int64(version)))
            }
        }
    }

    /// Drops the connection; the next call reconnects.
    public func disconnect() { connection.close() }

    // MARK: ChangeLog

    public func entries(host: String, after sequence: Int64, limit: Int) throws(StoreError) -> LogPage {
        try logEntries(host: host, after: sequence, limit: limit)
    }

    public func entries(host: String, after sequence: Int64, limit: Int, readingAhead ahead: Int) throws(StoreError) -> LogPage {
        try logEntriesReadingAhead(host: host, after: sequence, limit: limit, ahead: ahead)
    }

    /// A daemon's own position: committed without waiting for the WAL flush (see
    /// `logRecordApplied(_:durable:)`).
    public func recordApplied(host: String, sequence: Int64) throws(StoreError) {
        try logRecordApplied([host: sequence], durable: false)
    }

    public func entries(positions: [String: Int64], limit: Int) throws(StoreError) -> [String: LogPage] {
        try logEntries(positions: positions, limit: limit)
    }

    public func recordApplied(_ positions: [String: Int64]) throws(StoreError) {
        try logRecordApplied(positions)
    }

    public func progress(hosts: [String]?) throws(StoreError) -> [LogProgress] {
        try reading { () throws(StoreError) in try logProgress(hosts: hosts) }
    }

    public func trim(maxAge: Int?, keep: Int?) throws(StoreError) -> Int {
        try logTrim(maxAge: maxAge, keep: keep)
    }
}

/// Direct-mode wake-ups: one LISTEN connection to PostgreSQL (channel `rampart_changes`). The
/// handler hears `.appended` for every verb's NOTIFY, and `.lost` once when the connection
/// closes; `start` again to reconnect.
///
/// A reader that sleeps can arm a read (`PrefetchingWakeups`): the NOTIFY that names its host
/// then sends the host's read-ahead at once, from the event loop, on this connection (otherwise
/// idle), and the reader wakes once, with the page. Why: per notified host a verb woke the
/// reader's thread for the NOTIFY, the event loop to send its read, and the reader again for
/// the answer; and the read waited for the reader's thread to be scheduled (0.12–0.24 ms on the
/// last host's path in `rampart-bench controller`, ten daemons on two cores).
public final class PostgresWakeups: PrefetchingWakeups, @unchecked Sendable {
    public let location: PostgresLocation
    private let eventLoopGroup: MultiThreadedEventLoopGroup
    private let lock = NSLock()
    private var connection: PostgresConnection?
    private var generation = 0
    /// The read the reader armed, taken by the first NOTIFY that names its host (under `lock`).
    private var armed: ArmedRead?

    /// A page read on the LISTEN connection may take this long before the reader is woken to
    /// read it itself (postgres-nio can leave a statement sent as the connection closes
    /// unanswered: vapor/postgres-nio#487).
    static let prefetchTimeout: TimeAmount = .seconds(2)

    struct ArmedRead: Sendable {
        let host: String
        let after: Int64
        let limit: Int
        let ahead: Int
        let deliver: @Sendable (PrefetchedPage?) -> Void
    }

    public func arm(host: String, after position: Int64, limit: Int, readingAhead: Int, deliver: @escaping @Sendable (PrefetchedPage?) -> Void) {
        lock.withLock { armed = ArmedRead(host: host, after: position, limit: limit, ahead: readingAhead, deliver: deliver) }
    }

    public func disarm() { lock.withLock { armed = nil } }

    /// The armed read, if this wake-up names its host (taken: one read per arming).
    private func takeArmed(naming hosts: Set<String>?) -> ArmedRead? {
        lock.withLock {
            guard let a = armed, hosts?.contains(a.host) ?? true else { return nil }
            armed = nil
            return a
        }
    }

    /// `eventLoopGroup`: as the store's (`PostgresStore.eventLoopGroup`).
    public init(location: PostgresLocation, eventLoopGroup: MultiThreadedEventLoopGroup = PostgresStore.sharedEventLoopGroup) {
        self.location = location
        self.eventLoopGroup = eventLoopGroup
    }

    deinit { stop() }

    public func start(_ handler: @escaping @Sendable (Wakeup) -> Void) throws(StoreError) {
        stop()
        var logger = Logger(label: "rampart.store.listen")
        logger.logLevel = .critical
        let config = try PostgresSyncConnection.configuration(location)
        let c: PostgresConnection
        do {
            c = try PostgresConnection.connect(on: eventLoopGroup.next(), configuration: config, id: 2, logger: logger).wait()
        } catch {
            throw StoreError(.unavailable, "cannot connect to the store \(location) to LISTEN: \(PostgresSyncConnection.describeConnecting(error, to: location))")
        }
        let myGeneration: Int = lock.withLock {
            generation += 1
            connection = c
            return generation
        }
        let reads = WakeupReads(connection: c)
        // Whether this connection is still the one in use (a stopped source delivers nothing).
        let current: @Sendable () -> Bool = { [weak self] in self?.lock.withLock { self?.generation == myGeneration } ?? false }
        // On the connection's own event loop: a live channel takes the listener at once, while
        // a listener handed to a channel that closed meanwhile (the server shutting down) is
        // dropped, which postgres-nio turns into a crash ("Notification closure had not been used").
        let added = c.eventLoop.submit { () -> Bool in
            guard !c.isClosed else { return false }
            c.addListener(channel: WakeupPayload.channel) { [weak self] _, note in
                let hosts = WakeupPayload.decode(note.payload)
                guard let read = self?.takeArmed(naming: hosts) else { return handler(.appended(hosts: hosts)) }
                reads.run(read) { page in if current() { read.deliver(page) } }
            }
            return true
        }
        guard (try? added.wait()) == true else {
            stop()
            throw StoreError(.unavailable, "the LISTEN connection to \(location) closed while it was set up")
        }
        c.closeFuture.whenComplete { [weak self] _ in
            // Only the connection still in use reports its loss (a stopped one is expected to close).
            guard let self, self.lock.withLock({ self.generation == myGeneration }) else { return }
            handler(.lost("the LISTEN connection to \(self.location) closed"))
        }
        // The LISTEN's answer, or the connection's close, or 10 s, whichever comes first:
        // postgres-nio can leave a statement sent as its connection closes unanswered
        // (vapor/postgres-nio#487), and a store going down here then held this thread, and a
        // follower's stop that joins it, for good (seen once in CI, 2026-12-04).
        let listened = c.eventLoop.makePromise(of: Void.self)
        let settled = NIOLockedValueBox(false)
        @Sendable func settle(_ result: Result<Void, any Error>) {
            // A promise is completed once: whoever gets here first.
            let first = settled.withLockedValue { done in defer { done = true }; return !done }
            if first { listened.completeWith(result) }
        }
        c.query(PostgresQuery(unsafeSQL: "LISTEN \(WakeupPayload.channel)"), logger: logger).whenComplete { r in settle(r.map { _ in () }) }
        c.closeFuture.whenComplete { _ in settle(.failure(StoreError(.unavailable, "the connection closed before the LISTEN was answered"))) }
        let timeout = c.eventLoop.scheduleTask(in: .seconds(10)) { settle(.failure(StoreError(.unavailable, "no answer to LISTEN within 10 s"))) }
        defer { timeout.cancel() }
        do {
            try listened.futureResult.wait()
        } catch {
            stop()
            throw StoreError(.unavailable, "LISTEN on the store \(location) failed: \(PostgresSyncConnection.describe(error))")
        }
    }

    public func stop() {
        let c: PostgresConnection? = lock.withLock {
            generation += 1
            defer { connection = nil }
            return connection
        }
        if let c { let closing: EventLoopFuture<Void> = c.close(); try? closing.wait() }
    }
}

/// The reads a LISTEN connection sends for its armed reader (`PostgresWakeups`): the same
/// statement as `SQLStore.logEntriesReadingAhead`, prepared once per connection. Used only on
/// the connection's event loop.
final class WakeupReads: @unchecked Sendable {
    private let connection: PostgresConnection
    private var statement: EventLoopFuture<PreparedQuery>?

    init(connection: PostgresConnection) { self.connection = connection }

    /// The read-ahead statement with typed placeholders (the host, then integers), made once.
    static let sql = PostgresSyncConnection.placeholders(SQLStore.readAheadStatement) { n in n == 1 ? "$1::text" : "$\(n)::bigint" }

    /// Sends `read`'s statement and hands `finish` its page, or nil if it failed or took
    /// longer than `PostgresWakeups.prefetchTimeout` (once either way).
    func run(_ read: PostgresWakeups.ArmedRead, _ finish: @escaping @Sendable (PrefetchedPage?) -> Void) {
        let c = connection
        let notified = DispatchTime.now().uptimeNanoseconds
        let once = NIOLockedValueBox(false)
        @Sendable func settle(_ page: PrefetchedPage?) {
            if once.withLockedValue({ done in defer { done = true }; return !done }) { finish(page) }
        }
        let timer = c.eventLoop.scheduleTask(in: PostgresWakeups.prefetchTimeout) { settle(nil) }
        let prepared = statement ?? c.prepare(query: Self.sql)
        statement = prepared
        let binds = [PostgresData(string: read.host), PostgresData(int64: read.after), PostgresData(int64: Int64(read.limit)),
                     PostgresData(int64: Int64(read.ahead)), PostgresData(int64: Int64(SQLStore.readAheadReferencedMembers))]
        prepared.flatMap { $0.execute(binds) }.whenComplete { [self] result in
            timer.cancel()
            guard case .success(let rows) = result, let table = try? PostgresSyncConnection.rows(rows, binary: true) else {
                // Prepared again next time (the statement may be what failed).
                statement = nil
                return settle(nil)
            }
            let page = SQLStore.readAheadPage(table, host: read.host, after: read.after)
            settle(PrefetchedPage(page: page, after: read.after, notified: notified, read: DispatchTime.now().uptimeNanoseconds))
        }
    }
}
