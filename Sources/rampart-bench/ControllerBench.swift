import RampartBackends
import ArgumentParser
import Foundation
import NIOPosix
import RampartConntrack
import RampartCore
import RampartDaemon
import RampartHarness
import RampartStore

/// `rampart-bench controller`: the controller on a PostgreSQL store loaded with a cloud
/// (default cloud-1M: 1,000,000 groups, 1,000,000 instances over 10,000 hosts), and 10 real
/// daemons in this process, each serving one host of the cloud (hv0 … hv9, each with its own
/// PostgreSQL connection, change-log follower, LISTEN connection, and nftables in its own
/// network namespace). hv0 holds 1,000 instances (host-1k), the others ~100.
///
/// Figures (medians and p99; the baselines are measured in the same run):
/// - **COMMIT**: a verb's call, from the call to its COMMIT (the verb's whole transaction, with
///   the fan-out appended to the change logs and the NOTIFY).
/// - **verb → applied**: from the verb's call until every notified host's daemon has applied the
///   verb's last row for it (its applied position, as recorded in `host_progress`, reaches it),
///   for a members change (an instance joins or leaves `bench-web`, which the rules of
///   `bench-app` reference; `bench-app` has a member on each of the 10 daemon hosts) and a rules
///   change (a rule added to or removed from `bench-app`). Every notified host is a daemon host.
///   Baseline: the same verbs on a SQLite store holding the same hosts' policy, then the refresh
///   calls delivered one by one to ten more daemons' Unix sockets, each waiting for its commit
///   (what `rampart` does with SQLite). Both stores' series run in alternating blocks of ~20
///   verbs (five blocks each), so that a figure and its baseline share the machine's minutes.
/// - **one notified host**: the same two kinds of verb on `bench-solo`, whose only members are on
///   hv0 (host-1k): a rule added to or removed from it, and a member of `bench-solo-web` (which
///   its rule references) joining or leaving on hv0. Only hv0 applies anything, so the figure is
///   one host's pipeline (NOTIFY, its log read, its plan, its kernel commit, its recorded
///   position), which the 10-host figures mix with ten daemons' applies on two shared cores.
/// - **broadcast**: the rules change delivered per group to every host of the cloud (the
///   original design's broadcast, rejected): a trigger on group `bench-bcast` appends a row for
///   every host (10,000) in the verb's transaction and NOTIFYs `*`; COMMIT, verb → applied on
///   the 10 daemons, and server CPU per verb, beside the targeted rules change.
/// - **sustained**: 8 threads, each with its own connection, issue authorize/revoke pairs on
///   distinct groups of the cloud for `--seconds`; verbs per second, COMMIT p50/p99, and the
///   server's CPU per verb (all PostgreSQL processes, from /proc, including the daemons' reads
///   of their logs and the LISTEN backends woken by each NOTIFY).
/// - **catch-up**: hv1's follower is stopped, 1,000 rules changes of hv1's groups are committed,
///   a follower primed before them starts: time until hv1 has applied all 1,000 rows. Baseline:
///   a whole reload of hv1's document.
/// - **cold start**: a new daemon for hv0 (host-1k) in a fresh namespace: connect, prime the
///   follower, first sync (document from PostgreSQL → kernel), ready. Baseline: the same host's
///   daemon on SQLite.
/// - Diagnostics: one statement's round trip (`groupExists`), and reading hv9's document (what
///   `validateHost` costs inside an import's transaction; a members change checked it too until
///   it checked only its instance, `validateMember`).
struct ControllerBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "controller",
        abstract: "The controller on PostgreSQL with cloud-1M and 10 daemons: verb → applied, sustained verbs/s, catch-up, cold start.")
    @OptionGroup var options: CommonBenchOptions

    @Option(help: "Groups in the cloud (a multiple of 10: tenants of 10 groups).")
    var groups: Int = 1_000_000
    @Option(help: "Instances in the cloud (at least 1,000 + hosts; each in 2 groups of its tenant).")
    var instances: Int = 1_000_000
    @Option(help: "Hosts in the cloud (hv0 gets 1,000 instances, the rest share the others).")
    var hosts: Int = 10_000
    @Flag(help: "A smaller cloud for a smoke run: 100,000 groups and instances, 1,000 hosts.")
    var quick = false
    @Option(help: "Seconds of the sustained run.")
    var seconds: Double = 5
    @Flag(help: "Load pg_stat_statements and print, after each ten-host verb series, the statements that took the server's time (a diagnostic: it costs the server a little on every statement).")
    var statementStats = false
    @Option(help: "The daemons' read-ahead: a log page of at most this many rows comes with its refreshes' reads (0: off, each refresh reads the store; to compare in runs side by side).")
    var readAhead: Int = ChangeLogFollower.Settings().readAhead

    @Option(help: "How every client reaches the server: socket (its Unix socket, the default), tcp (127.0.0.1, plain), or tls (127.0.0.1, TLS with verify-full against a throwaway CA), to see what production's TCP and TLS add.")
    var connection: StoreConnection = .socket

    /// How the bench's clients reach the server (`--connection`).
    enum StoreConnection: String, ExpressibleByArgument, CaseIterable { case socket, tcp, tls }

    static let daemonCount = 10

    func run() throws {
        let report = Report(json: options.json)
        let repeats = options.repeats ?? 101
        let (g, i, h) = quick ? (100_000, 100_000, 1_000) : (groups, instances, hosts)
        guard g % 10 == 0, g >= 20, h > Self.daemonCount, i >= 1_000 + h, i < 16_000_000 else {
            throw ValidationError("--groups a multiple of 10, --hosts > \(Self.daemonCount), 1,000 + hosts ≤ --instances < 16M")
        }
        let cluster = try PostgresCluster(database: "rampart", allowTCP: connection != .socket, maxConnections: 100,
                                          settings: statementStats ? ["shared_preload_libraries": "'pg_stat_statements'", "pg_stat_statements.track": "all"] : [:])
        defer { cluster.destroy() }
        try cluster.start()
        _ = try cluster.psql("ALTER SYSTEM SET shared_buffers = '1GB'")
        try cluster.restart()
        let pki = connection == .tls ? try ThrowawayPKI() : nil
        defer { pki?.remove() }
        let url = try Self.url(cluster, connection, pki: pki)
        report.note("store connections: \(connection.rawValue) (\(url))")
        let ctl = try PostgresStore(url: url, migrate: true)

        // Load: server-side SQL, one transaction, then ANALYZE.
        var t0 = monotonicNanos()
        try cluster.psql(CloudLoad.sql(groups: g, instances: i, hosts: h))
        try cluster.psql("ANALYZE")
        let loadNs = monotonicNanos() - t0
        // Then what autovacuum does to freshly loaded tables in its first minutes (visibility
        // maps, hint bits, frozen rows), done now, as a store in service has had it done: the
        // timed series then never shares the server with that first pass.
        let vacuumStart = monotonicNanos()
        try cluster.psql("VACUUM (FREEZE, ANALYZE)")
        let vacuumNs = monotonicNanos() - vacuumStart
        report.note("store: cloud of \(g) groups, \(i) instances, \(h) hosts loaded (INSERT … SELECT generate_series, one transaction, ANALYZE) in \(formatDuration(loadNs)), then VACUUM (FREEZE, ANALYZE) in \(formatDuration(vacuumNs))")
        report.add(Figure(benchmark: "controller: load cloud into PostgreSQL", median_ns: loadNs, baseline: nil, baseline_median_ns: nil,
                          extra: ["groups": "\(g)", "instances": "\(i)", "hosts": "\(h)", "vacuum": formatDuration(vacuumNs)]))

        // The bench's own objects, written by the verbs themselves.
        let daemonHosts = (0..<Self.daemonCount).map { "hv\($0)" }
        for id in ["bench-web", "bench-app", "bench-bcast", "bench-solo", "bench-solo-web"] { _ = try ctl.createGroup(id, description: nil) }
        _ = try ctl.authorize(group: "bench-app", rule: Rule(id: "https", proto: .tcp, ports: 443...443, remote: .group("bench-web")))
        _ = try ctl.authorize(group: "bench-bcast", rule: Rule(id: "web", proto: .tcp, ports: 80...80, remote: .cidr(CloudLoad.prefix("10.0.0.0/8"))))
        for (k, host) in daemonHosts.enumerated() {
            _ = try ctl.addInstance("bench-a\(k)", Instance(host: host, groups: ["bench-app", "bench-bcast"],
                                                           ips: [IPAddress("172.16.0.\(k + 1)")!], interface: "tba\(k)"))
        }
        // One notified host: bench-solo's only members are on hv0 (host-1k) and hv9 resp., so its
        // rules change, and a member of bench-solo-web (which its rule references) joining or
        // leaving on the same host, notify that host alone.
        _ = try ctl.authorize(group: "bench-solo", rule: Rule(id: "pg", proto: .tcp, ports: 5432...5432, remote: .group("bench-solo-web")))
        _ = try ctl.addInstance("bench-s0", Instance(host: "hv0", groups: ["bench-solo"], ips: [IPAddress("172.16.2.1")!], interface: "tbs0"))
        // The broadcast baseline's trigger: every change of bench-bcast's rules gets a row in
        // every host's log (and wakes every reader), in the verb's own transaction.
        try cluster.psql(CloudLoad.broadcastTrigger)

        // The 10 daemons, each in its own namespace.
        var namespaces: [TestNamespace] = []
        var live: [LiveDaemon] = []
        for host in daemonHosts {
            let ns = try TestNamespace(prefix: "bc")
            namespaces.append(ns)
            live.append(try LiveDaemon(url: url, host: host, netns: ns.name, readAhead: readAhead))
        }
        for d in live { try d.waitReady() }
        report.note("10 daemons ready (hv0: \(live[0].daemon.currentStatus.chains) chains)")
        let byHost = Dictionary(uniqueKeysWithValues: live.map { ($0.host, $0) })

        // Diagnostics: a round trip, and a 100-instance host's document. Then the CPU of one
        // statement on each side, over 2,000 more (the server's is read from /proc in clock
        // ticks): this process (postgres-nio, its event-loop thread, the caller's wake-ups; the
        // ten idle daemons' followers poll once in 10 s each) and the server's processes.
        let rtt = try measure(repeats: repeats) { _ = try ctl.groupExists("bench-web") }
        let cpuCalls = 2_000
        let rttCPU0 = processCPUNanos(), rttServer0 = cluster.serverCPUSeconds()
        for _ in 0..<cpuCalls { _ = try ctl.groupExists("bench-web") }
        let rttCPU = (processCPUNanos() - rttCPU0) / UInt64(cpuCalls)
        let rttServer = UInt64(max(0, cluster.serverCPUSeconds() - rttServer0) / Double(cpuCalls) * 1e9)
        report.add(Figure(benchmark: "controller: one statement's round trip", median_ns: median(rtt), baseline: nil, baseline_median_ns: nil,
                          extra: ["p99": formatDuration(percentile(rtt, 99)), "client_cpu_per_call": formatDuration(rttCPU),
                                  "server_cpu_per_call": formatDuration(rttServer)]))
        let doc9 = try measure(repeats: max(5, repeats / 5)) { _ = try ctl.document(forHost: "hv9") }
        report.add(Figure(benchmark: "controller: hv9 document read (~100 instances)", median_ns: median(doc9), baseline: nil, baseline_median_ns: nil,
                          extra: ["p99": formatDuration(percentile(doc9, 99))]))

        // Baseline: the same verbs on SQLite, refresh calls delivered to the daemons' sockets:
        // ten more daemons, each in a namespace of its own, on the ten hosts' documents as they
        // are now (the export copies them; hv0's first sync is the cold start baseline).
        var sqliteNamespaces: [TestNamespace] = []
        for _ in daemonHosts { sqliteNamespaces.append(try TestNamespace(prefix: "bc")) }
        let sq = try SQLiteBaseline(postgres: ctl, hosts: daemonHosts, namespaces: sqliteNamespaces, report: report)

        // Members and rules changes, verb → applied on every notified daemon host. The verbs
        // toggle (add, remove, …; authorize, revoke, …), each store from the same start.
        func memberVerb(_ store: SQLStore) -> () throws(StoreError) -> [Delivery] {
            var member = false
            return { () throws(StoreError) -> [Delivery] in
                member.toggle()
                return try member
                    ? store.addInstance("bench-m", Instance(host: "hv9", groups: ["bench-web"], ips: [IPAddress("172.16.1.1")!], interface: "tbm"))
                    : store.removeInstance("bench-m")
            }
        }
        func ruleVerb(_ store: SQLStore, _ group: String) -> () throws(StoreError) -> [Delivery] {
            var ruleOn = false
            return { () throws(StoreError) -> [Delivery] in
                ruleOn.toggle()
                return try ruleOn
                    ? store.authorize(group: group, rule: Rule(id: "bench", proto: .tcp, ports: 8080...8080, remote: .cidr(CloudLoad.prefix("10.1.0.0/16"))))
                    : store.revoke(group: group, rule: nil, id: "bench")
            }
        }
        // The two stores' series in alternating blocks (PostgreSQL members, SQLite members,
        // PostgreSQL rules, SQLite rules, again …), so that each figure and its baseline sample
        // the same minutes of a machine whose speed moves by a quarter within one (until
        // 2026-12-06 the baseline ran minutes after, at another speed). One block each with
        // --statement-stats, whose figures are per series. Blocks of an even number of verbs:
        // each starts from the same state.
        let blocks = statementStats ? 1 : 5
        let perBlock = max(2, (repeats / blocks + 1) / 2 * 2)
        let (pgMember, pgRule, sqMember, sqRule) = (memberVerb(ctl), ruleVerb(ctl, "bench-app"), memberVerb(sq.store), ruleVerb(sq.store, "bench-app"))
        var members = VerbTimes(), rules = VerbTimes(), sqMembers = VerbTimes(), sqRules = VerbTimes()
        if statementStats { _ = try cluster.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset(); SELECT pg_stat_reset()") }
        for _ in 0..<blocks {
            members.merge(try timedVerbs(perBlock, cluster: cluster, daemons: byHost, pgMember))
            sqMembers.merge(try sq.timedVerbs(perBlock, sqMember))
            if statementStats { try printStatementStats(cluster, "members change, 10 hosts", verbs: perBlock) }
            rules.merge(try timedVerbs(perBlock, cluster: cluster, daemons: byHost, pgRule))
            sqRules.merge(try sq.timedVerbs(perBlock, sqRule))
            if statementStats { try printStatementStats(cluster, "rules change, 10 hosts", verbs: perBlock) }
        }
        sq.stop()
        sqliteNamespaces = []
        // An even number of toggling verbs: each series ends where it began (its rule revoked,
        // its member gone), so that a series added after it starts from the same state.
        let soloCount = max(2, (repeats + 1) / 2 * 2)
        let soloRules = try timedVerbs(soloCount, cluster: cluster, daemons: byHost, ruleVerb(ctl, "bench-solo"))
        var soloMember = false
        let soloMembers = try timedVerbs(soloCount, cluster: cluster, daemons: byHost) { () throws(StoreError) -> [Delivery] in
            soloMember.toggle()
            return try soloMember
                ? ctl.addInstance("bench-sm", Instance(host: "hv0", groups: ["bench-solo-web"], ips: [IPAddress("172.16.2.2")!], interface: "tbsm"))
                : ctl.removeInstance("bench-sm")
        }
        let broadcast = try timedVerbs(max(11, repeats / 2), cluster: cluster, daemons: byHost, ruleVerb(ctl, "bench-bcast"))
        try cluster.psql("DROP TRIGGER bench_broadcast ON groups")

        // Sustained: 8 clients, authorize/revoke pairs on distinct groups of the cloud.
        let sustained = try Sustained.run(url: url, cluster: cluster, tenants: g / 10, seconds: seconds)

        // Catch-up after 1,000 missed changes at hv1.
        let catchUp = try catchUpFigure(ctl: ctl, daemon: live[1], missed: 1_000)

        // Cold start of host-1k from PostgreSQL, in a fresh namespace.
        live[0].stop()
        let coldNS = try TestNamespace(prefix: "bc")
        t0 = monotonicNanos()
        let cold = try LiveDaemon(url: url, host: "hv0", netns: coldNS.name, readAhead: readAhead)
        try cold.waitReady()
        let coldNs = monotonicNanos() - t0
        let coldChains = cold.daemon.currentStatus.chains
        cold.stop()
        for d in live.dropFirst() { d.stop() }

        ctl.disconnect()

        // The report.
        func p(_ s: [UInt64]) -> String { formatDuration(percentile(s, 99)) }
        func latency(_ name: String, _ pg: VerbTimes, _ sqlite: VerbTimes, applied: Bool) {
            let a = applied ? pg.applied : pg.commit, b = applied ? sqlite.applied : sqlite.commit
            var e = ["p99": p(a), "baseline_p99": p(b), "samples": "\(a.count)", "hosts_notified": "\(pg.hostsNotified)",
                     "server_cpu_per_verb": formatDuration(pg.cpuPerVerbNs), "daemons_cpu_per_verb": formatDuration(pg.daemonsCPUPerVerbNs)]
            if applied {
                for (role, ns) in pg.threadCPUPerVerbNs { e["cpu_per_verb_\(role)"] = formatDuration(ns) }
                for (role, runs) in pg.threadRunsPerVerb { e["runs_per_verb_\(role)"] = String(format: "%.1f", runs) }
                e.merge(pg.lastHost.summary) { a, _ in a }
                e["target"] = "p50 ≤ 5 ms, p99 ≤ 25 ms"
                e["met"] = median(a) <= 5_000_000 && percentile(a, 99) <= 25_000_000 ? "yes" : "NO"
            }
            report.add(Figure(benchmark: name, median_ns: median(a), baseline: applied ? "SQLite + socket deliveries" : "SQLite verb",
                              baseline_median_ns: median(b), extra: e))
        }
        latency("controller members change: COMMIT", members, sqMembers, applied: false)
        latency("controller members change: verb → applied on all notified", members, sqMembers, applied: true)
        latency("controller rules change: COMMIT", rules, sqRules, applied: false)
        latency("controller rules change: verb → applied on all notified", rules, sqRules, applied: true)
        // The same pipeline with one notified host: what a hypervisor with its own CPUs sees of
        // a verb (the 10-host figures above share two cores among ten daemons' applies).
        for (name, times, tenHosts) in [("rules change", soloRules, rules), ("members change", soloMembers, members)] {
            guard times.hostsNotified == 1 else { throw ValidationError("the one-host \(name) notified \(times.hostsNotified) hosts") }
            // The verbs alternate (add, remove, add, …): each half's median apart, since only an
            // added rule makes the kernel re-validate the table and only a join plugs.
            let added = times.applied.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
            let removed = times.applied.enumerated().filter { $0.offset % 2 == 1 }.map(\.element)
            let drainAdded = times.drain.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
            let drainRemoved = times.drain.enumerated().filter { $0.offset % 2 == 1 }.map(\.element)
            report.add(Figure(benchmark: "controller \(name), one notified host (hv0, host-1k): verb → applied", median_ns: median(times.applied),
                              baseline: "the same kind of verb on 10 notified hosts", baseline_median_ns: median(tenHosts.applied),
                              extra: ["p99": p(times.applied), "commit": formatDuration(median(times.commit)), "commit_p99": p(times.commit),
                                      "added_p50": formatDuration(median(added)), "removed_p50": formatDuration(median(removed)),
                                      "drain_added_p50": formatDuration(median(drainAdded)), "drain_removed_p50": formatDuration(median(drainRemoved)),
                                      "baseline_p99": p(tenHosts.applied), "server_cpu_per_verb": formatDuration(times.cpuPerVerbNs),
                                      "target": "p50 ≤ 5 ms, p99 ≤ 25 ms",
                                      "met": median(times.applied) <= 5_000_000 && percentile(times.applied, 99) <= 25_000_000 ? "yes" : "NO"]))
        }
        for (name, pick) in [("COMMIT", \VerbTimes.commit), ("verb → applied on 10 daemons", \VerbTimes.applied)] {
            let a = broadcast[keyPath: pick], b = rules[keyPath: pick]
            report.add(Figure(benchmark: "controller broadcast rules change (\(h) hosts): \(name)", median_ns: median(a),
                              baseline: "targeted rules change", baseline_median_ns: median(b),
                              extra: ["p99": p(a), "baseline_p99": p(b), "server_cpu_per_verb": formatDuration(broadcast.cpuPerVerbNs),
                                      "baseline_server_cpu_per_verb": formatDuration(rules.cpuPerVerbNs), "rows_per_verb": "\(h + Self.daemonCount)"]))
        }
        report.add(Figure(benchmark: "controller sustained, 8 clients: verb COMMIT", median_ns: median(sustained.commits), baseline: nil, baseline_median_ns: nil,
                          extra: ["p99": p(sustained.commits), "verbs_per_second": String(format: "%.0f", sustained.perSecond),
                                  "verbs": "\(sustained.commits.count)", "failed": "\(sustained.failed)",
                                  "server_cpu_per_verb": formatDuration(sustained.cpuPerVerbNs),
                                  "target": "≥ 1000 verbs/s", "met": sustained.perSecond >= 1000 ? "yes" : "NO"]))
        report.add(Figure(benchmark: "controller catch-up: hv1 after 1,000 missed changes", median_ns: catchUp.catchUp,
                          baseline: "whole reload of hv1", baseline_median_ns: catchUp.reload,
                          extra: ["rows": "\(catchUp.rows)", "distinct_groups": "\(catchUp.groups)"]))
        report.add(Figure(benchmark: "controller cold start: hv0 (host-1k) from PostgreSQL", median_ns: coldNs,
                          baseline: "hv0 from SQLite", baseline_median_ns: sq.coldStart, extra: ["chains": "\(coldChains)"]))
        report.finish()
    }

    /// The URL every client of the bench uses: the cluster's socket, or its TCP port, plain or
    /// with TLS (a server certificate for localhost from `pki`'s CA, which the URL trusts; the
    /// server then refuses plain TCP).
    static func url(_ cluster: PostgresCluster, _ connection: StoreConnection, pki: ThrowawayPKI?) throws -> String {
        let tcp = "postgres://\(cluster.user)@localhost:\(cluster.port)/\(cluster.database)"
        switch connection {
        case .socket:
            return cluster.url
        case .tcp:
            try cluster.configureTCP(authentication: ["host all all 127.0.0.1/32 trust"], tls: nil)
            return tcp + "?sslmode=disable"
        case .tls:
            guard let pki else { throw ValidationError("--connection tls: no certificates") }
            let server = try pki.certificate("server", commonName: "localhost", altNames: ["DNS:localhost"])
            try cluster.configureTCP(authentication: ["hostssl all all 127.0.0.1/32 trust", "hostnossl all all 127.0.0.1/32 reject"],
                                     tls: .init(certificate: server.certificate, key: server.key))
            return tcp + "?sslrootcert=\(pki.path("ca.pem"))"
        }
    }

    /// The statements that took the server's time since the last reset (`pg_stat_statements`,
    /// top-level and nested: a function's statements appear beside its call), per verb; then
    /// resets the counts.
    func printStatementStats(_ cluster: PostgresCluster, _ series: String, verbs: Int) throws {
        let out = try cluster.psql("""
            SELECT round((total_exec_time + total_plan_time)::numeric * 1000 / \(verbs)) AS us_per_verb, calls / \(verbs) AS calls_per_verb,
                   round(((total_exec_time + total_plan_time) / calls)::numeric * 1000) AS us_per_call, toplevel,
                   left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
            FROM pg_stat_statements WHERE calls >= \(verbs / 2) ORDER BY total_exec_time + total_plan_time DESC LIMIT 14;
            """)
        print("server statements, \(series) (µs per verb, calls per verb, µs per call, top level, statement):")
        for line in out.split(separator: "\n") where line.contains("|") { print("  " + line) }
        // Whatever their number of calls: the statements that touched the most pages per call
        // (a sequential scan of a large table shows here even when it ran a few times).
        let pages = try cluster.psql("""
            SELECT calls, (shared_blks_hit + shared_blks_read) / calls AS pages_per_call,
                   round(((total_exec_time + total_plan_time) / calls)::numeric * 1000) AS us_per_call,
                   left(regexp_replace(query, '\\s+', ' ', 'g'), 140)
            FROM pg_stat_statements WHERE (shared_blks_hit + shared_blks_read) / calls >= 100 ORDER BY shared_blks_hit + shared_blks_read DESC LIMIT 8;
            SELECT pg_stat_statements_reset();
            """)
        print("statements touching ≥ 100 pages per call (calls, pages per call, µs per call, statement):")
        for line in pages.split(separator: "\n") where line.contains("|") { print("  " + line) }
        // Tables read by sequential scans meanwhile (a backend reports its counts within about
        // a second: approximate).
        let scans = try cluster.psql("""
            SELECT relname, seq_scan, seq_tup_read, COALESCE(idx_scan, 0), n_live_tup, n_dead_tup FROM pg_stat_user_tables
            WHERE seq_scan > 0 ORDER BY seq_tup_read DESC LIMIT 8;
            SELECT pg_stat_reset();
            """)
        print("tables scanned sequentially meanwhile (table, scans, rows read, index scans, live rows, dead rows):")
        for line in scans.split(separator: "\n") where line.contains("|") { print("  " + line) }
    }

    /// Times `count` verbs one after the other: COMMIT, and verb → applied on every notified
    /// host (each must be a daemon's); server CPU per verb over the whole series.
    func timedVerbs(_ count: Int, cluster: PostgresCluster, daemons: [String: LiveDaemon],
                    _ verb: () throws(StoreError) -> [Delivery]) throws -> VerbTimes {
        var out = VerbTimes()
        let cpu0 = cluster.serverCPUSeconds()
        let ownCPU0 = processCPUNanos()
        let threads0 = ThreadCPU.read()
        for _ in 0..<count {
            let t0 = monotonicNanos()
            let startedOnDispatchClock = DispatchTime.now().uptimeNanoseconds
            let deliveries = try verb()
            let committed = monotonicNanos()
            let committedOnDispatchClock = DispatchTime.now().uptimeNanoseconds  // the clock of the step times
            out.commit.append(committed - t0)
            var targets: [String: Int64] = [:]
            for d in deliveries { targets[d.host] = max(targets[d.host] ?? 0, d.sequence ?? 0) }
            guard !targets.isEmpty else { throw ValidationError("a verb notified nobody") }
            for host in targets.keys where daemons[host] == nil { throw ValidationError("a verb notified \(host), which has no daemon here") }
            out.hostsNotified = targets.count
            // Each daemon in turn, woken when its position moves. Until 2026-12-06 the bench
            // polled the ten statuses every 100 µs, each read taking the daemon's lock beside the
            // work it timed; three interleaved pairs of runs showed no difference beyond the
            // machine's noise, but a timer should not load what it times.
            let deadline = Date(timeIntervalSinceNow: 30)
            for (host, sequence) in targets where !daemons[host]!.daemon.waitForChangeLog(appliedThrough: sequence, deadline: deadline) {
                throw ValidationError("not applied within 30 s: \(targets)")
            }
            out.applied.append(monotonicNanos() - t0)
            let steps = targets.keys.compactMap { h in daemons[h]!.daemon.currentStatus.changeLog?.lastStep.map { (h, $0) } }
            // Every notified host's last step is this verb's (a reload's leaves none).
            if steps.count == targets.count, let first = steps.min(by: { $0.1.woken < $1.1.woken }), first.1.woken >= startedOnDispatchClock {
                out.lastHost.firstWake.append(first.1.woken &- startedOnDispatchClock)
                out.lastHost.inEveryKernel.append((steps.map(\.1.drained).max() ?? 0) &- startedOnDispatchClock)
            }
            if steps.count == targets.count, let last = steps.max(by: { $0.1.recorded < $1.1.recorded }) {
                out.lastHost.add(host: last.0, last.1, committedAt: committedOnDispatchClock)
            }
            if targets.count == 1, let ms = daemons[targets.first!.key]!.daemon.currentStatus.lastSyncMillis {
                out.drain.append(UInt64(ms * 1e6))
            }
        }
        out.cpuPerVerbNs = UInt64((cluster.serverCPUSeconds() - cpu0) / Double(count) * 1e9)
        out.daemonsCPUPerVerbNs = (processCPUNanos() - ownCPU0) / UInt64(count)
        for (role, used) in ThreadCPU.read().since(threads0) {
            out.threadCPUPerVerbNs[role] = used.ns / UInt64(count)
            out.threadRunsPerVerb[role] = Double(used.slices) / Double(count)
        }
        return out
    }

    /// hv1 misses `missed` rules changes of its own groups (its follower stopped; a new one,
    /// primed before them, starts after): time until all are applied, and a whole reload.
    func catchUpFigure(ctl: PostgresStore, daemon d: LiveDaemon, missed: Int) throws -> (catchUp: UInt64, reload: UInt64, rows: Int, groups: Int) {
        let doc = try ctl.document(forHost: d.host)
        let groups = Set(doc.instances.values.filter { $0.host == d.host }.flatMap(\.groups)).filter { !$0.hasPrefix("bench-") }.sorted()
        guard !groups.isEmpty else { throw ValidationError("\(d.host) has no groups") }
        let follower = try d.replaceFollower()
        var target: Int64 = 0
        var rows = 0
        for n in 0..<missed {
            let group = groups[(n / 2) % groups.count]
            let out = try n % 2 == 0
                ? ctl.authorize(group: group, rule: Rule(id: "catchup", proto: .udp, ports: 53...53, remote: .cidr(CloudLoad.prefix("10.2.0.0/16"))))
                : ctl.revoke(group: group, rule: nil, id: "catchup")
            for x in out where x.host == d.host {
                target = max(target, x.sequence ?? 0)
                rows += 1
            }
        }
        let t0 = monotonicNanos()
        follower.start()
        guard d.daemon.waitForChangeLog(appliedThrough: target, deadline: Date(timeIntervalSinceNow: 120)) else {
            throw ValidationError("\(d.host) did not catch up within 120 s")
        }
        let catchUp = monotonicNanos() - t0
        let reload = try d.refresh(.host)
        return (catchUp, reload, rows, min(groups.count, missed / 2))
    }
}

