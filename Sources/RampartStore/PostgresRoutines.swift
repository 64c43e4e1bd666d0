import Foundation
import RampartCore

/// Server-side routines of the PostgreSQL store (schema versions 5 to 10; the log read with its
/// refreshes' reads is in PostgresReadAhead.swift), and the Swift that calls them.
///
/// Why: on PostgreSQL every statement is a round trip (postgres-nio speaks the extended
/// protocol only: one statement per message, `BEGIN` and `COMMIT` included), and on this
/// 2-core machine a round trip to a local server costs 0.3–0.5 ms whatever the statement does.
/// A rules verb was seven of them (BEGIN, read the group, write its rules, the fan-out, the hosts'
/// locks, the log rows, COMMIT). Measured with pgbench on the fleet bench's data (one client,
/// same hour): 4.6 ms as seven statements, 1.1 ms as a read and one `CALL` (docs/postgres.md).
///
/// - `rampart_log_append(hosts, refreshes)`: the change log's append (`appendToChangeLog`) in
///   one statement: each host's advisory lock in byte order, the NOTIFY, the rows.
/// - `rampart_set_rules(...)`: a rules verb's whole write as one serializable transaction of its
///   own: the procedure ends the transaction its `CALL` began (empty) and sets the next one
///   serializable, then compares-and-sets the group's rules, rewrites its references when
///   asked to, computes the fan-out and appends it. The caller read the rules just before (one
///   statement, outside any transaction) and computed the new ones; if another verb changed
///   them meanwhile, nothing is written and the caller reads again (`applied: false`).
///   Serializable as every verb is, so a member joining the group concurrently is either seen by
///   the fan-out or makes one of the two transactions fail and run again. It commits before it
///   returns: a commit at the end of the statement would be the extended protocol's, at Sync,
///   whose failure postgres-nio never reports (`PostgresCommitTests`).
extension SQLStore {
    /// Schema version 5.
    static let routinesSchema: [String] = [
        """
        CREATE OR REPLACE FUNCTION rampart_log_append(hosts text[], refreshes text[]) RETURNS bigint[]
        LANGUAGE plpgsql AS $fn$
        DECLARE
          h text;
          payload text;
          seqs bigint[];
        BEGIN
          IF cardinality(hosts) IS DISTINCT FROM cardinality(refreshes) THEN
            RAISE EXCEPTION 'rampart_log_append: % hosts for % refreshes', cardinality(hosts), cardinality(refreshes);
          END IF;
          IF coalesce(cardinality(hosts), 0) = 0 THEN RETURN '{}'; END IF;
          -- Every writer of the log locks its hosts in this order (byte order), so two verbs never
          -- wait for each other in a cycle. Held until COMMIT: a host's numbers grow in commit order.
          FOR h IN SELECT DISTINCT x COLLATE "C" FROM unnest(hosts) AS u(x) ORDER BY 1 LOOP
            PERFORM pg_advisory_xact_lock(\(hostLockClass), hashtext(h));
          END LOOP;
          SELECT string_agg(x, ',' ORDER BY x) INTO payload FROM (SELECT DISTINCT x COLLATE "C" AS x FROM unnest(hosts) AS u(x)) d;
          -- Queued now, delivered at COMMIT, dropped by a rollback. `*`: the list would not fit.
          PERFORM pg_notify('\(WakeupPayload.channel)', CASE WHEN octet_length(payload) <= \(WakeupPayload.limit) THEN payload ELSE '*' END);
          -- Numbered after the locks, in the order given (the sort comes before nextval).
          WITH ins AS (INSERT INTO change_log(host, seq, refresh)
                       SELECT x, nextval('change_log_seq'), r FROM unnest(hosts, refreshes) WITH ORDINALITY AS u(x, r, n) ORDER BY n
                       RETURNING seq)
          SELECT array_agg(seq ORDER BY seq) INTO seqs FROM ins;
          RETURN seqs;
        END
        $fn$
        """,
        setRulesProcedure,
    ]

