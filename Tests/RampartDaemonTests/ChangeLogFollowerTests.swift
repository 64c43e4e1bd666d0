import Foundation
import Logging
import RampartCore
import RampartDaemon
import RampartHarness
import RampartStore
import Testing

/// The daemon following its host's change log on a real PostgreSQL (in-memory kernel): rows
/// woken by NOTIFY are applied and recorded, other hosts' rows cost nothing, an outage keeps the
/// kernel and is caught up from the log, a trimmed log is a reload.
@Suite("Change-log follower (real PostgreSQL, memory kernel)", .serialized, .tags(.kernel), .rootOnly)
struct ChangeLogFollowerTests {
    final class Fixture: @unchecked Sendable {
        let store: PostgresStore
        let backend = MemoryBackend()
        let daemon: Daemon
        let location: PostgresLocation
        var followers: [ChangeLogFollower] = []

        init(url: String) throws {
            location = try PostgresLocation(url: url)
            let setup = try PostgresStore(location: location, migrate: true)
            for g in ["web", "db", "admin"] { _ = try setup.createGroup(g, description: nil) }
            _ = try setup.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"80","cidr":"0.0.0.0/0"}"#, "web"))
            _ = try setup.authorize(group: "db", rule: try rule(#"{"protocol":"tcp","ports":"5432","group":"web"}"#, "db", refs: ["web"]))
            _ = try setup.addInstance("web-1", Instance(host: "hv1", groups: ["web"], ips: [ip("10.0.1.11")], interface: "tapweb1"))
            _ = try setup.addInstance("db-1", Instance(host: "hv1", groups: ["db"], ips: [ip("10.0.2.21")], interface: "tapdb1"))
            _ = try setup.addInstance("bastion", Instance(host: "hv2", groups: ["admin"], ips: [ip("10.0.9.5")], interface: "tapb"))
            store = try PostgresStore(location: location, migrate: false)
            let b = backend
            daemon = Daemon(configuration: .init(host: "hv1", resyncInterval: 3600), store: store, backend: { b })
        }

        /// A follower that polls only every 60 s: within a test, only NOTIFY wakes it.
        func follower(prime: Bool = true, reloadAbove: Int = 64, readAhead: Int = 16, wakeups: (any ChangeWakeups)? = nil) throws -> ChangeLogFollower {
            var settings = ChangeLogFollower.Settings()
            settings.reloadAbove = reloadAbove
            settings.readAhead = readAhead
            settings.pollInterval = 60
            settings.maxBackoff = 0.5
            let f = ChangeLogFollower(daemon: daemon, log: store, wakeups: wakeups ?? PostgresWakeups(location: location), settings: settings,
                                      logger: Logger(label: "test"))
            if prime { try f.prime() }
            followers.append(f)
            return f
        }

        func start(readAhead: Int = 16, wakeups: (any ChangeWakeups)? = nil) async throws {
            let f = try follower(readAhead: readAhead, wakeups: wakeups)
            daemon.start()
            await daemon.waitUntilReady()
            f.start()
        }

        func stop() {
            for f in followers { f.stop() }
            daemon.stop()
        }

        /// A separate controller connection, as `rampart` would have.
        func controller() throws -> PostgresStore { try PostgresStore(location: location, migrate: false) }

        /// Waits until hv1's applied position reaches `sequence`.
        func waitApplied(_ sequence: Int64, timeout: Double = 10) throws {
            let deadline = Date(timeIntervalSinceNow: timeout)
            while Date() < deadline {
                if (daemon.currentStatus.changeLog?.applied ?? 0) >= sequence,
                   let p = try? controller().progress(hosts: ["hv1"]).first, p.applied >= sequence { return }
                usleep(5_000)
            }
            throw HarnessError("hv1 did not apply #\(sequence) within \(timeout) s: \(daemon.currentStatus.json)")
        }

        func kernelEqualsTheStore() throws -> Bool {
            backend.kernel == Compiler.compile(try controller().document(forHost: "hv1"))
        }
    }

