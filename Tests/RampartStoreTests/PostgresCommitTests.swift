import Foundation
import RampartCore
import RampartHarness
@testable import RampartStore
import Testing

/// A statement run outside a transaction block commits when the server reads the extended
/// protocol's Sync, after it has answered the statement; postgres-nio completes the statement
/// at that answer, so a commit that fails then (a serializable transaction that loses at
/// COMMIT, a deferred constraint) never reaches the caller: the write is rolled back and
/// reported done. Found as a rule lost by `concurrentControllersLoseNothing` under load (one
/// run in a full suite): the rules verb's `CALL` was such a statement. It commits inside the
/// `CALL` since schema version 6.
@Suite("PostgreSQL: a failed commit is never reported done", .serialized, .tags(.kernel), .rootOnly)
struct PostgresCommitTests {
    /// A deferred trigger refuses, at COMMIT, rules that mention port 4242: the verb fails and
    /// the rule is not there; the next verb works.
    @Test func aRulesVerbWhoseCommitFailsFails() throws {
        let st = try PostgresStore(url: try SharedPostgres.freshDatabase("pgcommit"), migrate: true)
        _ = try st.createGroup("web", description: nil)
        try st.db.exec("""
            CREATE FUNCTION refuse_4242() RETURNS trigger LANGUAGE plpgsql AS $f$
            BEGIN
              IF NEW.rules::text LIKE '%4242%' THEN RAISE EXCEPTION 'refused at commit'; END IF;
              RETURN NULL;
            END $f$
            """)
        try st.db.exec("""
            CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER UPDATE ON groups
              DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_4242()
            """)
        func authorize(_ port: Int) throws -> [Delivery] {
            try st.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"\#(port)","cidr":"0.0.0.0/0"}"#, "web"))
        }
        var refused: String?
        do { _ = try authorize(4242) } catch { refused = "\(error)" }
        #expect(refused?.contains("refused at commit") == true, "the verb was reported done: \(refused ?? "no error")")
        _ = try authorize(80)
        #expect(try st.group("web")!.rules.compactMap(\.ports) == [80...80])
    }

    /// A store at version 5 (the procedure without its own COMMIT) is brought to 6 by the next
    /// controller: the procedure replaced, the version recorded; a daemon refuses it until then.
    @Test func aVersionFiveStoreGetsTheProcedureReplaced() throws {
        let url = try SharedPostgres.freshDatabase("pgcommit5")
        let st = try PostgresStore(url: url, migrate: true)
        // Version 5's text: the same without the last COMMIT.
        let procedure = SQLStore.setRulesProcedure
        let last = try #require(procedure.range(of: "COMMIT;", options: .backwards))
        try st.db.exec(procedure.replacingCharacters(in: last, with: ""))
        try st.db.exec("DELETE FROM rampart_schema WHERE version >= 6")
        func commits() throws -> Int {
            let text = try st.db.query("SELECT prosrc FROM pg_proc WHERE proname = 'rampart_set_rules'", []).first?.first ?? nil
            return (text ?? "").components(separatedBy: "COMMIT;").count - 1
        }
        #expect(try commits() == 1)
        #expect(throws: StoreError.self) { try PostgresStore(url: url, migrate: false) }
        let upgraded = try PostgresStore(url: url, migrate: true)
        #expect(try upgraded.installedSchemaVersion() == PostgresStore.schemaVersion)
        #expect(try commits() == 2)
    }
}