    /// How each verb's procedure begins: it ends the transaction its `CALL` began (empty: only a
    /// `CALL` outside a transaction block may do this, and `SQLStore` never calls one inside
    /// one), makes the next serializable, and gives it generic plans (schema version 10,
    /// `genericPlansSchema`). The same lines in all three procedures, indented as their bodies.
    static let ownSerializableTransaction = [
        "COMMIT;",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;",
        "-- Generic plans for the rest of this transaction (schema version 10, `genericPlansSchema`).",
        "PERFORM set_config('plan_cache_mode', 'force_generic_plan', true);",
    ].joined(separator: "\n  ")

    /// The rules verb's procedure (versions 5 and 6 create the same text: a store at version
    /// 5 gets it replaced by 6).
    static let setRulesProcedure = """
        CREATE OR REPLACE PROCEDURE rampart_set_rules(g text, old_rules text, new_rules text, new_refs text[], refresh text,
                                                      INOUT result text DEFAULT NULL)
        LANGUAGE plpgsql AS $fn$
        DECLARE
          r text;
          hosts text[];
          seqs bigint[];
        BEGIN
          -- Only a CALL outside a transaction block may do this (SQLStore never calls it inside one).
          \(ownSerializableTransaction)
          UPDATE groups SET rules = new_rules WHERE id = g AND rules = old_rules;
          IF NOT FOUND THEN
            result := '{"applied":false}';
            RETURN;
          END IF;
          IF new_refs IS NOT NULL THEN
            DELETE FROM group_refs WHERE group_id = g;
            FOREACH r IN ARRAY new_refs LOOP
              IF NOT EXISTS (SELECT 1 FROM groups WHERE id = r) THEN
                RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = 'unknown group ' || r;
              END IF;
              INSERT INTO group_refs(group_id, ref) VALUES (g, r) ON CONFLICT DO NOTHING;
            END LOOP;
          END IF;
          SELECT coalesce(array_agg(DISTINCT i.host), '{}') INTO hosts
            FROM instance_groups ig JOIN instances i ON i.id = ig.instance WHERE ig.group_id = g;
          seqs := rampart_log_append(hosts, array_fill(refresh, ARRAY[cardinality(hosts)]));
          result := json_build_object('applied', true, 'hosts', to_json(hosts), 'seqs', to_json(seqs))::text;
          -- Committed here, inside the CALL, so a commit that fails (a serializable transaction
          -- that loses at COMMIT) fails the CALL. Left to the end of the statement, the commit
          -- came at the extended protocol's Sync, after the server had answered the CALL, and
          -- postgres-nio reported the write done while it was rolled back (schema version 6).
          COMMIT;
        END
        $fn$
        """

    /// Schema version 6: `rampart_set_rules` commits inside the `CALL` (see `setRulesProcedure`).
    static let commitInsideSchema: [String] = [setRulesProcedure]

