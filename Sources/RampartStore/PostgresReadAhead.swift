import RampartCore

/// The change log's read with the reads of its refreshes (`ReadAhead`): schema versions 10, 11
/// and 12, and the Swift that calls it.
extension SQLStore {
    /// Schema version 10: `rampart_log_read_ahead(host, after, lim, ahead)`.
    ///
    /// The host's page as `rampart_log_read` gives it (kind `log`: key = the refresh, c1 = its
    /// sequence number, c2 = the head, c3 = where the log is trimmed through), then, when the page
    /// has between 1 and `ahead` rows, what they will read, in the same snapshot (a STABLE
    /// function's queries see its caller's):
    /// - `members` (key = group), a marker that the group's members were read, then one
    ///   `member` row (key = group) per member: c1–c6 = id, host, ips, interface, mac, groups,
    ///   the columns of `SQLStore.records`;
    /// - `group` (key = id): c1 = the id (NULL: no such group), c2 = description, c3 = rules,
    ///   c4 = references, the columns of `SQLStore.groupRows`;
    /// - `instance` (key = id): c1–c6 as a member's (c1 NULL: no such instance), then a `group`
    ///   row for each of its groups.
    ///
    /// The instance and group columns repeat `SQLDialect.postgres`' expressions in SQL: a schema
    /// version's text must not change with a later edit of the Swift, and
    /// `aDaemonReadsAheadWhatItsRefreshesRead` compares both reads row for row.
    ///
    /// With `enable_seqscan` off, as the log's other statements (schema version 8): a plan made
    /// while a table was empty must not scan it once it is large. And with generic plans only,
    /// as `rampart_log_read` from this version on: plpgsql planned the log's row query afresh on
    /// every call (its generic plan, costed for an unknown `LIMIT`, looked dearer than each
    /// custom one, though it is the same index scan). pgbench, one client, one row after the
    /// position: `rampart_log_read` 0.16 → 0.10 ms, this function 0.25 → 0.18 ms.
    static let readAheadSchema: [String] = [
        "ALTER FUNCTION rampart_log_read(text[], bigint[], bigint) SET plan_cache_mode = force_generic_plan",
        """
        CREATE OR REPLACE FUNCTION rampart_log_read_ahead(h text, after_seq bigint, lim bigint, ahead bigint)
        RETURNS TABLE(kind text, key text, c1 text, c2 text, c3 text, c4 text, c5 text, c6 text)
        LANGUAGE plpgsql STABLE SET enable_seqscan = off SET plan_cache_mode = force_generic_plan AS $fn$
        DECLARE
          r record;
          refs text[] := '{}';
          wanted text[] := '{}';
          x text;
          g text;
        BEGIN
          FOR r IN SELECT * FROM rampart_log_read(ARRAY[h], ARRAY[after_seq], lim) LOOP
            kind := 'log'; key := r.log_refresh;
            c1 := r.log_seq::text; c2 := r.log_head::text; c3 := r.log_trimmed::text;
            c4 := NULL; c5 := NULL; c6 := NULL;
            RETURN NEXT;
            IF r.log_seq IS NOT NULL THEN refs := refs || r.log_refresh; END IF;
          END LOOP;
          IF cardinality(refs) = 0 OR cardinality(refs) > ahead THEN RETURN; END IF;
          FOR x IN SELECT DISTINCT u FROM unnest(refs) AS t(u) LOOP
            IF starts_with(x, 'members:') THEN
              g := substr(x, 9);
              kind := 'members'; key := g; c1 := NULL; c2 := NULL; c3 := NULL; c4 := NULL; c5 := NULL; c6 := NULL;
              RETURN NEXT;
              RETURN QUERY SELECT 'member', g, i.id, i.host, i.ips, i.interface, i.mac,
                  (SELECT string_agg(n.group_id, ',' ORDER BY n.position) FROM instance_groups n WHERE n.instance = i.id)
                FROM instance_groups m JOIN instances i ON i.id = m.instance WHERE m.group_id = g;
            ELSIF starts_with(x, 'instance:') THEN
              key := substr(x, 10);
              RETURN QUERY SELECT 'instance', key, i.id, i.host, i.ips, i.interface, i.mac,
                  (SELECT string_agg(n.group_id, ',' ORDER BY n.position) FROM instance_groups n WHERE n.instance = i.id)
                FROM (SELECT key AS k) w LEFT JOIN instances i ON i.id = w.k;
              wanted := wanted || ARRAY(SELECT n.group_id FROM instance_groups n WHERE n.instance = key);
            ELSIF starts_with(x, 'rules:') THEN
              wanted := wanted || substr(x, 7);
            END IF;
          END LOOP;
          -- The groups: the rules refreshes', and the instances' (each once).
          FOR g IN SELECT DISTINCT u FROM unnest(wanted) AS t(u) LOOP
            RETURN QUERY SELECT 'group', g, s.id, s.description, s.rules,
                (SELECT string_agg(f.ref, ',') FROM group_refs f WHERE f.group_id = s.id), NULL::text, NULL::text
              FROM (SELECT g AS k) w LEFT JOIN groups s ON s.id = w.k;
          END LOOP;
        END
        $fn$
        """,
    ]

