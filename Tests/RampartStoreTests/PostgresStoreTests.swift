import Foundation
import RampartCore
import RampartHarness
@testable import RampartStore
import Testing

/// What only the PostgreSQL store does: the per-host change log written in the verb's
/// transaction, NOTIFY at COMMIT, applied positions, trimming, concurrent controllers, and a
/// server that goes away.
@Suite("PostgreSQL store: change log, wake-ups, concurrency, outages", .serialized, .tags(.kernel), .rootOnly)
struct PostgresStoreTests {
    func store() throws -> PostgresStore {
        try PostgresStore(url: SharedPostgres.freshDatabase("pgstore"), migrate: true)
    }

    @Test func eachVerbAppendsItsFanOutToTheHostsLogsInOrder() throws {
        let st = try store()
        try populate(st)
        // populate's instance adds logged one row per delivery, each host's in increasing order
        // (numbers come from one sequence: a host's have gaps, never a step back).
        for host in ["hv1", "hv2", "hv3"] {
            let page = try st.entries(host: host, after: 0, limit: 1000)
            #expect(!page.trimmed && !page.entries.isEmpty)
            #expect(page.entries.map(\.sequence) == page.entries.map(\.sequence).sorted() && Set(page.entries.map(\.sequence)).count == page.entries.count, "\(host)")
            #expect(page.head == page.entries.last!.sequence)
        }
        let hv2Head = try st.entries(host: "hv2", after: 0, limit: 0).head
        let hv3Head = try st.entries(host: "hv3", after: 0, limit: 0).head
        // A rules change of db reaches hv1 only (db-1's host): hv2 and hv3 get nothing.
        let d = try st.authorize(group: "db", rule: try rule(#"{"protocol":"udp","ports":"53","cidr":"10.0.0.0/8"}"#, "db"))
        #expect(d.count == 1 && d[0].host == "hv1" && d[0].refresh == .rules("db"))
        let hv1 = try st.entries(host: "hv1", after: d[0].sequence! - 1, limit: 10)
        #expect(hv1.entries == [LogEntry(sequence: d[0].sequence!, refresh: .rules("db"))])
        #expect(try st.entries(host: "hv2", after: 0, limit: 0).head == hv2Head)
        #expect(try st.entries(host: "hv3", after: 0, limit: 0).head == hv3Head)
        // Paging: limit and after.
        let all = try st.entries(host: "hv1", after: 0, limit: 1000).entries
        let firstTwo = try st.entries(host: "hv1", after: 0, limit: 2).entries
        let rest = try st.entries(host: "hv1", after: 2, limit: 1000).entries
        #expect(firstTwo + rest == all)
    }

    /// A populated store, and a LISTEN on it whose wake-ups go to `heard` (stop it when done).
    func listening() throws -> (store: PostgresStore, wakeups: PostgresWakeups, heard: Heard) {
        let url = try SharedPostgres.freshDatabase("pgstore")
        let st = try PostgresStore(url: url, migrate: true)
        try populate(st)
        let wakeups = PostgresWakeups(location: try PostgresLocation(url: url))
        let heard = Heard()
        try wakeups.start { heard.add($0) }
        return (st, wakeups, heard)
    }

    @Test func aRefusedVerbLogsNothingAndNotifiesNobody() throws {
        let (st, wakeups, heard) = try listening()
        defer { wakeups.stop() }
        let heads = try st.progress(hosts: nil).map(\.head)
        // Refused inside the transaction (an interface already used on hv1): rolled back.
        #expect(throws: StoreError.self) {
            try st.addInstance("dup", Instance(host: "hv1", groups: ["web"], ips: [ip("10.0.5.5")], interface: "tapweb1"))
        }
        #expect(try st.progress(hosts: nil).map(\.head) == heads)
        // A verb that commits is heard, naming exactly its hosts.
        let d = try st.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"443","cidr":"0.0.0.0/0"}"#, "web"))
        #expect(Set(d.map(\.host)) == ["hv1", "hv2"])
        let got = heard.waitFor(count: 1, timeout: 5)
        #expect(got == [.appended(hosts: ["hv1", "hv2"])])
    }