    /// Schema version 7: the change log's read (`logEntries(positions:limit:)`) as a function.
    ///
    /// Why: the read was one statement joining `unnest` of the hosts and positions to the log
    /// (`LATERAL … LIMIT`), planned on every call because a generic plan for it scanned the
    /// whole log. A relay reads after nearly every verb, and that planning and join were most
    /// of what the relays cost the server: in `rampart-bench fleet` (2,500 hosts, 8 controllers)
    /// a verb cost 0.45–0.51 ms of server CPU with nobody reading the log and 1.07–1.13 ms with
    /// two relays reading, a quarter of their reads' time in the planner. Here each host takes
    /// two statements of one host, each answered by a primary key (its trim mark; its rows after
    /// the position), and a third (its last number) only when the rows cannot tell it (none
    /// came, or as many as the limit); plpgsql caches their plans per connection, so nothing is
    /// planned after the first calls (plans that version 8 keeps to the key: `logPlansSchema`).
    /// Measured with pgbench (ten hosts, two rows each, 100,000 rows in the log, one client):
    /// 0.36 ms a read planned each time, 0.23 ms as three statements per host, 0.21 ms as this
    /// (a `SELECT 1` costs 0.06 ms); one statement per host with the three as subqueries, 0.26 ms.
    /// `STABLE`: every statement inside runs on the calling statement's snapshot, so the head,
    /// the trim mark and the rows still agree as one statement's did. Hosts come back in the
    /// order given, each host's rows in order, and a host without rows after its position (or
    /// trimmed past it) as one row without a sequence number.
    static let logReadSchema: [String] = [
        """
        CREATE OR REPLACE FUNCTION rampart_log_read(hosts text[], afters bigint[], lim bigint)
        RETURNS TABLE(log_host text, log_head bigint, log_trimmed bigint, log_seq bigint, log_refresh text)
        LANGUAGE plpgsql STABLE AS $fn$
        DECLARE
          i int;
          k int;
          n int;
          seqs bigint[];
          refs text[];
        BEGIN
          IF cardinality(hosts) IS DISTINCT FROM cardinality(afters) THEN
            RAISE EXCEPTION 'rampart_log_read: % hosts for % positions', cardinality(hosts), cardinality(afters);
          END IF;
          FOR i IN 1 .. coalesce(cardinality(hosts), 0) LOOP
            log_host := hosts[i];
            SELECT c.trimmed_through INTO log_trimmed FROM change_log_heads c WHERE c.host = hosts[i];
            log_trimmed := coalesce(log_trimmed, 0);
            n := 0;
            IF afters[i] >= log_trimmed THEN
              SELECT array_agg(r.seq ORDER BY r.seq), array_agg(r.refresh ORDER BY r.seq) INTO seqs, refs
                FROM (SELECT r.seq, r.refresh FROM change_log r WHERE r.host = hosts[i] AND r.seq > afters[i]
                      ORDER BY r.seq LIMIT lim) r;
              n := coalesce(cardinality(seqs), 0);
            END IF;
            IF n > 0 AND n < lim THEN
              -- Every row after the position came: the last is the host's last.
              log_head := greatest(seqs[n], log_trimmed);
            ELSE
              SELECT max(m.seq) INTO log_head FROM change_log m WHERE m.host = hosts[i];
              log_head := greatest(coalesce(log_head, 0), log_trimmed);
            END IF;
            IF n = 0 THEN
              log_seq := NULL;
              log_refresh := NULL;
              RETURN NEXT;
            END IF;
            FOR k IN 1 .. n LOOP
              log_seq := seqs[k];
              log_refresh := refs[k];
              RETURN NEXT;
            END LOOP;
          END LOOP;
        END
        $fn$
        """,
    ]