    /// Schema version 11: `rampart_log_read_ahead(host, after, lim, ahead, ref_members)`, which
    /// also reads, for each rules refresh of the page, the members of every group its group
    /// references that has at most `ref_members` members (`member` rows under a `members` marker,
    /// as a members refresh's; each group once however many refreshes want it).
    ///
    /// Why: a rules refresh reads those members afresh whenever no other group enforced on the
    /// host references them (`RefreshEvents.rulesRefresh`: its own old rules cannot vouch for
    /// them), which is the usual case, so a rules change still cost each daemon a store round
    /// trip after its log read (`perf` over `rampart-bench controller`'s ten-host rules series:
    /// the daemons' `memberRecords` calls took 334 samples, the drains' kernel commits ~700). The
    /// bound keeps a read the daemon may not need (another of its groups does reference the
    /// group) from growing with a large group. Version 10's function (four arguments) is dropped.
    static let readAheadReferencesSchema: [String] = [
        "DROP FUNCTION IF EXISTS rampart_log_read_ahead(text, bigint, bigint, bigint)",
        """
        CREATE OR REPLACE FUNCTION rampart_log_read_ahead(h text, after_seq bigint, lim bigint, ahead bigint, ref_members bigint)
        RETURNS TABLE(kind text, key text, c1 text, c2 text, c3 text, c4 text, c5 text, c6 text)
        LANGUAGE plpgsql STABLE SET enable_seqscan = off SET plan_cache_mode = force_generic_plan AS $fn$
        DECLARE
          r record;
          refs text[] := '{}';
          wanted text[] := '{}';
          member_groups text[] := '{}';
          x text;
          g text;
        BEGIN
          FOR r IN SELECT * FROM rampart_log_read(ARRAY[h], ARRAY[after_seq], lim) LOOP
            kind := 'log'; key := r.log_refresh;
            c1 := r.log_seq::text; c2 := r.log_head::text; c3 := r.log_trimmed::text;
            c4 := NULL; c5 := NULL; c6 := NULL;
            RETURN NEXT;
            IF r.log_seq IS NOT NULL THEN refs := refs || r.log_refresh; END IF;
          END LOOP;
          IF cardinality(refs) = 0 OR cardinality(refs) > ahead THEN RETURN; END IF;
          FOR x IN SELECT DISTINCT u FROM unnest(refs) AS t(u) LOOP
            IF starts_with(x, 'members:') THEN
              member_groups := member_groups || substr(x, 9);
            ELSIF starts_with(x, 'instance:') THEN
              key := substr(x, 10);
              RETURN QUERY SELECT 'instance', key, i.id, i.host, i.ips, i.interface, i.mac,
                  (SELECT string_agg(n.group_id, ',' ORDER BY n.position) FROM instance_groups n WHERE n.instance = i.id)
                FROM (SELECT key AS k) w LEFT JOIN instances i ON i.id = w.k;
              wanted := wanted || ARRAY(SELECT n.group_id FROM instance_groups n WHERE n.instance = key);
            ELSIF starts_with(x, 'rules:') THEN
              g := substr(x, 7);
              wanted := wanted || g;
              -- The groups it references, unless larger than ref_members (counted no further).
              member_groups := member_groups || ARRAY(SELECT f.ref FROM group_refs f WHERE f.group_id = g
                  AND (SELECT count(*) FROM (SELECT 1 FROM instance_groups m WHERE m.group_id = f.ref LIMIT ref_members + 1) c) <= ref_members);
            END IF;
          END LOOP;
          -- The members: the members refreshes' groups and the rules refreshes' references (each once).
          FOR g IN SELECT DISTINCT u FROM unnest(member_groups) AS t(u) LOOP
            kind := 'members'; key := g; c1 := NULL; c2 := NULL; c3 := NULL; c4 := NULL; c5 := NULL; c6 := NULL;
            RETURN NEXT;
            RETURN QUERY SELECT 'member', g, i.id, i.host, i.ips, i.interface, i.mac,
                (SELECT string_agg(n.group_id, ',' ORDER BY n.position) FROM instance_groups n WHERE n.instance = i.id)
              FROM instance_groups m JOIN instances i ON i.id = m.instance WHERE m.group_id = g;
          END LOOP;
          -- The groups: the rules refreshes', and the instances' (each once).
          FOR g IN SELECT DISTINCT u FROM unnest(wanted) AS t(u) LOOP
            RETURN QUERY SELECT 'group', g, s.id, s.description, s.rules,
                (SELECT string_agg(f.ref, ',') FROM group_refs f WHERE f.group_id = s.id), NULL::text, NULL::text
              FROM (SELECT g AS k) w LEFT JOIN groups s ON s.id = w.k;
          END LOOP;
        END
        $fn$
        """,
    ]