/// A verb series' samples.
struct VerbTimes {
    var commit: [UInt64] = []
    var applied: [UInt64] = []
    /// With one notified host: its daemon's drain (refresh → plan → kernel commit → conntrack
    /// cut), from its status, per verb.
    var drain: [UInt64] = []
    /// Per verb, the path of the host that applied last, from its follower's step times:
    /// COMMIT seen by the verb → its wake-up arrived (negative: before the client saw COMMIT),
    /// wake-up → the step began, the log read, the drain, the position write.
    var lastHost = LastHostPath()
    var hostsNotified = 0
    var cpuPerVerbNs: UInt64 = 0
    /// This process's CPU per verb: the ten daemons (their threads, kernels' netlink work), the
    /// controller's client and the bench's own wait.
    var daemonsCPUPerVerbNs: UInt64 = 0
    /// That CPU by thread (`ThreadCPU`): the daemons' reconcilers, their change-log
    /// followers, the event-loop threads (postgres-nio for every connection of the process), the
    /// rest (the controller's verbs, the bench's wait).
    var threadCPUPerVerbNs: [String: UInt64] = [:]
    /// How many times those threads were put on a CPU per verb, by role: each is a wake-up (a
    /// thread woken per message costs a switch in and out beside its work).
    var threadRunsPerVerb: [String: Double] = [:]