    /// Schema version 8: the change log's statements keep to their indexes whatever the log's
    /// size was when their plans were made.
    ///
    /// Why: plpgsql (like every prepared statement of `PostgresSyncConnection`) settles on a
    /// generic plan after five calls and keeps it for the connection's life, until the table's
    /// statistics change. A reader that connects while the log is empty (a new store, a
    /// controller that has not written yet, a log trimmed to nothing) plans its reads for an
    /// empty table, where a sequential scan costs nothing, and then scans the whole log on every
    /// read while it grows, until autovacuum next analyzes it. Measured: after ten reads of an
    /// empty log, a read of 100,000 rows took 9.7 ms instead of 0.03 ms; in `rampart-bench
    /// controller` the ten daemons' reads and recorded positions scanned the log's ~1,500 rows
    /// 1,600 times per series, 0.2–0.5 ms a read (the server's CPU per members change: 10.8 ms
    /// before; 6.6–10.8 ms with this alone in a noisy hour; 5.0–7.9 ms with schema 9 too). With
    /// `enable_seqscan` off for these functions only, every plan they make takes the primary
    /// key (a sequential scan is still taken where nothing else can answer, which here never
    /// happens). The recorded position is the same write as before, moved into a function so
    /// that it carries the setting, and made per host (see its comment).
    static let logPlansSchema: [String] = [
        "ALTER FUNCTION rampart_log_read(text[], bigint[], bigint) SET enable_seqscan = off",
        """
        CREATE OR REPLACE FUNCTION rampart_record_applied(hosts text[], seqs bigint[]) RETURNS void
        LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
        DECLARE
          i int;
        BEGIN
          IF cardinality(hosts) IS DISTINCT FROM cardinality(seqs) THEN
            RAISE EXCEPTION 'rampart_record_applied: % hosts for % positions', cardinality(hosts), cardinality(seqs);
          END IF;
          -- One statement per host, on scalars: the same write as one statement over
          -- unnest(hosts, seqs) took 0.17 ms more per call with enable_seqscan off (pgbench;
          -- apparently planned again on every call), this none.
          FOR i IN 1 .. coalesce(cardinality(hosts), 0) LOOP
            INSERT INTO host_progress(host, applied_seq, applied_at)
            VALUES (hosts[i], LEAST(seqs[i], GREATEST(COALESCE((SELECT max(m.seq) FROM change_log m WHERE m.host = hosts[i]), 0),
                                                      COALESCE((SELECT c.trimmed_through FROM change_log_heads c WHERE c.host = hosts[i]), 0))), now())
            ON CONFLICT(host) DO UPDATE SET applied_seq = GREATEST(host_progress.applied_seq, excluded.applied_seq), applied_at = now();
          END LOOP;
        END
        $fn$
        """,
    ]

    /// Schema version 9: an instance added or removed in one round trip.
    ///
    /// Why: `addInstance` as a transaction was eleven round trips on PostgreSQL (BEGIN, the
    /// existence check, the host row, each group's check, the old group rows, the instance, its
    /// group rows, the address check, each group's fan-out, the log append, COMMIT) and
    /// `removeInstance` eight; a members change's COMMIT was 2–4 ms of its 10-host verb →
    /// applied. Each procedure is the verb's whole write as one serializable transaction of its
    /// own, as `rampart_set_rules` is (it ends the transaction its `CALL` began, and commits
    /// before it returns). It writes only what the transaction would accept: when the instance
    /// exists (or, removing, does not), a group does not, or another instance of the host has
    /// its interface or one of its addresses (`validateMember`'s query), it writes nothing and
    /// answers `applied: false`, and the caller runs the verb as a transaction, which refuses it
    /// in the words every store uses (or finds it possible by then). The instance's own fields
    /// are checked by the caller before the call.
    static let instanceRoutinesSchema: [String] = [
        // The address check reads every instance of the host: from this index alone (an
        // index-only scan of the host's entries, ~1 page per 100 instances once vacuumed)
        // instead of one heap page per instance (~1,000 at a host-1k). It also serves every
        // lookup by host that `instances_host` served.
        "CREATE INDEX IF NOT EXISTS instances_host_addresses ON instances(host) INCLUDE (id, interface, ips)",
        "DROP INDEX IF EXISTS instances_host",
        // Who hears of a change to these groups' members: every host with a member of a group
        // whose rules reference one of them (`SQLStore.membersFanOut`), one row per host and group.
        """
        CREATE OR REPLACE FUNCTION rampart_members_fan_out(groups text[], OUT hosts text[], OUT refreshes text[])
        LANGUAGE plpgsql STABLE AS $fn$
        DECLARE
          g text;
          h text;
        BEGIN
          -- One query per group, on a scalar: written as one query over `ref = ANY(groups)`,
          -- its generic plan (estimated for ten groups) never beat the custom ones (for one), so
          -- it was planned again on every call: 0.38 ms a call against 0.086 ms (pgbench).
          hosts := '{}';
          refreshes := '{}';
          FOR g IN SELECT DISTINCT x FROM unnest(groups) AS u(x) LOOP
            FOR h IN SELECT DISTINCT i.host FROM group_refs r JOIN instance_groups ig ON ig.group_id = r.group_id
                     JOIN instances i ON i.id = ig.instance WHERE r.ref = g LOOP
              hosts := hosts || h;
              refreshes := refreshes || ('members:' || g);
            END LOOP;
          END LOOP;
        END
        $fn$
        """,
        // The fan-out and the instance's own host's refresh, logged in the order the
        // transaction's verb logs its deliveries (sorted: by host, a host's members refreshes
        // before its instance refresh, each kind by id; ids are ASCII, so byte order is Swift's),
        // so that a host's log reads the same whichever path wrote it. Answers the procedure's
        // result.
        """
        CREATE OR REPLACE FUNCTION rampart_log_instance_verb(hosts text[], refreshes text[], ihost text, iid text) RETURNS text
        LANGUAGE plpgsql AS $fn$
        DECLARE
          seqs bigint[];
        BEGIN
          SELECT array_agg(x ORDER BY x COLLATE "C", r LIKE 'instance:%', r COLLATE "C"),
                 array_agg(r ORDER BY x COLLATE "C", r LIKE 'instance:%', r COLLATE "C")
            INTO hosts, refreshes
            FROM unnest(hosts || ihost, refreshes || ('instance:' || iid)) AS u(x, r);
          seqs := rampart_log_append(hosts, refreshes);
          RETURN json_build_object('applied', true, 'hosts', to_json(hosts), 'refreshes', to_json(refreshes), 'seqs', to_json(seqs))::text;
        END
        $fn$
        """,
        addInstanceProcedure,
        removeInstanceProcedure,
    ]