    /// Schema version 12: `rampart_log_read_ahead` with the same arguments and rows as version
    /// 11's, in fewer statements: the page in two (its trim mark, its rows; a third for the head
    /// only when the rows cannot tell it), the refreshes sorted by kind without a query, then one
    /// statement per kind of read: the referenced groups, the members of all member groups, the
    /// instances, the groups (each kind's keys as one array, `= ANY`).
    ///
    /// Why: version 11 called `rampart_log_read` (a set-returning function with its own
    /// settings, its rows through a tuplestore) and ran a statement per refresh and per group:
    /// about ten statements for a rules refresh, each with its executor's start-up, and in
    /// `rampart-bench controller`'s ten-host rules series the ten daemons' read-aheads were a
    /// fifth of the machine's CPU (`perf`: `ExecMakeTableFunctionResult` under the function).
    /// pgbench, one client, the bench's rules page (a rules refresh, its group, three referenced
    /// members): 0.30 → 0.26 ms a call (a `SELECT 1` costs 0.03 ms); a single SQL statement
    /// (CTEs, `UNION ALL`) took 0.61 ms, its plan's start-up costing more than the statements
    /// it replaced. The page's two statements repeat `rampart_log_read`'s for one host (the
    /// relay's read keeps that function).
    static let readAheadLeanSchema: [String] = [
        """
        CREATE OR REPLACE FUNCTION rampart_log_read_ahead(h text, after_seq bigint, lim bigint, ahead bigint, ref_members bigint)
        RETURNS TABLE(kind text, key text, c1 text, c2 text, c3 text, c4 text, c5 text, c6 text)
        LANGUAGE plpgsql STABLE SET enable_seqscan = off SET plan_cache_mode = force_generic_plan AS $fn$
        DECLARE
          trimmed bigint;
          head bigint;
          seqs bigint[];
          refs text[];
          n int;
          k int;
          x text;
          rules_groups text[] := '{}';
          instance_ids text[] := '{}';
          member_groups text[] := '{}';
        BEGIN
          -- The page, as rampart_log_read gives one host's: no rows when trimmed past the position.
          SELECT coalesce((SELECT c.trimmed_through FROM change_log_heads c WHERE c.host = h), 0) INTO trimmed;
          IF after_seq >= trimmed THEN
            SELECT array_agg(r.seq ORDER BY r.seq), array_agg(r.refresh ORDER BY r.seq) INTO seqs, refs
              FROM (SELECT r.seq, r.refresh FROM change_log r WHERE r.host = h AND r.seq > after_seq ORDER BY r.seq LIMIT lim) r;
          END IF;
          n := coalesce(cardinality(seqs), 0);
          IF n > 0 AND n < lim THEN
            -- Every row after the position came: the last is the host's last.
            head := greatest(seqs[n], trimmed);
          ELSE
            SELECT greatest(coalesce(max(m.seq), 0), trimmed) INTO head FROM change_log m WHERE m.host = h;
          END IF;
          kind := 'log'; c2 := head::text; c3 := trimmed::text; c4 := NULL; c5 := NULL; c6 := NULL;
          IF n = 0 THEN
            key := NULL; c1 := NULL;
            RETURN NEXT;
            RETURN;
          END IF;
          FOR k IN 1 .. n LOOP
            key := refs[k]; c1 := seqs[k]::text;
            RETURN NEXT;
          END LOOP;
          IF n > ahead THEN RETURN; END IF;
          FOREACH x IN ARRAY refs LOOP
            IF starts_with(x, 'members:') THEN
              member_groups := member_groups || substr(x, 9);
            ELSIF starts_with(x, 'instance:') THEN
              instance_ids := instance_ids || substr(x, 10);
            ELSIF starts_with(x, 'rules:') THEN
              rules_groups := rules_groups || substr(x, 7);
            END IF;
          END LOOP;
          -- The groups the rules refreshes' groups reference, unless larger than ref_members
          -- (counted no further).
          IF cardinality(rules_groups) > 0 THEN
            member_groups := member_groups || ARRAY(SELECT f.ref FROM group_refs f WHERE f.group_id = ANY(rules_groups)
                AND (SELECT count(*) FROM (SELECT 1 FROM instance_groups m WHERE m.group_id = f.ref LIMIT ref_members + 1) c) <= ref_members);
          END IF;
          -- The members: a marker per group (a group without members reads as empty), then its members.
          IF cardinality(member_groups) > 0 THEN
            RETURN QUERY
              SELECT 'members', d.g, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text
                FROM (SELECT DISTINCT u AS g FROM unnest(member_groups) AS t(u)) d
              UNION ALL
              SELECT 'member', m.group_id, i.id, i.host, i.ips, i.interface, i.mac,
                  (SELECT string_agg(n.group_id, ',' ORDER BY n.position) FROM instance_groups n WHERE n.instance = i.id)
                FROM instance_groups m JOIN instances i ON i.id = m.instance WHERE m.group_id = ANY(member_groups);
          END IF;
          -- The instances (c1 NULL: no such instance), and their groups with the rules refreshes'.
          IF cardinality(instance_ids) > 0 THEN
            RETURN QUERY SELECT 'instance', w.k, i.id, i.host, i.ips, i.interface, i.mac,
                (SELECT string_agg(n.group_id, ',' ORDER BY n.position) FROM instance_groups n WHERE n.instance = i.id)
              FROM (SELECT DISTINCT u AS k FROM unnest(instance_ids) AS t(u)) w LEFT JOIN instances i ON i.id = w.k;
            rules_groups := rules_groups || ARRAY(SELECT n.group_id FROM instance_groups n WHERE n.instance = ANY(instance_ids));
          END IF;
          -- The groups (c1 NULL: no such group).
          IF cardinality(rules_groups) > 0 THEN
            RETURN QUERY SELECT 'group', w.k, s.id, s.description, s.rules,
                (SELECT string_agg(f.ref, ',') FROM group_refs f WHERE f.group_id = s.id), NULL::text, NULL::text
              FROM (SELECT DISTINCT u AS k FROM unnest(rules_groups) AS t(u)) w LEFT JOIN groups s ON s.id = w.k;
          END IF;
        END
        $fn$
        """,
    ]