    /// Adds another block of the same series: its samples, and its CPU per verb weighted by
    /// its verbs.
    mutating func merge(_ other: VerbTimes) {
        let (n, m) = (UInt64(applied.count), UInt64(other.applied.count))
        if n + m > 0 {
            cpuPerVerbNs = (cpuPerVerbNs * n + other.cpuPerVerbNs * m) / (n + m)
            daemonsCPUPerVerbNs = (daemonsCPUPerVerbNs * n + other.daemonsCPUPerVerbNs * m) / (n + m)
            for role in Set(threadCPUPerVerbNs.keys).union(other.threadCPUPerVerbNs.keys) {
                threadCPUPerVerbNs[role] = ((threadCPUPerVerbNs[role] ?? 0) * n + (other.threadCPUPerVerbNs[role] ?? 0) * m) / (n + m)
                threadRunsPerVerb[role] = ((threadRunsPerVerb[role] ?? 0) * Double(n) + (other.threadRunsPerVerb[role] ?? 0) * Double(m)) / Double(n + m)
            }
        }
        commit += other.commit
        applied += other.applied
        drain += other.drain
        lastHost.merge(other.lastHost)
        hostsNotified = max(hostsNotified, other.hostsNotified)
    }
}

/// The phases of the last host to apply a verb, one sample per verb.
struct LastHostPath {
    var wake: [Int64] = []
    var queued: [UInt64] = []
    var read: [UInt64] = []
    var drain: [UInt64] = []
    var record: [UInt64] = []
    /// Per verb, from the verb's start (the same clock): the first wake-up of a notified host
    /// (the verb's own part: its statements, COMMIT, the NOTIFY's delivery), and the last drain's
    /// end (the change in every notified kernel, before the positions are written).
    var firstWake: [UInt64] = []
    var inEveryKernel: [UInt64] = []
    /// How often each host was the last.
    var hosts: [String: Int] = [:]