    /// An instance added in one `CALL` (schema version 9; 10 creates it again with generic plans).
    static let addInstanceProcedure = """
        CREATE OR REPLACE PROCEDURE rampart_add_instance(iid text, ihost text, iips text, iinterface text, imac text,
                                                         igroups text[], INOUT result text DEFAULT NULL)
        LANGUAGE plpgsql AS $fn$
        DECLARE
          hosts text[];
          refreshes text[];
        BEGIN
          \(ownSerializableTransaction)
          IF EXISTS (SELECT 1 FROM instances WHERE id = iid)
             OR EXISTS (SELECT 1 FROM unnest(igroups) AS u(x) WHERE NOT EXISTS (SELECT 1 FROM groups WHERE id = u.x))
             OR EXISTS (SELECT 1 FROM instances i WHERE i.host = ihost AND i.id <> iid
                        AND (i.interface = iinterface
                             OR EXISTS (SELECT 1 FROM unnest(string_to_array(iips, ',')) AS a(ip)
                                        WHERE (',' || i.ips || ',') LIKE '%,' || a.ip || ',%'))) THEN
            result := '{"applied":false}';
            RETURN;
          END IF;
          INSERT INTO hosts(name) VALUES (ihost) ON CONFLICT DO NOTHING;
          INSERT INTO instances(id, host, ips, interface, mac) VALUES (iid, ihost, iips, iinterface, imac);
          -- A group named twice keeps its first position (as the transaction's loop does).
          INSERT INTO instance_groups(instance, position, group_id)
            SELECT iid, min(n) - 1, x FROM unnest(igroups) WITH ORDINALITY AS u(x, n) GROUP BY x;
          -- The fan-out after the write, as the transaction's verb takes it.
          SELECT * INTO hosts, refreshes FROM rampart_members_fan_out(igroups);
          result := rampart_log_instance_verb(hosts, refreshes, ihost, iid);
          COMMIT;
        END
        $fn$
        """