    @Test func rowsWokenByNotifyAreAppliedAndRecorded() async throws {
        let f = try Fixture(url: SharedPostgres.freshDatabase("follow"))
        try await f.start()
        defer { f.stop() }
        let ctl = try f.controller()
        let start = DispatchTime.now().uptimeNanoseconds
        let d = try ctl.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"443","cidr":"0.0.0.0/0"}"#, "web"))
        let mine = try #require(d.first { $0.host == "hv1" }?.sequence)
        try f.waitApplied(mine)
        let ms = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        #expect(ms < 5_000, "applied after \(ms) ms: NOTIFY did not wake the follower (it polls every 60 s)")
        #expect(try f.kernelEqualsTheStore())
        let st = try #require(f.daemon.currentStatus.changeLog)
        #expect(st.connected && st.rowsApplied >= 1 && st.reloads == 0 && st.head >= mine)
        // The step's moments are in order; its read, which saw the verb's row, came after the verb.
        let step = try #require(st.lastStep)
        #expect(step.woken <= step.started && step.started <= step.read && start <= step.read && step.read <= step.drained
                    && step.drained <= step.recorded && step.recorded <= DispatchTime.now().uptimeNanoseconds, "\(step)")
        // A change for hv2 only: hv1 commits nothing.
        let commits = f.backend.commits
        let other = try ctl.addInstance("bastion-2", Instance(host: "hv2", groups: ["admin"], ips: [ip("10.0.9.6")], interface: "tapb2"))
        #expect(!other.contains { $0.host == "hv1" })
        try await Task.sleep(for: .milliseconds(300))
        #expect(f.backend.commits == commits)
        // Its metrics say where it is.
        let applied = try #require(f.daemon.currentStatus.changeLog?.applied)
        #expect(f.daemon.metricsText().contains("rampart_changelog_applied_sequence \(applied)\n"))
        #expect(f.daemon.metricsText().contains("rampart_store_connected 1"))
    }

    /// The refreshes of a log row read what they need with the row (`ReadAhead`): a rules
    /// change (its group, and the members of the groups it references that no other group
    /// here does: web's for db's rules, admin's when web's rules first name it), a member
    /// joining and leaving elsewhere (the group's members), an instance plugged here into a
    /// group new to the host (its record and group): the drains read nothing else from the
    /// store, and the kernel equals the store's document after each.
    /// The same verbs with the read-ahead off read the store for each (the control).
    @Test(arguments: [16, 0]) func refreshesReadWhatTheLogReadAhead(readAhead: Int) async throws {
        let f = try Fixture(url: SharedPostgres.freshDatabase("follow"))
        try await f.start(readAhead: readAhead)
        defer { f.stop() }
        let ctl = try f.controller()
        func reads() -> (store: Int, ahead: Int) {
            let s = f.daemon.currentStatus
            return (s.refreshStoreReads, s.refreshReadsAhead)
        }
        let verbs: [(String, () throws -> [Delivery])] = [
            ("rules of web", { try ctl.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"443","cidr":"0.0.0.0/0"}"#, "web")) }),
            ("rules of db, the only group here that references web", {
                try ctl.authorize(group: "db", rule: try rule(#"{"protocol":"tcp","ports":"6432","group":"web"}"#, "db", refs: ["web"])) }),
            ("web's rules name admin, new here", {
                try ctl.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"22","group":"admin"}"#, "web", refs: ["admin"])) }),
            ("web-2 joins web on hv2", { try ctl.addInstance("web-2", Instance(host: "hv2", groups: ["web"], ips: [ip("10.0.1.12")], interface: "tapweb2")) }),
            ("web-2 leaves", { try ctl.removeInstance("web-2") }),
            ("admin-1 plugged here", { try ctl.addInstance("admin-1", Instance(host: "hv1", groups: ["admin"], ips: [ip("10.0.9.7")], interface: "tapa1")) }),
            ("admin-1 unplugged", { try ctl.removeInstance("admin-1") }),
        ]
        for (name, verb) in verbs {
            let before = reads()
            let d = try verb()
            let mine = try #require(d.filter { $0.host == "hv1" }.compactMap(\.sequence).max(), "\(name) notified hv1")
            try f.waitApplied(mine)
            #expect(try f.kernelEqualsTheStore(), "\(name)")
            let after = reads()
            if readAhead > 0 {
                #expect(after.store == before.store && after.ahead > before.ahead, "\(name): \(before) → \(after)")
            } else {
                #expect(after.store > before.store && after.ahead == before.ahead, "\(name): \(before) → \(after)")
            }
        }
        #expect(f.daemon.metricsText().contains(#"rampart_refresh_reads_total{answered_by="read_ahead"} \#(reads().ahead)"#))
    }

    /// An idle follower's page comes with the NOTIFY (`PrefetchingWakeups`): read on the
    /// wake-up connection and applied from there, one wake-up per verb.
    @Test func anIdleFollowersPagesComeWithTheWakeup() async throws {
        let f = try Fixture(url: SharedPostgres.freshDatabase("follow"))
        try await f.start()
        defer { f.stop() }
        let ctl = try f.controller()
        for port in 7300..<7304 {
            let d = try ctl.authorize(group: "web", rule: try rule(#"{"protocol":"udp","ports":"\#(port)","cidr":"10.0.0.0/8"}"#, "web"))
            try f.waitApplied(try #require(d.first { $0.host == "hv1" }?.sequence))
            #expect(try f.kernelEqualsTheStore())
        }
        // The first verb may find the follower still finishing its first step (not yet armed).
        let st = try #require(f.daemon.currentStatus.changeLog)
        #expect(st.readsAtWakeup >= 3 && st.reloads == 0, "\(st)")
        #expect(f.daemon.metricsText().contains("rampart_changelog_reads_at_wakeup_total \(st.readsAtWakeup)\n"))
    }

    /// What the follower does with what an armed read delivers: a page read from a position
    /// other than its own (stale: it names a row that does not exist) is dropped and the log
    /// read again; no page (the read failed) is a plain wake-up; its own page is applied as read.
    @Test func aPageFromAnotherPositionIsDroppedAndTheLogReadAgain() async throws {
        let f = try Fixture(url: SharedPostgres.freshDatabase("follow"))
        let wakeups = ArmedByHand()
        try await f.start(wakeups: wakeups)
        defer { f.stop() }
        let ctl = try f.controller()
        func verb(_ port: Int) throws -> Int64 {
            let d = try ctl.authorize(group: "web", rule: try rule(#"{"protocol":"udp","ports":"\#(port)","cidr":"10.0.0.0/8"}"#, "web"))
            return try #require(d.first { $0.host == "hv1" }?.sequence)
        }
        // Stale: read after an earlier position, naming a row past the head.
        var armed = try #require(wakeups.waitArmed(timeout: 10))
        let first = try verb(7400)
        let ghost = LogPage(entries: [LogEntry(sequence: first + 1_000, refresh: .rules("ghost"))], head: first + 1_000, trimmed: false)
        armed.deliver(PrefetchedPage(page: ghost, after: armed.after - 1, notified: 0, read: 0))
        try f.waitApplied(first)
        #expect(f.daemon.currentStatus.changeLog?.applied == first)
        // No page: read as after any wake-up.
        armed = try #require(wakeups.waitArmed(timeout: 10))
        #expect(armed.after == first)
        let second = try verb(7401)
        armed.deliver(nil)
        try f.waitApplied(second)
        // Its own page, read as the follower would: applied from it.
        armed = try #require(wakeups.waitArmed(timeout: 10))
        #expect(armed.after == second)
        let third = try verb(7402)
        let page = try f.store.entries(host: "hv1", after: second, limit: 1000, readingAhead: 16)
        armed.deliver(PrefetchedPage(page: page, after: second, notified: DispatchTime.now().uptimeNanoseconds, read: DispatchTime.now().uptimeNanoseconds))
        try f.waitApplied(third)
        #expect(try f.kernelEqualsTheStore())
        let st = try #require(f.daemon.currentStatus.changeLog)
        #expect(st.applied == third && st.readsAtWakeup == 1 && st.reloads == 0, "\(st)")
    }

    @Test func anOutageKeepsTheKernelAndIsCaughtUpFromTheLog() async throws {
        let cluster = try PostgresCluster()
        try cluster.start()
        defer { cluster.destroy() }
        let f = try Fixture(url: cluster.url)
        try await f.start()
        defer { f.stop() }
        let before = f.backend.kernel
        try cluster.stop()
        // The follower notices (its LISTEN connection closes) and reports it; the kernel stays.
        let deadline = Date(timeIntervalSinceNow: 10)
        while f.daemon.currentStatus.changeLog?.connected != false && Date() < deadline { usleep(20_000) }
        #expect(f.daemon.currentStatus.changeLog?.connected == false)
        #expect(f.daemon.currentStatus.changeLog?.lastError != nil)
        #expect(f.daemon.metricsText().contains("rampart_store_connected 0"))
        #expect(f.backend.kernel == before)
        // Back: verbs made now are caught up from the log, without a reload.
        try cluster.start()
        let ctl = try f.controller()
        let d = try ctl.revoke(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"80","cidr":"0.0.0.0/0"}"#, "web"), id: nil)
        _ = try ctl.addInstance("web-2", Instance(host: "hv1", groups: ["web"], ips: [ip("10.0.1.12")], interface: "tapweb2"))
        let last = try #require(try ctl.progress(hosts: ["hv1"]).first?.head)
        #expect(d.contains { $0.host == "hv1" })
        try f.waitApplied(last, timeout: 20)
        #expect(try f.kernelEqualsTheStore())
        let st = try #require(f.daemon.currentStatus.changeLog)
        #expect(st.connected && st.reloads == 0 && st.reconnects >= 1)
    }

    @Test func aLogTrimmedPastThePositionIsAWholeReload() async throws {
        let f = try Fixture(url: SharedPostgres.freshDatabase("follow"))
        f.daemon.start()
        await f.daemon.waitUntilReady()
        defer { f.stop() }
        // Primed at today's head, but started only after rows it needs were trimmed away.
        let late = try f.follower()
        let ctl = try f.controller()
        for port in 7000..<7005 {
            _ = try ctl.authorize(group: "web", rule: try rule(#"{"protocol":"udp","ports":"\#(port)","cidr":"10.0.0.0/8"}"#, "web"))
        }
        #expect(try ctl.trim(maxAge: nil, keep: 1) > 0)
        late.start()
        let head = try #require(try ctl.progress(hosts: ["hv1"]).first?.head)
        try f.waitApplied(head)
        #expect(try f.kernelEqualsTheStore())
        #expect(f.daemon.currentStatus.changeLog?.reloads == 1)
    }

    @Test func farBehindIsAReloadNearlyBehindIsReplayed() async throws {
        let f = try Fixture(url: SharedPostgres.freshDatabase("follow"))
        f.daemon.start()
        await f.daemon.waitUntilReady()
        defer { f.stop() }
        // Primed now, started after six rules changes of two groups: two distinct refreshes,
        // above its threshold of one.
        let far = try f.follower(reloadAbove: 1)
        let ctl = try f.controller()
        for g in ["web", "db"] {
            for port in 7100..<7103 {
                _ = try ctl.authorize(group: g, rule: try rule(#"{"protocol":"udp","ports":"\#(port)","cidr":"10.0.0.0/8"}"#, g))
            }
        }
        far.start()
        var head = try #require(try ctl.progress(hosts: ["hv1"]).first?.head)
        try f.waitApplied(head)
        #expect(try f.kernelEqualsTheStore())
        #expect(f.daemon.currentStatus.changeLog?.reloads == 1)
        // Two more rows (one distinct refresh): replayed, not reloaded.
        _ = try ctl.authorize(group: "web", rule: try rule(#"{"protocol":"udp","ports":"7200","cidr":"10.0.0.0/8"}"#, "web"))
        head = try #require(try ctl.progress(hosts: ["hv1"]).first?.head)
        try f.waitApplied(head)
        #expect(try f.kernelEqualsTheStore())
        #expect(f.daemon.currentStatus.changeLog?.reloads == 1)
    }
}

/// Wake-ups that never listen: the test delivers what an armed read would (`PrefetchingWakeups`).
final class ArmedByHand: PrefetchingWakeups, @unchecked Sendable {
    struct Armed { let after: Int64; let deliver: @Sendable (PrefetchedPage?) -> Void }
    private let condition = NSCondition()
    private var armed: Armed?

    func start(_ handler: @escaping @Sendable (Wakeup) -> Void) throws(StoreError) {}
    func stop() {}
    func arm(host: String, after position: Int64, limit: Int, readingAhead: Int, deliver: @escaping @Sendable (PrefetchedPage?) -> Void) {
        condition.withLock { armed = Armed(after: position, deliver: deliver); condition.broadcast() }
    }
    func disarm() { condition.withLock { armed = nil } }

    /// The read armed now, taken (as a NOTIFY would take it), once the follower has armed one.
    func waitArmed(timeout: Double) -> Armed? {
        condition.withLock {
            let deadline = Date(timeIntervalSinceNow: timeout)
            while armed == nil && condition.wait(until: deadline) {}
            defer { armed = nil }
            return armed
        }
    }
}