    mutating func add(host: String, _ t: ChangeLogStatus.StepTimes, committedAt: UInt64) {
        wake.append(Int64(bitPattern: t.woken &- committedAt))
        queued.append(t.started - t.woken)
        read.append(t.read - t.started)
        drain.append(t.drained - t.read)
        record.append(t.recorded - t.drained)
        hosts[host, default: 0] += 1
    }

    /// Adds another block's samples.
    mutating func merge(_ other: LastHostPath) {
        wake += other.wake; queued += other.queued; read += other.read; drain += other.drain; record += other.record
        firstWake += other.firstWake; inEveryKernel += other.inEveryKernel
        hosts.merge(other.hosts, uniquingKeysWith: +)
    }

    /// Medians of each phase, for a figure's extra fields.
    var summary: [String: String] {
        guard !read.isEmpty else { return [:] }
        let w = wake.sorted()[wake.count / 2]
        return ["last_host_wake_after_commit": (w < 0 ? "-" : "") + formatDuration(UInt64(w.magnitude)),
                "last_host_wake_to_step": formatDuration(median(queued)), "last_host_log_read": formatDuration(median(read)),
                "last_host_drain": formatDuration(median(drain)), "last_host_record": formatDuration(median(record)),
                "first_wake": formatDuration(median(firstWake)), "in_every_kernel": formatDuration(median(inEveryKernel)),
                "last_hosts": hosts.sorted { $0.value > $1.value }.prefix(3).map { "\($0.key) \($0.value)×" }.joined(separator: ", ")]
    }
}