    /// A read-ahead reads the members of a group a rules refresh's group references only if it
    /// has at most this many (`readAheadReferencesSchema`).
    static let readAheadReferencedMembers = 1_000

    /// One host's page, and what its refreshes will read when it has at most `ahead` rows
    /// (`readAheadReferencesSchema`): one round trip for both. `referencedMembers`: see
    /// `readAheadReferencedMembers` (a test passes a small bound).
    func logEntriesReadingAhead(host: String, after sequence: Int64, limit: Int, ahead: Int,
                                referencedMembers: Int = readAheadReferencedMembers) throws(StoreError) -> LogPage {
        let rows = try locked { () throws(StoreError) -> [[String?]] in
            try db.query(Self.readAheadStatement,
                         [.text(host), .int(sequence), .int(Int64(limit)), .int(Int64(ahead)), .int(Int64(referencedMembers))])
        }
        return Self.readAheadPage(rows, host: host, after: sequence)
    }

    /// The read-ahead's statement: host, position, limit, ahead, referenced members (`?` each).
    static let readAheadStatement = "SELECT * FROM rampart_log_read_ahead(?, ?, ?, ?, ?)"

    /// The page a read-ahead's rows (`readAheadStatement`) describe, with what they read ahead.
    static func readAheadPage(_ rows: [[String?]], host: String, after sequence: Int64) -> LogPage {
        // The page: the rows of kind `log`, in `rampart_log_read`'s columns.
        let logRows = rows.filter { $0.first == "log" }.map { r -> [String?] in [host, r[3], r[4], r[2], r[1]] }
        var page = Self.logPages(logRows, positions: [host: sequence])[host] ?? LogPage(entries: [], head: 0, trimmed: false)
        // A row that does not decode leaves the read-ahead out: each refresh then reads the store
        // itself and meets the fault there, in the usual words.
        if !page.trimmed, !page.entries.isEmpty, let ahead = try? Self.readAhead(rows.filter { $0.first != "log" }), !ahead.isEmpty {
            page.readAhead = ahead
        }
        return page
    }

    /// The read-ahead rows (kind, key, c1–c6) as answers.
    static func readAhead(_ rows: [[String?]]) throws(StoreError) -> ReadAhead {
        var out = ReadAhead()
        for row in rows {
            guard row.count >= 8, let kind = row[0], let key = row[1] else { throw StoreError(.invalid, "store: a read-ahead row is incomplete") }
            let columns = Array(row[2...7])
            switch kind {
            case "members":
                out.members[key] = out.members[key] ?? [:]
            case "member":
                let (id, instance) = try record(columns)
                out.members[key, default: [:]][id] = instance
            case "instance":
                out.instances[key] = columns[0] == nil ? .some(nil) : try record(columns).instance
            case "group":
                out.groups[key] = columns[0] == nil
                    ? .some(nil) : Group(description: columns[1], rules: try rules(columns[2], references: columns[3], group: key))
            default:
                throw StoreError(.invalid, "store: a read-ahead row of unknown kind \(jsonString(kind))")
            }
        }
        return out
    }
}
