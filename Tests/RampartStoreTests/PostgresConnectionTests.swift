import Foundation
import RampartCore
import RampartHarness
@testable import RampartStore
import Testing

/// The blocking PostgreSQL connection under the store: prepared statements (their cache, its
/// bound, the values they read back) and the rules verb's server-side routine.
@Suite("PostgreSQL connection: prepared statements and routines", .serialized, .tags(.kernel), .rootOnly)
struct PostgresConnectionTests {
    func connection() throws -> PostgresSyncConnection {
        let c = PostgresSyncConnection(location: try PostgresLocation(url: try SharedPostgres.freshDatabase("pgconn")))
        try c.connect()
        return c
    }

    /// What this session holds prepared (the view is per session: asked on the same connection).
    func preparedCount(_ c: PostgresSyncConnection) throws -> Int {
        Int(try c.query("SELECT count(*) FROM pg_prepared_statements", []).first?[0] ?? "") ?? -1
    }

    @Test func statementsWithArgumentsArePreparedOnceAndReadTheSameAsUnnamedOnes() throws {
        let c = try connection()
        // Every type the store reads, through a prepared statement (arguments) and an unnamed
        // one (none): the same text. postgres-nio labels a prepared statement's binary cells as
        // text; read as text they were garbage.
        let columns = "42::int4, 7::int8, 3::int2, true, false, 'tap1'::text, NULL::text, 2.5::float8, ARRAY['a','b']::text[]::text"
        let unnamed = try c.query("SELECT \(columns)", [])
        let viaPrepared = try c.query("SELECT \(columns), ?, ?", [.text("x"), .int(-5)])
        #expect(unnamed == [["42", "7", "3", "1", "0", "tap1", nil, "2.5", "{a,b}"]])
        #expect(viaPrepared == [unnamed[0] + ["x", "-5"]])
        #expect(try preparedCount(c) == 1)
        // The same text again runs by name: nothing more is prepared; a NULL argument is typed
        // by its context (another statement text).
        _ = try c.query("SELECT \(columns), ?, ?", [.text("y"), .int(1)])
        #expect(try preparedCount(c) == 1)
        #expect(try c.query("SELECT coalesce(?, 'none')", [.null]) == [["none"]])
        #expect(try preparedCount(c) == 2)
    }

    @Test func thePreparedCacheIsBoundedAndStatementsBeyondItStillRun() throws {
        let c = try connection()
        let n = PostgresSyncConnection.preparedLimit + 20
        for k in 0..<n {
            // Distinct texts, as a statement built with a varying number of terms makes.
            #expect(try c.query("SELECT ? || '-\(k)'", [.text("s")]) == [["s-\(k)"]])
        }
        #expect(try preparedCount(c) == PostgresSyncConnection.preparedLimit)
    }

    @Test func aReconnectedConnectionPreparesAgain() throws {
        let c = try connection()
        #expect(try c.query("SELECT ?::text", [.text("a")]) == [["a"]])
        c.close()
        // The cache went with the session: a statement prepared on the old one runs again.
        #expect(try c.query("SELECT ?::text", [.text("b")]) == [["b"]])
        #expect(try preparedCount(c) == 1)
    }