/// A daemon of the cloud on the PostgreSQL store, as rampartd wires it: its own store
/// connection, a change-log follower primed before the first sync, LISTEN wake-ups, nftables in
/// the namespace.
final class LiveDaemon: @unchecked Sendable {
    let host: String
    let store: PostgresStore
    let daemon: Daemon
    private let index: ConntrackIndex
    private(set) var follower: ChangeLogFollower
    /// Its own event-loop thread for its store connection and LISTEN, as a rampartd process on
    /// its own hypervisor has. (Until 2026-12-05 the ten daemons shared the bench process's one
    /// thread, which queued each daemon's statements behind the nine others'.)
    private let eventLoops = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    private let settings: ChangeLogFollower.Settings

    init(url: String, host: String, netns: String, readAhead: Int = ChangeLogFollower.Settings().readAhead) throws {
        self.host = host
        store = try PostgresStore(url: url, migrate: false, eventLoopGroup: eventLoops)
        (daemon, index) = try BackendChoice(.nftables, netns: netns).benchDaemon(host: host, store: store)
        var settings = ChangeLogFollower.Settings()
        settings.readAhead = readAhead
        self.settings = settings
        follower = ChangeLogFollower(daemon: daemon, postgres: store, settings: settings)
        try follower.prime()
        daemon.start()
        follower.start()
    }