    /// An instance removed in one `CALL` (schema version 9; 10 creates it again with generic plans).
    static let removeInstanceProcedure = """
        CREATE OR REPLACE PROCEDURE rampart_remove_instance(iid text, INOUT result text DEFAULT NULL)
        LANGUAGE plpgsql AS $fn$
        DECLARE
          ihost text;
          hosts text[];
          refreshes text[];
        BEGIN
          \(ownSerializableTransaction)
          SELECT i.host INTO ihost FROM instances i WHERE i.id = iid;
          IF NOT FOUND THEN
            result := '{"applied":false}';
            RETURN;
          END IF;
          -- The fan-out before the delete: the one after it can only name fewer hosts (the
          -- transaction's verb takes both and their union, which is this one).
          SELECT * INTO hosts, refreshes FROM rampart_members_fan_out(ARRAY(SELECT group_id FROM instance_groups WHERE instance = iid));
          DELETE FROM instance_groups WHERE instance = iid;
          DELETE FROM instances WHERE id = iid;
          result := rampart_log_instance_verb(hosts, refreshes, ihost, iid);
          COMMIT;
        END
        $fn$
        """

    /// Schema version 10, the procedures' part: each verb's procedure plans its statements once
    /// per connection (`plan_cache_mode = force_generic_plan` for its own transaction, set after
    /// its `SET TRANSACTION`: a procedure that commits may not carry a `SET` clause). With
    /// `pg_stat_statements` tracking planning, the add's existence-and-address check was planned
    /// on every call (125 µs of planning to 130 µs of execution: over arrays of unknown size its
    /// generic plan looked dearer than each custom one). pgbench, an add and a remove on the
    /// `--quick` cloud, one client: 2.1–2.4 ms the pair, 1.73–1.83 ms with generic plans.
    static let genericPlansSchema: [String] = [setRulesProcedure, addInstanceProcedure, removeInstanceProcedure]

    /// Schema version 13: an added instance's interface and addresses are checked against its
    /// host's from indexes, so that the check costs the same at a host of 1,000 instances as at
    /// one of 10.
    ///
    /// Why: versions 9–12 read every instance of the host (from `instances_host_addresses`, an
    /// index-only scan) and matched each one's address list with `LIKE`: 0.6–0.95 ms of the verb
    /// at a host-1k host (`EXPLAIN ANALYZE`, `rampart-bench controller`'s hv0), on the path of
    /// every instance added there. Now the interface is one lookup in `(host, interface)` and the
    /// addresses one in a GIN index of each instance's addresses prefixed with its host
    /// (`rampart_host_addresses`: "hv1 10.0.1.11"); overlapping arrays are exactly the shared
    /// addresses the `LIKE` found (an address's text has no comma and no wildcard, a host name
    /// no comma and no space: `Checks.isValidID`, so the spliced text splits unambiguously). Both in
    /// `rampart_instance_clashes`, called by version 10's procedure in place of the walk
    /// (`addInstanceIndexedProcedure`).
    static let instanceChecksSchema: [String] = [
        "CREATE INDEX IF NOT EXISTS instances_host_interface ON instances(host, interface)",
        // One expression of built-in functions, so that PostgreSQL inlines it into the index and
        // into the check (an `ARRAY(SELECT … unnest …)` body ran as a function call per row: a
        // bulk insert of 100,000 instances took 589 ms with the index, 247 ms with this, 29 ms
        // without an index).
        """
        CREATE OR REPLACE FUNCTION rampart_host_addresses(host text, ips text) RETURNS text[]
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
          SELECT CASE WHEN ips = '' THEN '{}'::text[] ELSE string_to_array(host || ' ' || replace(ips, ',', ',' || host || ' '), ',') END
        $fn$
        """,
        // Without GIN's pending list (`fastupdate`): every lookup would scan the list of entries
        // not yet merged (up to 4 MB, merged only by vacuum or by the insert that fills it, which
        // then takes tens of milliseconds), so a check's cost would grow with recent adds.
        "CREATE INDEX IF NOT EXISTS instances_addresses ON instances USING gin (rampart_host_addresses(host, ips)) WITH (fastupdate = off)",
        // Bitmap scans only. The address lookup's generic plan cannot know the addresses and
        // expects thousands of matches, so as an `EXISTS` it preferred any scan that finds the
        // first one early: a sequential scan (0.4–0.9 s a verb at cloud-1M's million instances,
        // `rampart-bench controller`) or, with those off, a walk of `instances_host_addresses`.
        // A bitmap scan needs an index condition, which only the GIN index offers.
        """
        CREATE OR REPLACE FUNCTION rampart_instance_clashes(c_host text, c_interface text, c_ips text, c_id text) RETURNS boolean
        LANGUAGE plpgsql STABLE SET enable_seqscan = off SET enable_indexscan = off SET enable_indexonlyscan = off AS $fn$
        BEGIN
          RETURN \(instanceClashes);
        END
        $fn$
        """,
        addInstanceIndexedProcedure,
    ]