    @Test func aServerErrorKeepsItsStateAndARoutinesMessageIsKeptAsItIs() throws {
        let st = try PostgresStore(url: try SharedPostgres.freshDatabase("pgconn"), migrate: true)
        _ = try st.createGroup("web", description: nil)
        let rule = try RulesCodec.decode(#"[{"protocol":"tcp","ports":"22","group":"nosuch"}]"#, group: "web", references: ["nosuch"])[0]
        do {
            _ = try st.authorize(group: "web", rule: rule)
            Issue.record("a rule naming an unknown group was stored")
        } catch {
            #expect(error.kind == .notFound)
            #expect(error.message == "unknown group nosuch")
        }
        #expect(try st.group("web")?.rules == [])
        #expect(try st.progress(hosts: nil).allSatisfy { $0.head == 0 })
    }

    /// A statement sent while the server closes its connection (a backend terminated, as a
    /// server restart does) is answered at once: it fails as `.unavailable`, or runs on a new
    /// connection. postgres-nio can leave such a statement unanswered (vapor/postgres-nio#487):
    /// it then waited for the whole statement timeout (a relay stalled 30 s after a restart).
    @Test func aStatementSentAsItsConnectionClosesIsAnsweredAtOnce() throws {
        let c = try connection()
        c.statementTimeout = .seconds(20)
        let killer = try connection()
        var failed = 0, slowest = 0.0
        // Every statement here may meet the close (the backend acts on the signal when it
        // next checks for interrupts): each must fail as `.unavailable` or succeed, at once.
        func timed(_ sql: String, _ args: [SQLValue]) -> [[String?]]? {
            let t = Date()
            defer { slowest = max(slowest, Date().timeIntervalSince(t)) }
            do { return try c.query(sql, args) } catch {
                #expect(error.kind == .unavailable, "\(error)")
                failed += 1
                return nil
            }
        }
        for k in 0..<200 {
            guard let pid = timed("SELECT pg_backend_pid()", [])?.first?[0] else { continue }
            _ = try killer.query("SELECT pg_terminate_backend(\(pid))", [])
            // Vary the moment the statement meets the close.
            if k % 4 != 0 { usleep(UInt32(k % 4) * 50) }
            _ = timed("SELECT ?::text", [.text("\(k)")])
        }
        #expect(slowest < 5, "a statement waited \(slowest) s")
        #expect(failed > 0, "no statement met a closing connection: the test did not test")
    }

    /// A statement the server does not answer within the timeout fails as `.unavailable`, when
    /// the timeout ends and not when the server would have answered, and its connection is given
    /// up; the next statement runs on a new one. One that answers in time is untouched by its
    /// timer (statements sent, timed and watched from the event loop, `wait`).
    @Test func aStatementUnansweredWithinTheTimeoutIsGivenUp() throws {
        let c = try connection()
        c.statementTimeout = .milliseconds(1500)
        let pid = try #require(try c.query("SELECT pg_backend_pid()", []).first?[0])
        let t = Date()
        do {
            _ = try c.query("SELECT pg_sleep(?)", [.int(6)])
            Issue.record("a 6 s statement returned within a 1.5 s timeout")
        } catch {
            #expect(error.kind == .unavailable && error.message.contains("did not answer within 1 s"), "\(error)")
        }
        let waited = Date().timeIntervalSince(t)
        #expect(waited >= 1.4 && waited < 5, "gave up after \(waited) s")
        let again = try #require(try c.query("SELECT pg_backend_pid()", []).first?[0])
        #expect(again != pid, "the connection that timed out was kept")
        for k in 0..<50 { #expect(try c.query("SELECT ?::bigint + 1", [.int(Int64(k))]) == [["\(k + 1)"]]) }
    }

    /// A closed connection's callback fails the statement of that connection only: one that
    /// closed late, after a new connection took its place, leaves the new statement alone.
    @Test func aClosedConnectionFailsOnlyItsOwnStatement() {
        let pending = PendingStatement()
        final class Failures: @unchecked Sendable {
            let lock = NSLock()
            var seen: [String] = []
        }
        let failed = Failures()
        pending.set(connection: 2) { e in failed.lock.withLock { failed.seen.append("\(e)") } }
        pending.fail(StoreError(.unavailable, "old"), connection: 1)
        #expect(failed.lock.withLock { failed.seen }.isEmpty)
        pending.fail(StoreError(.unavailable, "current"), connection: 2)
        #expect(failed.lock.withLock { failed.seen }.count == 1)
        pending.clear()
        pending.fail(StoreError(.unavailable, "after"), connection: 2)
        #expect(failed.lock.withLock { failed.seen }.count == 1, "nothing waits any more")
    }
}