    func waitReady() throws {
        while !daemon.currentStatus.ready {
            if let e = daemon.currentStatus.lastError { throw ValidationError("\(host): \(e)") }
            usleep(1_000)
        }
    }

    /// Where this host's log is applied through (recorded in `host_progress` first).
    var applied: Int64 { daemon.currentStatus.changeLog?.applied ?? 0 }

    /// Stops the follower and makes a new one, primed now and not started.
    func replaceFollower() throws -> ChangeLogFollower {
        follower.stop()
        follower = ChangeLogFollower(daemon: daemon, postgres: store, settings: settings)
        try follower.prime()
        return follower
    }

    /// Offers a refresh and waits for the drain that carries it.
    func refresh(_ r: Refresh) throws -> UInt64 {
        let done = DispatchSemaphore(value: 0)
        let t0 = monotonicNanos()
        guard daemon.offer(r, reply: { _ in done.signal() }) != nil else { throw ValidationError("queue full") }
        done.wait()
        return monotonicNanos() - t0
    }

    func stop() {
        follower.stop()
        daemon.stop()
        index.stop()
        store.disconnect()
        // After the connection closed (its deinit would otherwise close it on a stopped loop).
        try? eventLoops.syncShutdownGracefully()
    }
}

/// 8 clients, each on its own connection, authorize and revoke a rule on groups of their own
/// for `seconds`.
enum Sustained {
    final class Results: @unchecked Sendable {
        let lock = NSLock()
        var commits: [UInt64] = []
        var failed = 0
    }

