import Foundation
import Logging
import RampartConntrack
import RampartCore
import RampartDaemon
import RampartStore
import ServiceLifecycle
import Testing

/// The reconciler against an in-memory backend and a manual clock: resync interval, retry
/// backoff, conflicts, and the conntrack cut's scope, with no kernel and no sleeping on the
/// intervals themselves.
@Suite("Reconciler (in-memory backend, manual clock)", .serialized) struct ReconcilerTests {
    final class Fixture: @unchecked Sendable {
        let store: SQLiteStore
        let backend: MemoryBackend
        let clock = ManualClock()
        let cutter = RecordingCutter()
        let daemon: Daemon
        init(resync: Double = 30, planless: Bool = false, maxFailedSyncs: Int = 3) throws {
            store = try SQLiteStore(path: tempDir("rec") + "/rampart.db")
            try DaemonTests.base(store)
            let b = MemoryBackend(planless: planless)
            backend = b
            daemon = Daemon(configuration: .init(host: "hv1", resyncInterval: resync, maxFailedSyncs: maxFailedSyncs), store: store,
                            clock: clock, backend: { b }, cutter: cutter)
        }
        func expected() throws -> RulesetIR { Compiler.compile(try store.document(forHost: "hv1")) }
        var status: DaemonStatus { daemon.currentStatus }
    }

    /// `waitForChangeLog`, which the controller bench waits on instead of polling statuses:
    /// it returns at once for a position already reached, times out below it, and wakes when
    /// another thread moves the position through the one it waits for (not before).
    @Test func aWaitForTheChangeLogWakesWhenThePositionArrives() throws {
        let f = try Fixture()
        f.daemon.updateChangeLog { $0.applied = 5 }
        #expect(f.daemon.waitForChangeLog(appliedThrough: 5, deadline: Date()))
        #expect(f.daemon.waitForChangeLog(appliedThrough: 3, deadline: Date()))
        let t0 = Date()
        #expect(!f.daemon.waitForChangeLog(appliedThrough: 6, deadline: Date(timeIntervalSinceNow: 0.05)))
        #expect(Date().timeIntervalSince(t0) >= 0.04)  // it waited (a margin for the clocks' granularity)
        let mover = Thread {
            usleep(20_000)
            f.daemon.updateChangeLog { $0.head = 9 }  // the head alone: no wake-up for the waiter's position
            usleep(20_000)
            f.daemon.updateChangeLog { $0.applied = 6 }
            usleep(20_000)
            f.daemon.updateChangeLog { $0.applied = 8 }
        }
        mover.start()
        #expect(f.daemon.waitForChangeLog(appliedThrough: 8, deadline: Date(timeIntervalSinceNow: 10)))
        #expect(f.daemon.currentStatus.changeLog?.applied == 8)
        #expect(f.daemon.currentStatus.changeLog?.head == 9)
    }

    @Test func thePeriodicResyncFollowsTheClock() async throws {
        let f = try Fixture(resync: 30)
        f.daemon.start()
        defer { f.daemon.stop() }
        await f.daemon.waitUntilReady()
        #expect(f.clock.waitForSleeper(at: 30))
        // drift no generation shows (as with iptables): only the resync finds it
        f.backend.tamper(visible: false) { $0.chains["gin-web"]!.rules.removeLast() }
        f.clock.advance(to: 29)
        #expect(f.clock.waitForSleeper(at: 30))
        #expect(f.status.resyncs == 0)
        f.clock.advance(to: 30)
        #expect(f.clock.waitForSleeper(at: 60))
        #expect(f.status.resyncs == 1)
        #expect(f.status.driftRepaired > 0)
        #expect(try f.backend.kernel == f.expected())
    }

    @Test func aFailingFirstSyncIsRetriedWithBackoffUntilTheKernelAnswers() async throws {
        let f = try Fixture()
        f.backend.failAll = .unknown
        f.daemon.start()
        defer { f.daemon.stop() }
        // 0.2 s doubling to 5 s, on the manual clock
        var t = 0.0
        for delay in [0.2, 0.4, 0.8, 1.6, 3.2, 5, 5] {
            t += delay
            #expect(f.clock.waitForSleeper(at: t), "no retry waiting for \(t): \(f.clock.deadlines)")
            f.clock.advance(to: t)
        }
        t += 5
        #expect(f.clock.waitForSleeper(at: t))
        #expect(!f.status.ready && f.status.consecutiveFailedSyncs == 8)
        #expect(f.status.lastError?.contains("injected") == true)
        f.backend.failAll = nil
        f.clock.advance(to: t)
        await f.daemon.waitUntilReady()
        #expect(f.status.ready && f.status.consecutiveFailedSyncs == 0)
        #expect(try f.backend.kernel == f.expected())
    }

    @Test func aFailedDrainIsRepairedWithBackoffAndReadinessFollows() async throws {
        let f = try Fixture(maxFailedSyncs: 2)
        f.daemon.start()
        defer { f.daemon.stop() }
        await f.daemon.waitUntilReady()
        _ = try f.store.addInstance("adm2", Instance(host: "hv3", groups: ["admin"], ips: [ip("10.0.9.6")], interface: "tapz"))
        f.backend.failAll = .refused
        let o = await f.daemon.refresh(.members("admin"))
        #expect(!o.isCommitted)
        // the drain failed and so did the repair after it (one failed pass): retried in 0.2 s
        #expect(f.clock.waitForSleeper(at: 0.2))
        #expect(f.status.ready && f.status.consecutiveFailedSyncs == 1)
        f.clock.advance(to: 0.2)
        // the retry fails too: two in a row, not ready; the next retry 0.4 s later
        let retry = 0.2 + 0.4  // as the reconciler adds it (0.6 is not that double)
        #expect(f.clock.waitForSleeper(at: retry))
        #expect(!f.status.ready)
        f.backend.failAll = nil
        f.clock.advance(to: retry)
        // repaired: ready, the store's state in the kernel, the next resync 30 s later
        #expect(f.clock.waitForSleeper(at: retry + 30))
        #expect(f.status.ready)
        #expect(try f.backend.kernel == f.expected())
    }

    /// The store goes down in the middle of a drain, after a revoke was read: the revoke reaches
    /// the kernel (and the cut) at once; what could not be read waits for the store. Before, the
    /// engine kept the revoke planned but the kernel did not get it until the store returned.
    @Test func aRevokeReadBeforeTheStoreWentDownIsCommitted() async throws {
        let inner = try SQLiteStore(path: tempDir("rec") + "/rampart.db")
        try DaemonTests.base(inner)
        let store = FlakyStore(inner)
        let backend = MemoryBackend(planless: false)
        let clock = ManualClock()
        let cutter = RecordingCutter()
        let daemon = Daemon(configuration: .init(host: "hv1", resyncInterval: 30), store: store, clock: clock, backend: { backend }, cutter: cutter)
        daemon.start()
        defer { daemon.stop() }
        await daemon.waitUntilReady()
        func expected() throws -> RulesetIR { Compiler.compile(try inner.document(forHost: "hv1")) }

        // Hold a drain so that the next one takes both refreshes below together.
        store.blockReadingMembers(of: "admin")
        let held = daemon.enqueue(.members("admin"))
        #expect(store.waitUntilBlocked())
        let http = try inner.group("web")!.rules.first { $0.ports == 80...80 }!
        var ds = try inner.revoke(group: "web", rule: http, id: nil)  // rules(web) to hv1
        ds += try inner.addInstance("web-2", Instance(host: "hv2", groups: ["web"], ips: [ip("10.0.1.12")], interface: "tapweb2"))  // members(web): db reads it
        var last: UInt64 = 0
        for d in ds where d.host == "hv1" { last = daemon.enqueue(d.refresh) }
        #expect(ds.contains(Delivery(host: "hv1", refresh: Refresh.rules("web"))) && ds.contains(Delivery(host: "hv1", refresh: Refresh.members("web"))))
        store.goDownAtMembers(of: "web")  // rules(web) is read first; members(web) finds the store gone
        let scopesBefore = cutter.scopes.count
        store.release()
        #expect(await daemon.wait(for: held).isCommitted)
        let outcome = await daemon.wait(for: last)
        #expect(!outcome.isCommitted, "\(outcome)")

        // While the store is down: the revoke is in the kernel and was cut; the new member is not.
        let want = try expected()
        #expect(backend.kernel?.chains["gin-web"] == want.chains["gin-web"], "the revoked rule is still in the kernel")
        #expect(backend.kernel != want)
        #expect(cutter.scopes.count > scopesBefore)
        #expect(daemon.currentStatus.lastError?.contains("injected") == true)

        // The store returns: the retry reloads the rest.
        store.down = false
        #expect(clock.waitForSleeper(at: 0.2))
        clock.advance(to: 0.2)
        #expect(clock.waitForSleeper(at: 0.2 + 30))
        #expect(try backend.kernel == expected())
        #expect(daemon.currentStatus.consecutiveFailedSyncs == 0)
    }

    @Test func aConflictIsReadBackAndConvergedNotCountedAsAnError() async throws {
        let f = try Fixture()
        f.daemon.start()
        defer { f.daemon.stop() }
        await f.daemon.waitUntilReady()
        let converges = f.backend.converges
        _ = try f.store.addInstance("adm2", Instance(host: "hv3", groups: ["admin"], ips: [ip("10.0.9.6")], interface: "tapz"))
        f.backend.failNextCommit = .conflict
        let o = await f.daemon.refresh(.members("admin"))
        #expect(o.isCommitted, "\(o)")
        #expect(f.backend.converges == converges + 1)
        #expect(f.status.lastError == nil && f.status.consecutiveFailedSyncs == 0)
        #expect(try f.backend.kernel == f.expected())
    }

    @Test func aVisibleChangeByOthersIsRepairedAtTheNextEmptyDrain() async throws {
        let f = try Fixture()
        f.daemon.start()
        defer { f.daemon.stop() }
        await f.daemon.waitUntilReady()
        f.backend.tamper { $0.chains["gin-web"]!.rules.removeLast() }
        let o = await f.daemon.refresh(.members("admin"))  // nothing new in the store
        #expect(o.isCommitted)
        #expect(try f.backend.kernel == f.expected())
        #expect(f.status.driftRepaired > 0 && f.status.resyncs == 0)
    }

    @Test func theCutLooksAtWhatTheCommitNarrowed() async throws {
        let f = try Fixture()
        _ = try f.store.addInstance("bastion2", Instance(host: "hv2", groups: ["admin"], ips: [ip("10.0.9.7")], interface: "tapb2"))
        f.daemon.start()
        defer { f.daemon.stop() }
        await f.daemon.waitUntilReady()
        let before = f.cutter.scopes.count
        // a member leaves a referenced group: its address is what the cut looks at
        _ = try f.store.removeInstance("bastion2")
        #expect(await f.daemon.refresh(.members("admin")).isCommitted)
        #expect(f.cutter.scopes.dropFirst(before).contains(.addresses([ip("10.0.9.7")])), "\(f.cutter.scopes)")
        // a rule added only widens: no cut
        let n = f.cutter.scopes.count
        _ = try f.store.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"443","cidr":"0.0.0.0/0"}"#, "web"))
        #expect(await f.daemon.refresh(.rules("web")).isCommitted)
        #expect(f.cutter.scopes.count == n)
    }

    @Test func aConvergeWithoutAPlanCutsTheWholeTable() async throws {
        let f = try Fixture(planless: true)
        f.daemon.start()
        defer { f.daemon.stop() }
        await f.daemon.waitUntilReady()
        #expect(f.cutter.scopes.last == .all)  // the first sync changed the kernel, with no Plan to read
        let n = f.cutter.scopes.count
        #expect(await f.daemon.resync().isCommitted)  // nothing to repair: no cut
        #expect(f.cutter.scopes.count == n)
        f.backend.tamper(visible: false) { $0.chains["gin-web"]!.rules.removeLast() }
        #expect(await f.daemon.resync().isCommitted)
        #expect(f.cutter.scopes.count == n + 1 && f.cutter.scopes.last == .all)
    }

    @Test func aFailedCutFailsTheRefreshAndIsOwedToTheNextSync() async throws {
        let f = try Fixture()
        f.daemon.start()
        defer { f.daemon.stop() }
        await f.daemon.waitUntilReady()
        f.cutter.fail = true
        _ = try f.store.removeInstance("bastion")
        let o = await f.daemon.refresh(.members("admin"))
        guard case .failed(let e) = o else { Issue.record("answered \(o)"); return }
        #expect(e.contains("conntrack cut failed"))
        #expect(f.status.conntrackCutOwed)
        #expect(try f.backend.kernel == f.expected())  // the rules are in
        f.cutter.fail = false
        #expect(await f.daemon.resync().isCommitted)
        #expect(f.cutter.scopes.last == .all && !f.status.conntrackCutOwed)
    }

    /// `ReconcilerService` owns the reconciler's lifetime: it starts it, and graceful shutdown
    /// stops it after the pass in progress (the run returns, new waiters are told it stopped).
    @Test func theServiceStopsTheReconcilerOnGracefulShutdown() async throws {
        let f = try Fixture()
        let group = ServiceGroup(services: [ReconcilerService(daemon: f.daemon)], gracefulShutdownSignals: [], cancellationSignals: [],
                                 logger: Logger(label: "test"))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            await f.daemon.waitUntilReady()
            #expect(await f.daemon.refresh(.members("admin")).isCommitted)
            await group.triggerGracefulShutdown()
            try await tasks.next()
        }
        await f.daemon.stopped()
        #expect(await f.daemon.refresh(.members("admin")) == RefreshQueue.stoppingOutcome)
        #expect(try f.backend.kernel == f.expected())  // the rules stay
    }

    @Test func theStatusJSONKeepsItsShape() async throws {
        let f = try Fixture()
        var st = DaemonStatus(host: "hv\"1")
        st.lastError = "store: instances.db-1.interface: \"tap/db\""
        st.lastSyncMillis = 1.23456
        let json = st.json
        #expect(json == #"{"change_log":null,"commits":0,"conntrack_cut":0,"conntrack_cut_owed":false,"conntrack_index":null,"consecutive_failed_syncs":0,"counts":{"chains":0,"groups":0,"instances":0,"local_instances":0,"sets":0},"document_reloads":0,"drift_repaired":0,"generation":null,"host":"hv\"1","last_error":"store: instances.db-1.interface: \"tap/db\"","last_sync":null,"last_sync_ms":1.235,"pending":0,"ready":false,"refresh_reads_ahead":0,"refresh_store_reads":0,"refreshes_received":0,"refreshes_refused":0,"resyncs":0,"syncs":0}"#, "\(json)")
        // With a change log and an index, their objects keep their shape too.
        st.changeLog = ChangeLogStatus()
        st.conntrackIndex = ConntrackIndex.Statistics()
        #expect(st.json.contains(#""change_log":{"applied":0,"connected":false,"head":0,"last_error":null,"last_step":null,"reads_at_wakeup":0,"reconnects":0,"reloads":0,"rows_applied":0}"#), "\(st.json)")
        // A step's phases in milliseconds (the clock's nanoseconds, rounded to the microsecond).
        st.changeLog?.lastStep = .init(woken: 1_000_000, started: 1_250_000, read: 1_750_000, drained: 4_000_000, recorded: 4_400_400)
        #expect(st.json.contains(#""last_step":{"drain_ms":2.25,"read_ms":0.5,"record_ms":0.4,"wait_ms":0.25}"#), "\(st.json)")
        #expect(st.json.contains(#""conntrack_index":{"addresses":0,"delete_windows":0,"entries":0,"events":0,"fresh":false,"last_rebuild_ms":0,"losses":0,"rebuilds":0,"window_resyncs":0}"#), "\(st.json)")
        f.daemon.start()
        defer { f.daemon.stop() }
        await f.daemon.waitUntilReady()
        let live = f.status.json
        let parsed = try JSONSerialization.jsonObject(with: Data(live.utf8)) as? [String: Any]
        #expect(parsed?["ready"] as? Bool == true && (parsed?["counts"] as? [String: Any])?["local_instances"] as? Int == 2, "\(live)")
        #expect(live.contains(#""last_sync":"20"#), "\(live)")
    }
}