    /// A sleeping reader's armed read (`PrefetchingWakeups`): the NOTIFY that names its host
    /// brings the page the reader would have read itself (the same rows, head and read-ahead)
    /// instead of a plain wake-up; a NOTIFY for other hosts leaves it armed; used once, or
    /// disarmed, wake-ups are plain again.
    @Test func anArmedReadBringsThePageTheReaderWouldHaveRead() throws {
        let (st, wakeups, heard) = try listening()
        defer { wakeups.stop() }
        let pages = Delivered()
        let from = try st.entries(host: "hv1", after: .max, limit: 0).head
        wakeups.arm(host: "hv1", after: from, limit: 1000, readingAhead: 16) { pages.add($0) }
        // unused's only member is on hv3: a plain wake-up, the read stays armed.
        let other = try st.authorize(group: "unused", rule: try rule(#"{"protocol":"udp","ports":"53","cidr":"10.0.0.0/8"}"#, "unused"))
        #expect(other.map(\.host) == ["hv3"])
        #expect(heard.waitFor(count: 1, timeout: 5) == [.appended(hosts: ["hv3"])])
        // web's members are on hv1 and hv2: hv1's page comes with the wake-up.
        let https = try rule(#"{"protocol":"tcp","ports":"443","cidr":"0.0.0.0/0"}"#, "web")
        let d = try st.authorize(group: "web", rule: https)
        let mine = try #require(d.first { $0.host == "hv1" }?.sequence)
        let got = try #require(pages.waitFor(count: 1, timeout: 5).first ?? nil)
        #expect(got.after == from && got.notified <= got.read)
        #expect(got.page.entries == [LogEntry(sequence: mine, refresh: .rules("web"))])
        #expect(got.page.readAhead?.groups["web"] != nil, "the rules refresh's group came with the page")
        #expect(got.page == (try st.entries(host: "hv1", after: from, limit: 1000, readingAhead: 16)))
        // Used once: the next verb is a plain wake-up, as is one after a disarmed read.
        _ = try st.revoke(group: "web", rule: https, id: nil)
        #expect(heard.waitFor(count: 2, timeout: 5).last == .appended(hosts: ["hv1", "hv2"]))
        wakeups.arm(host: "hv1", after: mine, limit: 1000, readingAhead: 16) { pages.add($0) }
        wakeups.disarm()
        _ = try st.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"8443","cidr":"0.0.0.0/0"}"#, "web"))
        #expect(heard.waitFor(count: 3, timeout: 5).last == .appended(hosts: ["hv1", "hv2"]))
        #expect(pages.all.count == 1)
    }

    /// A verb whose hosts would not fit a NOTIFY (8,000 bytes) says `*`: every reader reads.
    @Test func aPayloadTooLargeForItsHostsSaysAll() throws {
        #expect(WakeupPayload.decode("hv1,hv2") == ["hv1", "hv2"])
        #expect(WakeupPayload.decode("*") == nil)
        let url = try SharedPostgres.freshDatabase("pgstore")
        let st = try PostgresStore(url: url, migrate: true)
        let wakeups = PostgresWakeups(location: try PostgresLocation(url: url))
        let heard = Heard()
        try wakeups.start { heard.add($0) }
        defer { wakeups.stop() }
        _ = try st.createGroup("web", description: nil)
        // 700 hosts of ~13-byte names: ~9,800 bytes of names.
        for k in 0..<700 {
            _ = try st.addInstance("i\(k)", Instance(host: "hypervisor\(k)", groups: ["web"], ips: [ip("10.7.\(k / 250).\(k % 250 + 1)")], interface: "tap\(k)"))
        }
        let before = heard.waitFor(count: 700, timeout: 10).count
        _ = try st.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"22","cidr":"0.0.0.0/0"}"#, "web"))
        #expect(heard.waitFor(count: before + 1, timeout: 5).last == .appended(hosts: nil))
    }

    @Test func wakeupsReportALostConnection() throws {
        let cluster = try PostgresCluster()
        try cluster.start()
        defer { cluster.destroy() }
        let location = try PostgresLocation(url: cluster.url)
        _ = try PostgresStore(location: location, migrate: true)
        let wakeups = PostgresWakeups(location: location)
        let heard = Heard()
        try wakeups.start { heard.add($0) }
        defer { wakeups.stop() }
        try cluster.kill()
        let got = heard.waitFor(count: 1, timeout: 10)
        guard case .lost = got.first else {
            Issue.record("expected .lost, heard \(got)")
            return
        }
        // Restarting the source after the server is back works.
        try cluster.start()
        try wakeups.start { heard.add($0) }
    }

    @Test func appliedPositionsOnlyMoveForward() throws {
        let st = try store()
        try populate(st)
        try st.recordApplied(host: "hv1", sequence: 3)
        try st.recordApplied(host: "hv1", sequence: 2)
        let p = try st.progress(hosts: ["hv1", "nowhere"])
        #expect(p.count == 1)
        #expect(p[0].host == "hv1" && p[0].applied == 3 && p[0].appliedAt != nil)
        #expect(try st.progress(hosts: ["hv2"]).first?.applied == 0)
        // Never past the host's head: it would stay there for good (positions only move forward).
        let head = try #require(try st.progress(hosts: ["hv1"]).first).head
        try st.recordApplied(host: "hv1", sequence: head + 1_000_000)
        #expect(try st.progress(hosts: ["hv1"]).first?.applied == head)
    }

    @Test func trimmingMarksWhatReadersMissed() throws {
        let st = try store()
        try populate(st)
        for port in 1000..<1010 {
            _ = try st.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"\#(port)","cidr":"0.0.0.0/0"}"#, "web"))
        }
        let head = try st.entries(host: "hv1", after: 0, limit: 0).head
        // Keep the last 4 rows per host.
        #expect(try st.trim(maxAge: nil, keep: 4) > 0)
        let behind = try st.entries(host: "hv1", after: 0, limit: 100)
        #expect(behind.trimmed && behind.head == head)
        let kept = try st.entries(host: "hv1", after: behind.head - 1_000_000, limit: 100)
        #expect(kept.trimmed)  // far behind: trimmed
        // What is left is the last 4 rows; a reader at the last trimmed one misses nothing.
        let left = try cluster(st, "SELECT seq FROM change_log WHERE host = 'hv1' ORDER BY seq").map { Int64($0)! }
        #expect(left.count == 4 && left.last == head)
        let mark = try cluster(st, "SELECT trimmed_through FROM change_log_heads WHERE host = 'hv1'").map { Int64($0)! }
        #expect(mark.count == 1 && mark[0] < left[0])
        let recent = try st.entries(host: "hv1", after: mark[0], limit: 100)
        #expect(!recent.trimmed && recent.entries.map(\.sequence) == left)
        #expect(try st.entries(host: "hv1", after: mark[0] - 1, limit: 100).trimmed)
        // By age: nothing is a day old.
        #expect(try st.trim(maxAge: 86_400, keep: nil) == 0)
    }