    static func run(url: String, cluster: PostgresCluster, tenants: Int, seconds: Double, clients: Int = 8)
        throws -> (commits: [UInt64], perSecond: Double, failed: Int, cpuPerVerbNs: UInt64) {
        let stores = try (0..<clients).map { _ in try PostgresStore(url: url, migrate: false) }
        defer { for s in stores { s.disconnect() } }
        let results = Results()
        let group = DispatchGroup()
        let cpu0 = cluster.serverCPUSeconds()
        let t0 = monotonicNanos()
        let end = t0 + UInt64(seconds * 1e9)
        for (c, store) in stores.enumerated() {
            group.enter()
            Thread {
                var mine: [UInt64] = []
                var failed = 0
                var n = 0
                // Tenants past the first 1,000 (whose first group has a member on hv0), spread out.
                let perClient = max(1, (tenants - 1_000) / clients)
                while monotonicNanos() < end {
                    let tenant = 1_000 + c * perClient + (n / 2) % perClient
                    let g = "g\(tenant * 10)"
                    let t = monotonicNanos()
                    do {
                        _ = try n % 2 == 0
                            ? store.authorize(group: g, rule: Rule(id: "load", proto: .tcp, ports: 7000...7000, remote: .cidr(CloudLoad.prefix("10.3.0.0/16"))))
                            : store.revoke(group: g, rule: nil, id: "load")
                        mine.append(monotonicNanos() - t)
                    } catch {
                        failed += 1
                    }
                    n += 1
                }
                results.lock.withLock {
                    results.commits += mine
                    results.failed += failed
                }
                group.leave()
            }.start()
        }
        group.wait()
        let elapsed = Double(monotonicNanos() - t0) / 1e9
        let verbs = results.commits.count
        let cpu = cluster.serverCPUSeconds() - cpu0
        return (results.commits, Double(verbs) / elapsed, results.failed, verbs == 0 ? 0 : UInt64(cpu / Double(verbs) * 1e9))
    }
}

/// The baseline: a SQLite store holding the daemon hosts' policy (their exported documents,
/// imported), 10 daemons serving Unix sockets, and the CLI's delivery (one call at a time,
/// each waiting for its commit).
final class SQLiteBaseline {
    let store: SQLiteStore
    let dir: String
    var daemons: [String: (Daemon, APIServer, DaemonClient, ConntrackIndex)] = [:]
    var coldStart: UInt64 = 0