    /// Whether another instance than `c_id` of host `c_host` has interface `c_interface` or one
    /// of the addresses `c_ips` (`rampart_instance_clashes`).
    static let instanceClashes = """
        EXISTS (SELECT 1 FROM instances i WHERE i.host = c_host AND i.interface = c_interface AND i.id <> c_id)
            OR EXISTS (SELECT 1 FROM instances i WHERE rampart_host_addresses(i.host, i.ips) && rampart_host_addresses(c_host, c_ips) AND i.id <> c_id)
        """

    /// Versions 9–12's check of an added instance against its host's others, and version 13's.
    static let hostScanCheck = """
             OR EXISTS (SELECT 1 FROM instances i WHERE i.host = ihost AND i.id <> iid
                        AND (i.interface = iinterface
                             OR EXISTS (SELECT 1 FROM unnest(string_to_array(iips, ',')) AS a(ip)
                                        WHERE (',' || i.ips || ',') LIKE '%,' || a.ip || ',%'))) THEN
        """
    static let indexedCheck = """
             OR rampart_instance_clashes(ihost, iinterface, iips, iid) THEN
        """

    /// `rampart_add_instance` with `indexedCheck` in place of `hostScanCheck` (schema version 13).
    static let addInstanceIndexedProcedure = addInstanceProcedure.replacingOccurrences(of: hostScanCheck, with: indexedCheck)

    /// A rules verb in two round trips (PostgreSQL): the group's rules read, `change` applied
    /// to them, the result written by `rampart_set_rules` if nobody changed them meanwhile
    /// (else read again).
    func changeRulesOnServer(_ group: String, _ change: ([Rule]) throws(StoreError) -> [Rule]) throws(StoreError) -> [Delivery] {
        try untilSettled(gaveUp: "store: group \(group)'s rules kept changing under this verb") { () throws(StoreError) in
            try setRulesOnce(group, change)
        }
    }

    /// `addInstance` as one `CALL` (`rampart_add_instance`); nil when the procedure declined
    /// (the verb would be refused, or might be: the caller runs it as a transaction).
    func addInstanceOnServer(_ id: String, _ inst: Instance) throws(StoreError) -> [Delivery]? {
        try untilSettled(gaveUp: "store: instance \(id)'s verb kept conflicting with others") { () throws(StoreError) -> ServerAnswer? in
            let rows = try db.query("CALL rampart_add_instance(?, ?, ?, ?, ?, CAST(? AS text[]), NULL)",
                                    .text(id), .text(inst.host), .text(inst.ips.map(\.description).joined(separator: ",")),
                                    inst.interface.map { .text($0) } ?? .null, inst.mac.map { .text($0.description) } ?? .null,
                                    .text(Self.arrayLiteral(inst.groups)))
            return try Self.serverAnswer(rows, from: "rampart_add_instance")
        }.deliveries
    }

    /// `removeInstance` as one `CALL` (`rampart_remove_instance`); nil when the procedure
    /// declined (no such instance: the caller's transaction says so).
    func removeInstanceOnServer(_ id: String) throws(StoreError) -> [Delivery]? {
        try untilSettled(gaveUp: "store: instance \(id)'s verb kept conflicting with others") { () throws(StoreError) -> ServerAnswer? in
            try Self.serverAnswer(try db.query("CALL rampart_remove_instance(?, NULL)", .text(id)), from: "rampart_remove_instance")
        }.deliveries
    }

    /// What an instance procedure answered: its deliveries, or that it declined.
    struct ServerAnswer {
        var deliveries: [Delivery]?
    }

