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
}