    init(postgres: PostgresStore, hosts: [String], namespaces: [TestNamespace], report: Report) throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("rampart-ctlbench-\(getpid())").path
        try? FileManager.default.removeItem(atPath: dir)
        store = try SQLiteStore(path: dir + "/rampart.db")
        store.deferCheckpoints()
        var t0 = monotonicNanos()
        for h in hosts { _ = try store.importDocument(try postgres.exportDocument(forHost: h)) }
        report.note("SQLite baseline: the \(hosts.count) daemon hosts' documents exported from PostgreSQL and imported in \(formatDuration(monotonicNanos() - t0))")
        for (h, ns) in zip(hosts, namespaces) {
            t0 = monotonicNanos()
            let started = try Self.startDaemon(host: h, store: dir + "/rampart.db", netns: ns.name, socket: dir + "/\(h).sock")
            // hv0 comes first, in a namespace no daemon used: a cold start.
            if h == hosts[0] { coldStart = monotonicNanos() - t0 }
            daemons[h] = started
        }
    }

    /// A daemon for `host` on the SQLite store at `store`, enforcing nftables in `netns`,
    /// serving its Unix socket at `socket`; returns once it is ready (first sync done).
    static func startDaemon(host: String, store: String, netns: String, socket: String) throws -> (Daemon, APIServer, DaemonClient, ConntrackIndex) {
        let own = try SQLiteStore(path: store, create: false)
        let (daemon, index) = try BackendChoice(.nftables, netns: netns).benchDaemon(host: host, store: own)
        let server = APIServer(socketPath: socket, router: APIRouter(daemon: daemon))
        daemon.start()
        let started = DispatchSemaphore(value: 0)
        Task { try? await server.start(); started.signal() }
        started.wait()
        while !daemon.currentStatus.ready {
            if let e = daemon.currentStatus.lastError { throw ValidationError("\(host): \(e)") }
            usleep(1_000)
        }
        return (daemon, server, DaemonClient(socketPath: socket), index)
    }

    /// Stops a daemon started by `startDaemon`: its socket server, then the daemon.
    static func stopDaemon(_ d: (Daemon, APIServer, DaemonClient, ConntrackIndex)) {
        let stopped = DispatchSemaphore(value: 0)
        Task { await d.1.stop(); stopped.signal() }
        stopped.wait()
        d.0.stop()
        d.3.stop()
    }

    func timedVerbs(_ count: Int, _ verb: () throws(StoreError) -> [Delivery]) throws -> VerbTimes {
        var out = VerbTimes()
        for _ in 0..<count {
            let t0 = monotonicNanos()
            let deliveries = try verb()
            out.commit.append(monotonicNanos() - t0)
            for d in deliveries {
                guard let c = daemons[d.host]?.2 else { throw ValidationError("no daemon for \(d.host)") }
                let r = try c.deliver(d.refresh, wait: true)
                guard r.status == 200 else { throw ValidationError("\(d): \(r.status) \(r.body)") }
            }
            out.hostsNotified = Set(deliveries.map(\.host)).count
            out.applied.append(monotonicNanos() - t0)
            // As `rampart` does: the WAL checkpoint after the deliveries, not in the COMMIT.
            try store.checkpointIfDue()
        }
        return out
    }

    func stop() {
        for (_, d) in daemons { Self.stopDaemon(d) }
        daemons = [:]
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// The cloud's rows, written by server-side SQL exactly as the verbs would write them.
///
/// Hosts `hv0` … `hv<H-1>`. Groups `g0` … `g<G-1>` in tenants of 10 (`g<10t>` … `g<10t+9>`);
/// group k of a tenant has 5 rules (Scenarios' shape): ssh from group k+1 and postgres from
/// group k+3 of the same tenant (so members changes fan out), web, ping, all egress.
/// Instances `i0` … `i<I-1>`: `i0` … `i999` on hv0 (host-1k), the others round-robin over
/// hv1 … hv<H-1> (~100 each at cloud-1M); instance n is in tenant n mod T, in groups j and j+5
/// of it (j = n / T mod 10): 2 members per group at cloud-1M. One IPv4 address each
/// (10.x.y.z from n + 1), interface `tap<n>`, MAC 02:00 + n.
enum CloudLoad {
    /// An IPv4 prefix from its text ("10.0.0.0/8").
    static func prefix(_ text: String) -> IPPrefix {
        let parts = text.split(separator: "/")
        return .v4(IPv4Prefix(address: IPv4Address(String(parts[0]))!, length: UInt8(parts[1])!))
    }

    /// A group's rules, with `XREFA`/`XREFB` where the two referenced groups go.
    static var rulesTemplate: String {
        RulesCodec.encode([
            Rule(id: "ssh", proto: .tcp, ports: 22...22, remote: .group("XREFA")),
            Rule(id: "pg", proto: .tcp, ports: 5432...5432, remote: .group("XREFB")),
            Rule(id: "web", proto: .tcp, ports: 80...80, remote: .cidr(prefix("0.0.0.0/0"))),
            Rule(id: "ping", proto: .icmp, icmpType: 8, remote: .cidr(prefix("10.0.0.0/8"))),
            Rule(id: "out", direction: .egress, proto: .any, remote: .cidr(prefix("0.0.0.0/0"))),
        ])
    }

    static func sql(groups g: Int, instances i: Int, hosts h: Int) -> String {
        let tenants = g / 10
        let template = rulesTemplate.replacingOccurrences(of: "'", with: "''")
        let refA = "'g' || ((n / 10) * 10 + (n % 10 + 1) % 10)", refB = "'g' || ((n / 10) * 10 + (n % 10 + 3) % 10)"
        return """
            BEGIN;
            SET LOCAL session_replication_role = replica;
            INSERT INTO hosts(name) SELECT 'hv' || n FROM generate_series(0, \(h - 1)) n;
            INSERT INTO groups(id, description, rules)
              SELECT 'g' || n, NULL, replace(replace('\(template)', 'XREFA', \(refA)), 'XREFB', \(refB)) FROM generate_series(0, \(g - 1)) n;
            INSERT INTO group_refs(group_id, ref)
              SELECT 'g' || n, \(refA) FROM generate_series(0, \(g - 1)) n
              UNION ALL SELECT 'g' || n, \(refB) FROM generate_series(0, \(g - 1)) n;
            INSERT INTO instances(id, host, ips, interface, mac)
              SELECT 'i' || n, CASE WHEN n < 1000 THEN 'hv0' ELSE 'hv' || (1 + (n - 1000) % \(h - 1)) END,
                '10.' || (((n + 1) >> 16) & 255) || '.' || (((n + 1) >> 8) & 255) || '.' || ((n + 1) & 255),
                'tap' || n,
                '02:00:' || substr(x, 1, 2) || ':' || substr(x, 3, 2) || ':' || substr(x, 5, 2) || ':' || substr(x, 7, 2)
              FROM generate_series(0, \(i - 1)) n, LATERAL (SELECT lpad(to_hex(n), 8, '0') AS x) m;
            INSERT INTO instance_groups(instance, position, group_id)
              SELECT 'i' || n, 0, 'g' || ((n % \(tenants)) * 10 + (n / \(tenants)) % 10) FROM generate_series(0, \(i - 1)) n
              UNION ALL SELECT 'i' || n, 1, 'g' || ((n % \(tenants)) * 10 + (n / \(tenants) + 5) % 10) FROM generate_series(0, \(i - 1)) n;
            COMMIT;
            """
    }

    /// The per-group broadcast of the original design, for the baseline: a change of
    /// `bench-bcast`'s rules appends a row for every host and wakes every reader. (Without the
    /// per-host locks the real log takes: 10,000 of them would not fit PostgreSQL's lock table,
    /// and leaving them out only flatters the baseline.)
    static let broadcastTrigger = """
        CREATE FUNCTION bench_broadcast() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO change_log(host, seq, refresh) SELECT name, nextval('change_log_seq'), 'rules:' || NEW.id FROM hosts ORDER BY name;
          PERFORM pg_notify('rampart_changes', '*');
          RETURN NEW;
        END $$;
        CREATE TRIGGER bench_broadcast AFTER UPDATE OF rules ON groups FOR EACH ROW
          WHEN (NEW.id = 'bench-bcast') EXECUTE FUNCTION bench_broadcast();
        """
}

/// This process's threads' CPU so far, in ns, by thread id (each thread's
/// `/proc/self/task/TID/schedstat`, exact where `stat` counts 10 ms ticks), with the role its
/// kernel name gives it: `rampartd-recon` (reconcilers), `rampartd-log` (followers), SwiftNIO's
/// `NIO-ELT-…` (event loops), anything else (`other`: the bench's own threads among them).
struct ThreadCPU {
    /// Per thread id: its role, its CPU (ns) and how many times it was put on a CPU (schedstat's
    /// third field: a thread that sleeps and is woken for each message counts one per message).
    var threads: [String: (role: String, ns: UInt64, slices: UInt64)] = [:]

    static func read() -> ThreadCPU {
        var out = ThreadCPU()
        guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task") else { return out }
        for tid in tasks {
            guard let comm = try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8),
                  let stat = try? String(contentsOfFile: "/proc/self/task/\(tid)/schedstat", encoding: .utf8) else { continue }
            let fields = stat.split(separator: " ").map { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            guard fields.count >= 3, let ns = fields[0], let slices = fields[2] else { continue }
            let name = comm.trimmingCharacters(in: .newlines)
            let role = name.hasPrefix("NIO-ELT") ? "event_loops" : name == "rampartd-recon" ? "reconcilers" : name == "rampartd-log" ? "followers" : "other"
            out.threads[tid] = (role, ns, slices)
        }
        return out
    }

    /// CPU and times run by role since `earlier`, thread by thread: a thread started since counts
    /// whole; one that ended since is not in this reading and its last moments are lost (an
    /// undercount, never a negative: the series' threads live for the whole run).
    func since(_ earlier: ThreadCPU) -> [String: (ns: UInt64, slices: UInt64)] {
        var out: [String: (ns: UInt64, slices: UInt64)] = [:]
        for (tid, t) in threads {
            let before = earlier.threads[tid]
            let ns = t.ns >= (before?.ns ?? 0) ? t.ns - (before?.ns ?? 0) : 0
            let slices = t.slices >= (before?.slices ?? 0) ? t.slices - (before?.slices ?? 0) : 0
            let sum = out[t.role] ?? (0, 0)
            out[t.role] = (sum.ns + ns, sum.slices + slices)
        }
        return out
    }
}