    /// Reads a procedure's answer (`{"applied": false}`, or `applied`, `hosts`, `refreshes` and
    /// `seqs`, one of each per row it logged; without `refreshes`, every row's is `refresh`).
    static func serverAnswer(_ rows: [[String?]], from procedure: String, refresh: Refresh? = nil) throws(StoreError) -> ServerAnswer {
        guard let text = rows.first?[0] ?? nil, let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
              let applied = object["applied"] as? Bool else {
            throw StoreError(.database, "store: \(procedure) answered something this version cannot read")
        }
        guard applied else { return ServerAnswer(deliveries: nil) }
        let hosts = object["hosts"] as? [String] ?? []
        let refreshes = (object["refreshes"] as? [String])?.map(Refresh.init(logText:)) ?? hosts.map { _ in refresh }
        let seqs = (object["seqs"] as? [NSNumber] ?? []).map(\.int64Value)
        guard hosts.count == seqs.count, refreshes.count == seqs.count, refreshes.allSatisfy({ $0 != nil }) else {
            throw StoreError(.database, "store: \(procedure) logged \(seqs.count) rows for \(hosts.count) hosts and \(refreshes.count) refreshes")
        }
        return ServerAnswer(deliveries: (0..<hosts.count).map { Delivery(host: hosts[$0], refresh: refreshes[$0]!, sequence: seqs[$0]) }.sorted())
    }

    /// Runs `attempt` (one server-side verb's round trips) until it answers: again when it
    /// answers nil (what it read changed before its write) or loses a serialization race, after
    /// a random pause that doubles each time, as `inTransaction` does; for at most
    /// `serializationRetrySeconds`. The procedures' "unknown group" (SQLSTATE P0002) is
    /// `.notFound`.
    func untilSettled<T>(gaveUp: String, _ attempt: () throws(StoreError) -> T?) throws(StoreError) -> T {
        try locked { () throws(StoreError) -> T in
            var tries = 0
            let start = DispatchTime.now().uptimeNanoseconds
            while true {
                tries += 1
                do throws(StoreError) {
                    if let answer = try attempt() { return answer }
                } catch {
                    guard let state = error.sqlState else { throw error }
                    if state == "P0002" { throw StoreError(.notFound, error.message) }
                    guard error.isTransientConflict else { throw error }
                }
                let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                guard elapsed < Self.serializationRetrySeconds else {
                    throw StoreError(.database, "\(gaveUp) for \(Int(Self.serializationRetrySeconds)) s")
                }
                let ceiling = min(50_000, 250 << min(tries, 8))  // µs, as `inTransaction`
                usleep(UInt32.random(in: 0...UInt32(ceiling)))
            }
        }
    }

    /// One attempt: nil when the rules changed between the read and the write.
    private func setRulesOnce(_ group: String, _ change: ([Rule]) throws(StoreError) -> [Rule]) throws(StoreError) -> [Delivery]? {
        let rows = try db.query("SELECT rules, \(dialect.groupRefsColumn) FROM groups WHERE id = ?", .text(group))
        guard let row = rows.first else { throw StoreError(.notFound, "unknown group \(group)") }
        let stored = row[0] ?? "[]"
        let old = try Self.rules(stored, references: row[1], group: group)
        let new = try change(old)
        let refs = Self.referencedGroups(new)
        let refsArgument: SQLValue = refs == Self.referencedGroups(old) ? .null : .text(Self.arrayLiteral(refs.sorted()))
        let refresh = Refresh.rules(group)
        let result = try db.query("CALL rampart_set_rules(?, ?, ?, CAST(? AS text[]), ?, NULL)",
                                  .text(group), .text(stored), .text(RulesCodec.encode(new)), refsArgument, .text(refresh.logText))
        // nil (read again) when another verb changed the rules since they were read.
        return try Self.serverAnswer(result, from: "rampart_set_rules", refresh: refresh).deliveries
    }
}