    /// The log's read (`rampart_log_read`: many hosts in one statement) against plain SQL per
    /// host: positions before, inside and past each host's rows, behind its trim mark or not,
    /// limits 0, 1, 2 and 1,000, and a host with no rows at all. Catches: a head taken from a
    /// page that stopped at its limit, rows from behind a trim mark, a host missing or its rows
    /// out of order.
    @Test func theLogReadAgreesWithPlainSQL() throws {
        let st = try store()
        try populate(st)
        for port in 2000..<2012 {
            _ = try st.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"\#(port)","cidr":"0.0.0.0/0"}"#, "web"))
        }
        _ = try st.trim(maxAge: nil, keep: 5)
        func numbers(_ sql: String) throws -> [Int64] { try cluster(st, sql).compactMap { Int64($0) } }
        let hosts = try cluster(st, "SELECT name FROM hosts ORDER BY name") + ["hv-without-rows"]
        var checked = 0
        for limit in [0, 1, 2, 1000] {
            for pick in 0..<5 {
                var positions: [String: Int64] = [:]
                for h in hosts {
                    let seqs = try numbers("SELECT seq FROM change_log WHERE host = '\(h)' ORDER BY seq")
                    let mark = try numbers("SELECT trimmed_through FROM change_log_heads WHERE host = '\(h)'").first ?? 0
                    let choices: [Int64] = [0, mark, max(0, mark - 1), seqs.first.map { $0 - 1 } ?? 0, seqs.isEmpty ? 0 : seqs[seqs.count / 2],
                                            seqs.last ?? 0, (seqs.last ?? 0) + 1]
                    positions[h] = choices[(pick + hosts.firstIndex(of: h)!) % choices.count]
                }
                let got = try st.entries(positions: positions, limit: limit)
                #expect(Set(got.keys) == Set(hosts))
                for (h, p) in positions {
                    let mark = try numbers("SELECT trimmed_through FROM change_log_heads WHERE host = '\(h)'").first ?? 0
                    let head = max(try numbers("SELECT max(seq) FROM change_log WHERE host = '\(h)'").first ?? 0, mark)
                    let trimmed = p < mark
                    let rows = trimmed ? [] : try numbers("SELECT seq FROM change_log WHERE host = '\(h)' AND seq > \(p) ORDER BY seq LIMIT \(limit)")
                    let page = try #require(got[h])
                    #expect(page.head == head && page.trimmed == trimmed && page.entries.map(\.sequence) == rows,
                            "\(h) after \(p) limit \(limit): \(page.head)/\(page.trimmed)/\(page.entries.map(\.sequence)), expected \(head)/\(trimmed)/\(rows)")
                    checked += 1
                }
            }
        }
        #expect(checked == 4 * 5 * hosts.count)
    }

    /// The log read with its refreshes' reads (schema versions 10 and 11) gives the same page as
    /// the plain read, and for every refresh in it exactly what the store's own reads answer: the
    /// members of each members refresh (none, for a group left empty), each rules refresh's
    /// group (nil once deleted) and the members of the groups it references (up to a bound on
    /// their size), each instance refresh's record (nil once removed) and its groups.
    /// Nothing is read ahead for a page longer than asked, a trimmed one, or an empty one.
    @Test func aDaemonReadsAheadWhatItsRefreshesRead() throws {
        let st = try store()
        try populate(st)
        _ = try st.createGroup("gone", description: "deleted below")
        _ = try st.authorize(group: "gone", rule: try rule(#"{"id":"nine","protocol":"tcp","ports":"9","cidr":"10.0.0.0/8"}"#, "gone"))
        _ = try st.addInstance("gone-1", Instance(host: "hv1", groups: ["gone"], ips: [ip("10.0.7.1")], interface: "tapgone"))
        let from = try st.entries(host: "hv1", after: 0, limit: 0).head
        // Rows of every kind for hv1: members (web-4 joins web, which db references), rules, an
        // instance removed (gone-1) and one added, a group deleted after its rules refresh.
        _ = try st.addInstance("web-4", Instance(host: "hv2", groups: ["web"], ips: [ip("10.0.1.14"), ip("fd00::14")], interface: "tapweb4",
                                                 mac: MACAddress("02:00:00:00:01:14")))
        _ = try st.authorize(group: "db", rule: try rule(#"{"protocol":"udp","ports":"53","cidr":"10.0.0.0/8"}"#, "db"))
        _ = try st.revoke(group: "gone", rule: nil, id: "nine")
        _ = try st.removeInstance("gone-1")
        let _: [Delivery] = try st.deleteGroup("gone")
        _ = try st.addInstance("db-2", Instance(host: "hv1", groups: ["db", "admin"], ips: [ip("10.0.2.22")], interface: "tapdb2"))
        _ = try st.removeInstance("bastion")  // admin's members change: web's rules reference admin
        let plain = try st.entries(host: "hv1", after: from, limit: 1000)
        let page = try st.entries(host: "hv1", after: from, limit: 1000, readingAhead: 16)
        #expect(page.entries == plain.entries && page.head == plain.head && !page.trimmed)
        let ahead = try #require(page.readAhead)
        let refreshes = Set(page.entries.map(\.refresh))
        #expect(refreshes.contains(.members("web")) && refreshes.contains(.rules("db")) && refreshes.contains(.instance("gone-1"))
                    && refreshes.contains(.instance("db-2")) && refreshes.contains(.members("admin")), "\(refreshes)")
        var expected = ReadAhead()
        for r in refreshes {
            switch r {
            case .members(let g): expected.members[g] = try st.memberRecords(of: g)
            case .rules(let g):
                let group = try st.group(g)
                expected.groups[g] = .some(group)
                for ref in HostProjection.referencedGroups(by: [group].compactMap { $0 }) { expected.members[ref] = try st.memberRecords(of: ref) }
            case .instance(let id):
                let rec = try st.instance(id)
                expected.instances[id] = .some(rec)
                for g in rec?.groups ?? [] { expected.groups[g] = .some(try st.group(g)) }
            case .host: break
            }
        }
        #expect(ahead == expected)
        #expect(ahead.members["web"]?.count == 4, "db's rules refresh brings web's members, read once")
        #expect(ahead.instances["gone-1"] == .some(nil) && ahead.instances["db-2"]??.groups == ["db", "admin"])
        // A referenced group larger than the bound is left to the store; one at it is read.
        let bounded = try st.logEntriesReadingAhead(host: "hv1", after: from, limit: 1000, ahead: 16, referencedMembers: 3)
        #expect(bounded.readAhead?.members["web"] == expected.members["web"], "web is also a members refresh of the page")
        let dbRules = try #require(page.entries.first { $0.refresh == .rules("db") }?.sequence)
        let onlyRules = try st.logEntriesReadingAhead(host: "hv1", after: dbRules - 1, limit: 1, ahead: 16, referencedMembers: 3)
        #expect(onlyRules.entries.map(\.refresh) == [.rules("db")] && onlyRules.readAhead?.members["web"] == nil && onlyRules.readAhead?.groups["db"] != nil)
        let atBound = try st.logEntriesReadingAhead(host: "hv1", after: dbRules - 1, limit: 1, ahead: 16, referencedMembers: 4)
        #expect(atBound.readAhead?.members["web"] == expected.members["web"])
        #expect(ahead.members["web"]?["web-4"]?.mac == MACAddress("02:00:00:00:01:14"))
        // A group with no member left is read as empty, not left to the store.
        _ = try st.removeInstance("db-2")
        _ = try st.removeInstance("db-1")
        let emptied = try st.entries(host: "hv2", after: try st.entries(host: "hv2", after: 0, limit: 0).head, limit: 10, readingAhead: 16)
        #expect(emptied.readAhead == nil)  // nothing new for hv2
        _ = try st.createGroup("lonely", description: nil)
        _ = try st.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"7","group":"lonely"}"#, "web", refs: ["lonely"]))
        let h1 = try st.entries(host: "hv1", after: 0, limit: 0).head
        _ = try st.addInstance("lonely-1", Instance(host: "hv3", groups: ["lonely"], ips: [ip("10.0.5.1")], interface: "taplonely"))
        _ = try st.removeInstance("lonely-1")
        let lonely = try st.entries(host: "hv1", after: h1, limit: 10, readingAhead: 16)
        #expect(lonely.entries.map(\.refresh) == [.members("lonely"), .members("lonely")])
        #expect(lonely.readAhead?.members == ["lonely": [:]])
        // Longer than `ahead`, trimmed, or nothing after the position: no read-ahead.
        #expect(try st.entries(host: "hv1", after: from, limit: 1000, readingAhead: plain.entries.count - 1).readAhead == nil)
        #expect(try st.entries(host: "hv1", after: from, limit: 1000, readingAhead: 0).readAhead == nil)
        #expect(try st.entries(host: "hv1", after: h1 + 1_000_000, limit: 10, readingAhead: 16).readAhead == nil)
        _ = try st.trim(maxAge: nil, keep: 1)
        let trimmed = try st.entries(host: "hv1", after: from, limit: 10, readingAhead: 16)
        #expect(trimmed.trimmed && trimmed.readAhead == nil)
    }

    /// An added instance is checked against its host's others from indexes (schema version 13):
    /// at a host of 2,000 instances, `rampart_instance_clashes`'s statement, planned as the
    /// function plans it (generic plans, bitmap scans only), takes `instances_host_interface` and
    /// the GIN index of host-prefixed addresses, never a scan of the table or of the host (at
    /// cloud-1M, with sequential scans allowed, its `EXISTS` read every instance); an address or interface in
    /// use there is refused, one in use on another host is not; the procedure calls it.
    @Test func anAddedInstanceIsCheckedFromIndexes() throws {
        let st = try store()
        try populate(st)
        let procedure = SQLStore.addInstanceIndexedProcedure
        #expect(procedure.contains("rampart_instance_clashes(ihost, iinterface, iips, iid)") && !procedure.contains("LIKE"),
                "version 13's procedure: \(procedure)")
        _ = try cluster(st, """
            INSERT INTO instances(id, host, ips, interface)
              SELECT 'big-' || n, 'hv1', '10.7.' || (n / 250) || '.' || (n % 250) || ',fd07::' || to_hex(n), 'tapbig' || n
              FROM generate_series(1, 2000) n;
            ANALYZE instances
            """)
        // The function's statement, its arguments as parameters.
        let check = "SELECT " + SQLStore.instanceClashes
            .replacingOccurrences(of: "c_host", with: "$1").replacingOccurrences(of: "c_ips", with: "$2")
            .replacingOccurrences(of: "c_id", with: "$3").replacingOccurrences(of: "c_interface", with: "$4")
        let plans = try cluster(st, """
            SET plan_cache_mode = force_generic_plan;
            SET enable_seqscan = off; SET enable_indexscan = off; SET enable_indexonlyscan = off;
            PREPARE c(text, text, text, text) AS \(check);
            EXPLAIN EXECUTE c('hv1', '10.7.3.3', 'x', 'tapbig7')
            """).joined(separator: "\n")
        #expect(plans.contains("Bitmap Index Scan on instances_addresses") && plans.contains("Bitmap Index Scan on instances_host_interface")
                    && !plans.contains("Seq Scan") && !plans.contains("instances_host_addresses"), "\(plans)")
        #expect(try cluster(st, """
            SELECT x FROM (VALUES (1, rampart_instance_clashes('hv1', 'tapnew', '10.7.3.3', 'x')),
                                  (2, rampart_instance_clashes('hv1', 'tapbig5', '10.7.99.9', 'x')),
                                  (3, rampart_instance_clashes('hv1', 'tapnew', '10.7.99.9', 'x')),
                                  (4, rampart_instance_clashes('hv2', 'tapbig5', '10.7.3.3', 'x'))) v(n, x) ORDER BY n
            """) == ["t", "t", "f", "f"], "an address clashes, an interface clashes, neither, both on another host")
        #expect(throws: StoreError.self) { try st.addInstance("dup-a", Instance(host: "hv1", groups: ["web"], ips: [ip("fd07::7cf")], interface: "tapdupa")) }
        #expect(throws: StoreError.self) { try st.addInstance("dup-i", Instance(host: "hv1", groups: ["web"], ips: [ip("10.7.99.1")], interface: "tapbig1999")) }
        _ = try st.addInstance("elsewhere", Instance(host: "hv2", groups: ["web"], ips: [ip("10.7.3.3")], interface: "tapbig3"))
        _ = try st.addInstance("new-here", Instance(host: "hv1", groups: ["web"], ips: [ip("10.7.99.2")], interface: "tapnew"))
        #expect(try st.instance("new-here") != nil && st.instance("dup-a") == nil && st.instance("dup-i") == nil)
    }

    /// A reader that connected while the log was empty keeps reading it by its primary key once
    /// it holds many rows (schema version 8). Its statements' plans are made in its first calls
    /// and kept; made for an empty log they scanned all of it on every later read and recorded
    /// position (9.7 ms a read at 100,000 rows instead of 0.03 ms). Counted by the server: the
    /// reads and positions after the log grew use the index and never scan the table.
    @Test func aReaderPlannedOnAnEmptyLogKeepsToItsIndexWhenTheLogGrows() throws {
        let st = try store()
        try populate(st)
        _ = try st.trim(maxAge: nil, keep: 0)
        try cluster(st, "ANALYZE change_log")  // its statistics: empty, as a new store's
        let reader = try PostgresStore(location: st.location, migrate: false)
        var head = try reader.entries(host: "hv1", after: 0, limit: 0).head
        for _ in 0..<10 {  // more than the five calls after which a plan is kept
            _ = try reader.entries(host: "hv1", after: head, limit: 1000)
            try reader.recordApplied(host: "hv1", sequence: head)
        }
        try cluster(st, "INSERT INTO change_log(host, seq, refresh) SELECT 'hv2', nextval('change_log_seq'), 'rules:web' FROM generate_series(1, 20000)")
        _ = try st.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"3000","cidr":"0.0.0.0/0"}"#, "web"))
        head = try st.entries(host: "hv1", after: 0, limit: 0).head
        func scans() throws -> (seq: Int, index: Int) {
            let row = try SharedPostgres.cluster().psql(
                "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'change_log'", database: st.location.database)
            let cells = row.split(separator: "|").compactMap { Int($0) }
            return (cells.first ?? -1, cells.last ?? -1)
        }
        usleep(1_500_000)  // a backend reports its counts once idle for up to a second
        let before = try scans()
        for _ in 0..<10 {
            let page = try reader.entries(host: "hv1", after: head - 1, limit: 1000)
            #expect(page.head == head && page.entries.map(\.sequence) == [head])
            try reader.recordApplied(host: "hv1", sequence: head)
        }
        var after = try scans()
        let deadline = Date().addingTimeInterval(10)
        while after.index < before.index + 20 && Date() < deadline {
            usleep(200_000)
            after = try scans()
        }
        #expect(after.index >= before.index + 20, "the reads' index scans were not counted: \(before) → \(after)")
        #expect(after.seq == before.seq, "the change log was scanned whole by \(after.seq - before.seq) statements")
    }

    /// Array arguments are built by hand (`SQLStore.arrayLiteral`): PostgreSQL's own parser
    /// must read back exactly the strings given, whatever they hold. Catches: an escape
    /// missed or doubled, an element split at a comma or brace, a quoted "NULL" read as null.
    @Test func arrayLiteralsReadBackExactly() throws {
        let st = try store()
        let items = ["hv1", "", "a,b", "{x}", #"quote " inside"#, #"back\slash"#, #"\""#, "NULL", " spaced ", "é ✓ 名", "tab\tnew\nline"]
        let literal = SQLStore.arrayLiteral(items)
        let rows = try st.db.query("SELECT x FROM unnest(CAST(? AS text[])) WITH ORDINALITY AS u(x, n) ORDER BY n", [.text(literal)])
        #expect(rows.map { $0[0] } == items.map { Optional($0) }, "\(literal)")
        #expect(SQLStore.arrayLiteral([]) == "{}")
    }

    /// Eight controllers at once: authorizes of one group lose no rule (serializable
    /// transactions, retried on conflict, never surfacing a serialization failure); every
    /// host's sequence stays gapless and unique.
    @Test func concurrentControllersLoseNothing() throws {
        let url = try SharedPostgres.freshDatabase("pgstore")
        let setup = try PostgresStore(url: url, migrate: true)
        for g in ["web", "target"] { _ = try setup.createGroup(g, description: nil) }
        let errors = Heard()
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            do {
                let st = try PostgresStore(url: url, migrate: false)
                for k in 0..<6 {
                    let port = 2000 + worker * 100 + k
                    _ = try st.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"\#(port)","group":"target"}"#, "web", refs: ["target"]))
                    let n = worker * 100 + k
                    _ = try st.addInstance("i\(n)", Instance(host: "hv\(n % 5)", groups: k % 2 == 0 ? ["target"] : ["web"],
                                                             ips: [ip("10.9.\(n / 250).\(n % 250 + 1)")], interface: "tap\(n)"))
                }
            } catch {
                errors.add(.lost("\(error)"))
            }
        }
        #expect(errors.all.isEmpty)
        let st = try PostgresStore(url: url, migrate: false)
        let ports = Set(try st.group("web")!.rules.compactMap { $0.ports.map { Int($0.lowerBound) } })
        let wanted = Set((0..<8).flatMap { w in (0..<6).map { 2000 + w * 100 + $0 } })
        #expect(try st.group("web")!.rules.count == 8 * 6, "missing: \(wanted.subtracting(ports).sorted()), extra: \(ports.subtracting(wanted).sorted())")
        var seen = Set<Int64>()
        for p in try st.progress(hosts: nil) {
            let seqs = try st.entries(host: p.host, after: 0, limit: 10_000).entries.map(\.sequence)
            #expect(seqs == seqs.sorted() && seqs.last == p.head, "\(p.host)")
            for q in seqs { #expect(seen.insert(q).inserted, "sequence \(q) used twice") }
        }
        // Every target member's host is known to the log, and every host with a web member
        // (web references target) heard members(target) at least once.
        for host in try st.hostsForMembersRefresh("target") {
            let rows = try st.entries(host: host, after: 0, limit: 10_000).entries.map(\.refresh)
            #expect(rows.contains(.members("target")) || rows.filter { if case .instance = $0 { false } else { true } }.isEmpty, "\(host)")
        }
    }

    /// A full predicate-lock table ("out of shared memory", SQLSTATE 53200) under a burst of
    /// serializable verbs is a conflict to wait out, not a failed verb: a cluster with the
    /// smallest table PostgreSQL allows, eight controllers adding rules and instances at once.
    /// Seen in `rampart-bench fleet` at ~1,000 verbs/s with the default setting (88 of 5,400
    /// verbs failed). Catches: the error returned to the caller, a rule lost on the retry. The
    /// server log must show the table filled, or the test proved nothing.
    /// Eight controllers add instances that want the same interface on one host at once (three
    /// rounds), then the same address (two rounds, the check from indexes since schema version
    /// 13), then remove one instance at once: through the server-side procedures (schema
    /// version 9), whose check and write must hold as one serializable transaction. Exactly one
    /// add wins, the others are refused saying why; exactly one removal wins, the others find
    /// nothing.
    @Test func concurrentInstanceVerbsOnOneInterfaceLetExactlyOneThrough() throws {
        let url = try SharedPostgres.freshDatabase("pgstore")
        let setup = try PostgresStore(url: url, migrate: true)
        _ = try setup.createGroup("web", description: nil)
        // Connected first, so that the eight calls start together; five rounds, five hosts.
        let stores = try (0..<8).map { _ in try PostgresStore(url: url, migrate: false) }
        for st in stores { _ = try st.groupExists("web") }
        var winners: [String] = []
        for round in 1...5 {
            let added = Collected(), refused = Collected()
            let sameAddress = round > 3
            let why = sameAddress ? "10.8.9.9 is already used" : #""tapsame" is already used"#
            DispatchQueue.concurrentPerform(iterations: 8) { worker in
                do {
                    let inst = sameAddress
                        ? Instance(host: "hv\(round)", groups: ["web"], ips: [ip("10.8.9.9")], interface: "tapc\(worker)")
                        : Instance(host: "hv\(round)", groups: ["web"], ips: [ip("10.8.\(round).\(worker + 1)")], interface: "tapsame")
                    _ = try stores[worker].addInstance("c\(round)-\(worker)", inst)
                    added.add("c\(round)-\(worker)")
                } catch let error as StoreError {
                    refused.add(error.kind == .invalid && error.message.contains(why) ? "said why" : "\(error)")
                } catch {
                    refused.add("\(error)")
                }
            }
            #expect(added.all.count == 1 && refused.all.allSatisfy { $0 == "said why" }, "round \(round): added \(added.all), refused \(refused.all)")
            winners += added.all
        }
        #expect(try cluster(setup, "SELECT id FROM instances ORDER BY id") == winners.sorted())
        guard let winner = winners.first else { return }
        let removed = Collected(), missing = Collected()
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            do {
                let d = try stores[worker].removeInstance(winner)
                removed.add(d.map(\.description).joined(separator: ";"))
            } catch let error as StoreError {
                missing.add(error.kind == .notFound ? "not found" : "\(error)")
            } catch {
                missing.add("\(error)")
            }
        }
        #expect(removed.all == ["hv1: \(Refresh.instance(winner))"] && missing.all.allSatisfy { $0 == "not found" },
                "removed \(removed.all), missing \(missing.all)")
        #expect(try cluster(setup, "SELECT id FROM instances ORDER BY id") == Array(winners.sorted().dropFirst()))
    }

    /// The production roles of docs/postgres.md ("Production set-up"), as written there: a
    /// hypervisor's own role reads and records its host's log and its document, and cannot
    /// change policy (the verbs and their server-side procedures run with the caller's rights),
    /// nor read or move another host's log. Roles are the cluster's: created once per process.
    @Test func aHypervisorsRoleReadsItsOwnLogAndChangesNothingElse() throws {
        let st = try store()
        try populate(st)
        try cluster(st, """
            DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rampartd') THEN CREATE ROLE rampartd LOGIN; END IF;
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rampartd_hv1') THEN CREATE ROLE rampartd_hv1 LOGIN IN ROLE rampartd; END IF;
            END $$;
            GRANT SELECT ON ALL TABLES IN SCHEMA public TO rampartd;
            GRANT INSERT, UPDATE ON host_progress TO rampartd;
            ALTER TABLE change_log ENABLE ROW LEVEL SECURITY;
            CREATE POLICY own_rows ON change_log FOR SELECT TO rampartd USING (host = substring(current_user from 'rampartd_(.*)'));
            ALTER TABLE host_progress ENABLE ROW LEVEL SECURITY;
            CREATE POLICY own_progress ON host_progress TO rampartd USING (host = substring(current_user from 'rampartd_(.*)'));
            """)
        let url = try SharedPostgres.cluster().url(database: st.location.database)
        let userAt = try #require(url.range(of: "://")).upperBound
        let hv1URL = url.replacingCharacters(in: userAt..<(try #require(url.range(of: "@")).lowerBound), with: "rampartd_hv1")
        let hv1 = try PostgresStore(url: hv1URL, migrate: false)
        let own = try st.entries(host: "hv1", after: 0, limit: 1000)
        #expect(!own.entries.isEmpty)
        #expect(try hv1.entries(host: "hv1", after: 0, limit: 1000).entries == own.entries)
        // With its refreshes' reads, as the follower reads it (schema version 10).
        let ahead = try hv1.entries(host: "hv1", after: 0, limit: 1000, readingAhead: 1000)
        let aheadAsOwner = try st.entries(host: "hv1", after: 0, limit: 1000, readingAhead: 1000).readAhead
        #expect(ahead.entries == own.entries && ahead.readAhead != nil && ahead.readAhead == aheadAsOwner)
        #expect(try hv1.document(forHost: "hv1") == st.document(forHost: "hv1"))
        try hv1.recordApplied(host: "hv1", sequence: own.head)
        #expect(try st.progress(hosts: ["hv1"]).first?.applied == own.head)
        // Another host's log: not readable, its position not writable.
        #expect(!(try st.entries(host: "hv2", after: 0, limit: 1000).entries.isEmpty))
        #expect(try hv1.entries(host: "hv2", after: 0, limit: 1000).entries.isEmpty)
        let theirs = try hv1.entries(host: "hv2", after: 0, limit: 1000, readingAhead: 1000)
        #expect(theirs.entries.isEmpty && theirs.readAhead == nil)
        #expect(throws: StoreError.self) { try hv1.recordApplied(host: "hv2", sequence: 1) }
        // Policy: every verb refused, nothing changed (the procedures' paths and the transactions').
        let before = try st.document(forHost: "hv1")
        let heads = try st.progress(hosts: nil).map(\.head)
        #expect(throws: StoreError.self) {
            try hv1.addInstance("intruder", Instance(host: "hv1", groups: ["web"], ips: [ip("10.0.7.7")], interface: "tapx"))
        }
        #expect(throws: StoreError.self) { try hv1.removeInstance("web-1") }
        #expect(throws: StoreError.self) {
            try hv1.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"1-65535","cidr":"0.0.0.0/0"}"#, "web"))
        }
        #expect(throws: StoreError.self) { try hv1.setGroups(instance: "web-1", groups: ["db"]) }
        #expect(try st.document(forHost: "hv1") == before)
        #expect(try st.progress(hosts: nil).map(\.head) == heads)
    }

    @Test func aFullLockTableIsWaitedOutNotFailed() throws {
        let cluster = try PostgresCluster(maxConnections: 20, settings: ["max_pred_locks_per_transaction": "10"])
        try cluster.start()
        defer { cluster.destroy() }
        let url = cluster.url
        let setup = try PostgresStore(url: url, migrate: true)
        for g in 0..<12 { _ = try setup.createGroup("g\(g)", description: nil) }
        for n in 0..<60 {
            _ = try setup.addInstance("m\(n)", Instance(host: "hm\(n % 15)", groups: ["g\(n % 12)", "g\((n + 3) % 12)"],
                                                        ips: [ip("10.7.0.\(n + 1)")], interface: "tapm\(n)"))
        }
        // A serializable transaction that stays open for a while (a controller descheduled on a
        // busy machine, in the benchmark): every transaction that commits meanwhile keeps its
        // predicate locks until it ends, and the table fills.
        let holder = try PostgresStore(url: url, migrate: false)
        try holder.db.exec("BEGIN ISOLATION LEVEL SERIALIZABLE")
        _ = try holder.db.query("SELECT count(*) FROM groups", [])
        let released = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            Thread.sleep(forTimeInterval: 1.5)
            try? holder.db.exec("COMMIT")
            released.signal()
        }
        let errors = Heard()
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            do {
                let st = try PostgresStore(url: url, migrate: false)
                for k in 0..<25 {
                    let n = worker * 100 + k
                    _ = try st.authorize(group: "g\(n % 12)", rule: try rule(#"{"protocol":"tcp","ports":"\#(3000 + n)","group":"g\#((n + 1) % 12)"}"#,
                                                                         "g\(n % 12)", refs: ["g\((n + 1) % 12)"]))
                    _ = try st.addInstance("i\(n)", Instance(host: "hv\(n % 7)", groups: ["g\(n % 12)", "g\((n + 5) % 12)"],
                                                             ips: [ip("10.8.\(n / 250).\(n % 250 + 1)")], interface: "tap\(n)"))
                }
            } catch {
                errors.add(.lost("\(error)"))
            }
        }
        released.wait()
        #expect(errors.all.isEmpty, "\(errors.all.prefix(3))")
        let st = try PostgresStore(url: url, migrate: false)
        let rules = try (0..<12).reduce(0) { $0 + (try st.group("g\($1)")?.rules.count ?? 0) }
        #expect(rules == 8 * 25)
        let filled = cluster.serverLog().components(separatedBy: "out of shared memory").count - 1
        #expect(filled > 0, "the lock table never filled: the retry was not exercised")
        print("lock table full \(filled) times; every verb retried through it")
    }

    @Test func aServerThatIsGoneFailsVerbsCleanlyAndTheStoreReconnects() throws {
        let cluster = try PostgresCluster()
        try cluster.start()
        defer { cluster.destroy() }
        let st = try PostgresStore(url: cluster.url, migrate: true)
        _ = try st.createGroup("web", description: nil)
        try cluster.stop()
        do {
            _ = try st.createGroup("db", description: nil)
            Issue.record("a verb succeeded with the server down")
        } catch {
            #expect(error.kind == .unavailable)
        }
        try cluster.start()
        // The next call reconnects; the failed verb changed nothing.
        #expect(try st.group("db") == nil)
        _ = try st.createGroup("db", description: nil)
        #expect(try st.groupExists("db"))
    }

    @Test func aDaemonNeverCreatesOrUpgradesTheSchema() throws {
        let url = try SharedPostgres.freshDatabase("pgstore")
        do {
            _ = try PostgresStore(url: url, migrate: false)
            Issue.record("opened a database without the schema")
        } catch {
            #expect(error.kind == .missing)
            #expect(error.message.contains("no Rampart schema"))
        }
        let st = try PostgresStore(url: url, migrate: true)
        #expect(try st.installedSchemaVersion() == PostgresStore.schemaVersion)
        // Migrating again is a no-op; the daemon then opens it.
        _ = try PostgresStore(url: url, migrate: true)
        _ = try PostgresStore(url: url, migrate: false)
    }
}

/// The first column of a query's rows, through psql on the store's database (the oracle).
func cluster(_ st: PostgresStore, _ sql: String) throws -> [String] {
    let out = try SharedPostgres.cluster().psql(sql, database: st.location.database)
    return out.isEmpty ? [] : out.split(separator: "\n").map { String($0.split(separator: "|").first ?? "") }
}

/// Strings collected from several threads.
final class Collected: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ s: String) { lock.withLock { items.append(s) } }
    var all: [String] { lock.withLock { items } }
}

/// What a wake-up handler heard (from the event loop's thread).
/// Pages an armed read delivered (`PrefetchingWakeups`), in order.
final class Delivered: @unchecked Sendable {
    private let condition = NSCondition()
    private var items: [PrefetchedPage?] = []
    func add(_ p: PrefetchedPage?) { condition.withLock { items.append(p); condition.broadcast() } }
    var all: [PrefetchedPage?] { condition.withLock { items } }
    func waitFor(count: Int, timeout: Double) -> [PrefetchedPage?] {
        condition.withLock {
            let deadline = Date(timeIntervalSinceNow: timeout)
            while items.count < count && condition.wait(until: deadline) {}
            return items
        }
    }
}

final class Heard: @unchecked Sendable {
    private let condition = NSCondition()
    private var items: [Wakeup] = []
    func add(_ w: Wakeup) { condition.withLock { items.append(w); condition.broadcast() } }
    var all: [Wakeup] { condition.withLock { items } }
    func waitFor(count: Int, timeout: Double) -> [Wakeup] {
        condition.withLock {
            let deadline = Date(timeIntervalSinceNow: timeout)
            while items.count < count && condition.wait(until: deadline) {}
            return items
        }
    }
}

@Suite("Store URLs") struct StoreAddressTests {
    @Test func urlsAndPathsAreTold() throws {
        let env: [String: String] = [:]
        #expect(try StoreAddress("/var/lib/rampart/x.db", environment: env) == .sqlite(path: "/var/lib/rampart/x.db"))
        #expect(try StoreAddress(nil, environment: env) == .sqlite(path: StoreAddress.defaultPath))
        #expect(try StoreAddress(nil, environment: ["RAMPART_STORE": "/tmp/a.db"]) == .sqlite(path: "/tmp/a.db"))
        guard case .postgres(let l) = try StoreAddress("postgres://ctl@db.example:6543/rampart?sslrootcert=/etc/ca.pem", environment: env) else {
            Issue.record("not postgres")
            return
        }
        #expect(l.user == "ctl" && l.host == "db.example" && l.port == 6543 && l.database == "rampart")
        #expect(l.tls == .verifyFull)  // TCP defaults to verified TLS
        let s = try PostgresLocation(url: "postgresql://postgres@localhost:5433/r?host=/run/pg", environment: env)
        #expect(s.socketPath == "/run/pg/.s.PGSQL.5433" && s.tls == .disable)
        let pw = try PostgresLocation(url: "postgres://u@h/d?sslmode=require", environment: ["PGPASSWORD": "secret"])
        #expect(pw.password == "secret" && pw.tls == .require)
        #expect(!pw.description.contains("secret"))
    }

    @Test func badURLsAreRefusedNamingWhatIsWrong() {
        let cases: [(String, String)] = [
            ("postgres://h/d", "no user"),
            ("postgres://u@h/", "no database"),
            ("postgres://u@h:99999/d", "port"),
            ("postgres://u@h/d?sslmode=maybe", "sslmode"),
            ("postgres://u@h/d", "sslmode=verify-full (the default over TCP) needs sslrootcert"),
            ("postgres://u@h/d?colour=red", "unknown parameter colour"),
            ("postgres://u@/d?host=/run/pg&sslmode=require", "over a Unix socket"),
            ("postgres://u:hunter2@h/d?port=1&port=2", "given twice"),
            ("mysql://u@h/d", "only postgres://"),
        ]
        for (url, why) in cases {
            do {
                _ = try StoreAddress(url, environment: [:])
                Issue.record("accepted \(url)")
            } catch {
                #expect(error.message.contains(why), "\(url): \(error.message)")
                #expect(!error.message.contains("hunter2"), "a password was echoed")
            }
        }
    }
}

/// The `rampart` executable on a PostgreSQL store: the change log is the delivery, `--wait`
/// waits for the hosts (exit 4 when they do not answer), an unreachable server is exit 3 with
/// nothing changed, `changelog` shows and trims.
@Suite("rampart controller verbs on PostgreSQL", .serialized, .tags(.kernel), .rootOnly) struct PostgresCLITests {
    @Test func verbsLogWaitAndFailCleanly() throws {
        let cluster = try PostgresCluster()
        try cluster.start()
        defer { cluster.destroy() }
        let url = cluster.url
        #expect(try rampart(["group", "create", "web"], store: url).status == 0)
        let add = try rampart(["instance", "add", "web-1", "--host", "hv1", "--ip", "10.0.1.11", "--interface", "tapweb1", "--group", "web"], store: url)
        #expect(add.status == 0 && add.out.contains("logged for hv1: refresh_instance(web-1) (#"), "\(add.out)\(add.err)")
        // No daemon applies hv1's rows: --wait gives up after its timeout, naming the host.
        let w = try rampart(["group", "authorize", "web", "--protocol", "tcp", "--ports", "80", "--cidr", "0.0.0.0/0", "--wait", "--timeout", "0.3"], store: url)
        #expect(w.status == 4 && w.out.contains("not applied on hv1 within 0.3 s"), "\(w.out)\(w.err)")
        // Once hv1 records its position, --wait returns and says how long it waited.
        let st = try PostgresStore(url: url, migrate: false)
        let next = try rampart(["group", "authorize", "web", "--protocol", "tcp", "--ports", "443", "--cidr", "0.0.0.0/0", "--wait", "--timeout", "10"], store: url, background: true)
        usleep(200_000)
        try st.recordApplied(host: "hv1", sequence: try st.progress(hosts: ["hv1"]).first!.head)
        let done = try next.finish()
        #expect(done.status == 0 && done.out.contains("applied on hv1: #"), "\(done.out)\(done.err)")
        // changelog status: a line per host.
        let status = try rampart(["changelog", "status", "--json"], store: url)
        #expect(status.status == 0 && status.out.contains(#""host":"hv1","pending":0"#), "\(status.out)\(status.err)")
        // The server goes away: a verb exits 3 and changes nothing.
        try cluster.stop()
        let down = try rampart(["group", "create", "db"], store: url)
        #expect(down.status == 3 && down.err.contains("cannot connect to the store"), "\(down.err)")
        try cluster.start()
        #expect(try PostgresStore(url: url, migrate: false).group("db") == nil)
    }
}
