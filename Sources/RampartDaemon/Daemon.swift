import Foundation
import Logging
import Metrics
import Prometheus
import RampartConntrack
import RampartCore
import RampartNFTables
import RampartNetlink
import RampartSystem
import RampartStore

/// What one refresh (or a drain that covered it) came to.
public enum SyncOutcome: Sendable, Equatable {
    case committed(generation: UInt32?)
    case failed(String)
}

/// The daemon's state as `GET /v1/status` shows it.
public struct DaemonStatus: Sendable {
    public var host: String
    /// Serving a kernel in sync: the first sync succeeded and fewer than `--max-failed-syncs`
    /// syncs in a row have failed since.
    public var ready: Bool
    /// The first sync succeeded (sd_notify READY=1 was sent).
    public var synced: Bool = false
    /// Syncs (first sync, drains, resyncs) that failed in a row; 0 after a success.
    public var consecutiveFailedSyncs: Int = 0
    public var generation: UInt32?
    public var lastSync: Date?
    public var lastSyncMillis: Double?
    public var lastError: String?
    public var syncs: Int
    public var commits: Int
    public var refreshesReceived: Int
    public var resyncs: Int
    public var driftRepaired: Int
    public var pending: Int
    /// API refresh calls refused because the queue was full (503).
    public var refreshesRefused: Int = 0
    /// Conntrack entries deleted because a commit no longer allowed them (contract rule 8).
    public var conntrackCut: Int = 0
    /// The last commit's conntrack cut failed: old connections may still pass until a later
    /// sync cuts them (it then looks at the whole table).
    public var conntrackCutOwed: Bool = false
    public var instances: Int
    public var localInstances: Int
    public var groups: Int
    public var chains: Int
    public var sets: Int

    public var json: String {
        func s(_ v: String?) -> String { v.map(jsonString) ?? "null" }
        let iso = ISO8601DateFormatter()
        return """
            {"host":\(s(host)),"ready":\(ready),"generation":\(generation.map(String.init) ?? "null"),\
            "last_sync":\(s(lastSync.map { iso.string(from: $0) })),"last_sync_ms":\(lastSyncMillis.map { String(format: "%.3f", $0) } ?? "null"),\
            "last_error":\(s(lastError)),"consecutive_failed_syncs":\(consecutiveFailedSyncs),"syncs":\(syncs),"commits":\(commits),"refreshes_received":\(refreshesReceived),"refreshes_refused":\(refreshesRefused),\
            "conntrack_cut":\(conntrackCut),"conntrack_cut_owed":\(conntrackCutOwed),\
            "resyncs":\(resyncs),"drift_repaired":\(driftRepaired),"pending":\(pending),\
            "counts":{"instances":\(instances),"local_instances":\(localInstances),"groups":\(groups),"chains":\(chains),"sets":\(sets)}}
            """
    }
}

/// The hypervisor daemon's core: owns the engine (desired state and committed IR) and the
/// nftables backend (mirror + generation), takes refresh calls into a coalescing queue, and
/// runs one worker thread that drains everything pending into one transaction per drain.
/// A periodic resync reloads the host's document from the store, reads the table back and
/// repairs drift. Netlink calls block, so the worker is a thread, not a task.
public final class Daemon: @unchecked Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var namespace: NetworkNamespace
        /// Seconds between periodic resyncs (read-back and drift repair).
        public var resyncInterval: Double
        public var table: String
        /// After this many failed syncs in a row, `/v1/status` answers 503 (not ready) until one succeeds.
        public var maxFailedSyncs: Int
        /// Allow a first sync that removes every local instance from a table that holds some.
        public var allowEmpty: Bool
        /// Distinct refreshes waiting for a drain, at most (a refresh already pending is always
        /// accepted: it costs nothing). Beyond it the API answers 503 with Retry-After.
        public var maxQueuedRefreshes: Int
        public init(host: String, namespace: NetworkNamespace = .current, resyncInterval: Double = 30, table: String = Naming.table,
                    maxFailedSyncs: Int = 3, allowEmpty: Bool = false, maxQueuedRefreshes: Int = 10_000) {
            self.host = host
            self.namespace = namespace
            self.resyncInterval = resyncInterval
            self.table = table
            self.maxFailedSyncs = max(1, maxFailedSyncs)
            self.allowEmpty = allowEmpty
            self.maxQueuedRefreshes = max(1, maxQueuedRefreshes)
        }
    }

    public let configuration: Configuration
    public var host: String { configuration.host }
    public let store: Store
    public let logger: Logger
    public let registry = PrometheusCollectorRegistry()

    // Worker-owned state (only the worker thread touches these).
    private var engine: Engine
    /// This host's instances in the engine's document (rebuilt after an event that may change them).
    private var localCache: [String: Instance]?
    private var backend: NFTablesBackend?
    private let makeClient: @Sendable () throws -> NFTablesClient
    /// Whether commits are followed by the conntrack cut (a real kernel; not with an injected
    /// client such as `RecordingNFTables`).
    private let cutsConntrack: Bool
    private var conntrack: ConntrackConnection?
    /// A cut failed after its commit: the next sync cuts over the whole table.
    private var cutOwed = false

    // Shared state, under `cond`.
    private let cond = NSCondition()
    private var pending = Set<Refresh>()
    private var requested: UInt64 = 0
    /// Every ticket up to this one has been covered by a drain, whose outcome was `lastOutcome`.
    private var completed: UInt64 = 0
    private var lastOutcome: SyncOutcome = .failed("not synced yet")
    private var waiters: [(ticket: UInt64, reply: @Sendable (SyncOutcome) -> Void)] = []
    /// Tickets of resync requests not yet covered (answered with the resync's outcome; refresh
    /// tickets are answered with the outcome of the drain that carried them).
    private var resyncTickets = Set<UInt64>()
    /// The outcomes of recent passes, for a ticket whose waiter arrives after its pass.
    private var history: [Pass] = []
    private struct Pass {
        /// The tickets after `after` up to `through` were covered by this pass.
        var after: UInt64
        var through: UInt64
        var refresh: SyncOutcome
        var resync: SyncOutcome
        var resyncTickets: Set<UInt64>
        func outcome(_ ticket: UInt64) -> SyncOutcome { resyncTickets.contains(ticket) ? resync : refresh }
    }
    private var stopping = false
    private var resyncNow = false
    private var status: DaemonStatus
    private var thread: Thread?
    private var finished = false
    private var readyContinuations: [CheckedContinuation<Void, Never>] = []
    private var onReady: [@Sendable () -> Void] = []

    // Metrics.
    private let syncTimer: Metrics.Timer
    private let opsApplied: Metrics.Counter
    private let commitCounter: Metrics.Counter
    private let errorCounter: Metrics.Counter
    private let resyncCounter: Metrics.Counter
    private let driftCounter: Metrics.Counter
    private let refreshCounter: Metrics.Counter
    private let coalescedGauge: Metrics.Gauge
    private let conntrackCutCounter: Metrics.Counter
    private let conntrackTimer: Metrics.Timer

    public init(configuration: Configuration, store: Store, logger: Logger = Logger(label: "rampartd"),
                client: (@Sendable () throws -> NFTablesClient)? = nil) {
        self.configuration = configuration
        self.store = store
        self.logger = logger
        let ns = configuration.namespace
        makeClient = client ?? { try NFTablesConnection(namespace: ns) }
        cutsConntrack = client == nil
        engine = Engine(host: configuration.host)
        status = DaemonStatus(host: configuration.host, ready: false, syncs: 0, commits: 0, refreshesReceived: 0, resyncs: 0,
                              driftRepaired: 0, pending: 0, instances: 0, localInstances: 0, groups: 0, chains: 0, sets: 0)
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [.microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
                                                   .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
                                                   .milliseconds(500), .seconds(1), .seconds(5)]
        syncTimer = Metrics.Timer(label: "rampart_sync_duration_seconds", factory: factory)
        opsApplied = Metrics.Counter(label: "rampart_ops_applied_total", factory: factory)
        commitCounter = Metrics.Counter(label: "rampart_commits_total", factory: factory)
        errorCounter = Metrics.Counter(label: "rampart_errors_total", factory: factory)
        resyncCounter = Metrics.Counter(label: "rampart_resyncs_total", factory: factory)
        driftCounter = Metrics.Counter(label: "rampart_drift_repaired_total", factory: factory)
        refreshCounter = Metrics.Counter(label: "rampart_refresh_calls_total", factory: factory)
        coalescedGauge = Metrics.Gauge(label: "rampart_last_drain_items", factory: factory)
        conntrackCutCounter = Metrics.Counter(label: "rampart_conntrack_cut_total", factory: factory)
        conntrackTimer = Metrics.Timer(label: "rampart_conntrack_cut_duration_seconds", factory: factory)
    }

    // MARK: lifecycle

    /// Starts the worker: first sync (the kernel is brought to the store's document in one
    /// transaction), then serving the queue and the periodic resync.
    public func start() {
        cond.lock()
        defer { cond.unlock() }
        guard thread == nil else { return }
        let t = Thread { [self] in self.workerLoop() }
        t.name = "rampartd-worker"
        thread = t
        t.start()
    }

    /// Stops the worker after the drain in progress; the kernel keeps its rules.
    public func stop() {
        cond.lock()
        stopping = true
        cond.broadcast()
        while thread != nil && !finished { cond.wait() }
        let ws = waiters
        waiters = []
        cond.unlock()
        for w in ws { w.reply(.failed("daemon stopping")) }
    }

    /// Waits for the first successful sync.
    public func waitUntilReady() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            cond.lock()
            if status.synced { cond.unlock(); c.resume(); return }
            readyContinuations.append(c)
            cond.unlock()
        }
    }

    /// Runs `body` once, after the first successful sync (sd_notify READY=1).
    public func whenReady(_ body: @escaping @Sendable () -> Void) {
        cond.lock()
        if status.synced { cond.unlock(); body(); return }
        onReady.append(body)
        cond.unlock()
    }

    public var currentStatus: DaemonStatus {
        cond.lock()
        defer { cond.unlock() }
        var s = status
        s.pending = pending.count
        s.ready = s.synced && s.consecutiveFailedSyncs < configuration.maxFailedSyncs
        return s
    }

    /// What refuses to start the daemon (checked by `rampartd` before it serves, so that it exits
    /// with the kernel untouched; the first sync checks the same): a host the store does not know
    /// (a mistyped `--host`), and without `allowEmpty` a document with no instance of this host
    /// while the kernel's table holds instances (a wrong store would remove every instance's rules).
    public func preflight() throws {
        try checkHostKnown()
        let doc = try store.document(forHost: host)
        guard !configuration.allowEmpty, !doc.instances.values.contains(where: { $0.host == host }) else { return }
        let b = NFTablesBackend(client: try makeClient(), table: configuration.table)
        try checkNotEmptying(doc, kernel: try b.readBack(reference: nil))
    }

    public struct Refusal: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    private func checkHostKnown() throws {
        if try !store.knowsHost(host) {
            throw Refusal(description: "the store does not know host \(jsonString(host)) (no instance was ever registered for it): "
                + "check --host; `rampart instance add … --host \(host)` or `rampart import` of its document registers it")
        }
    }

    /// Instances the kernel's table holds on this host (its dispatch entries, or its instance chains).
    static func kernelInstances(_ ir: RulesetIR?) -> Int {
        guard let ir else { return 0 }
        let mapped = ir.maps[Naming.fromInstanceMap]?.elements.count ?? 0
        let chains = ir.chains.keys.reduce(0) { $0 + ($1.hasPrefix("out-") ? 1 : 0) }
        return max(mapped, chains)
    }

    private func checkNotEmptying(_ doc: Document, kernel: RulesetIR?) throws {
        guard !configuration.allowEmpty, !doc.instances.values.contains(where: { $0.host == host }) else { return }
        let n = Self.kernelInstances(kernel)
        if n > 0 {
            throw Refusal(description: "refusing the first sync: the store has no instance on host \(host) but the kernel's table holds \(n); "
                + "it would remove every instance's rules (start with --allow-empty if that is meant)")
        }
    }

    // MARK: refresh calls

    /// Marks work dirty; returns the ticket that a later drain covers.
    @discardableResult
    public func enqueue(_ refresh: Refresh) -> UInt64 {
        cond.lock()
        defer { cond.unlock() }
        pending.insert(refresh)
        requested += 1
        status.refreshesReceived += 1
        refreshCounter.increment()
        cond.signal()
        return requested
    }

    /// The API's enqueue: refused (nil) when `maxQueuedRefreshes` distinct refreshes already wait
    /// and this one is not among them; with `reply`, the waiter is registered atomically with
    /// the ticket and answered with the outcome of the drain that carries it.
    public func offer(_ refresh: Refresh, reply: (@Sendable (SyncOutcome) -> Void)? = nil) -> UInt64? {
        cond.lock()
        if !pending.contains(refresh) && pending.count >= configuration.maxQueuedRefreshes {
            status.refreshesRefused += 1
            cond.unlock()
            return nil
        }
        pending.insert(refresh)
        requested += 1
        let ticket = requested
        status.refreshesReceived += 1
        refreshCounter.increment()
        if let reply {
            if stopping {
                cond.unlock()
                reply(.failed("daemon stopping"))
                return ticket
            }
            waiters.append((ticket, reply))
        }
        cond.signal()
        cond.unlock()
        return ticket
    }

    /// Waits until the drain covering `ticket` has committed (or failed).
    public func wait(for ticket: UInt64) async -> SyncOutcome {
        await withCheckedContinuation { (c: CheckedContinuation<SyncOutcome, Never>) in
            wait(for: ticket) { c.resume(returning: $0) }
        }
    }

    /// Calls `reply` (on the worker thread, or at once) when the drain covering `ticket` is done.
    /// Needs no task: the API server waits this way without holding a thread.
    public func wait(for ticket: UInt64, reply: @escaping @Sendable (SyncOutcome) -> Void) {
        cond.lock()
        if stopping { cond.unlock(); reply(.failed("daemon stopping")); return }
        if ticket <= completed {
            let o = history.first(where: { $0.after < ticket && ticket <= $0.through })?.outcome(ticket) ?? lastOutcome
            cond.unlock()
            reply(o)
            return
        }
        waiters.append((ticket, reply))
        cond.unlock()
    }

    /// Enqueue and wait for the commit that covers it.
    public func refresh(_ r: Refresh) async -> SyncOutcome {
        await wait(for: enqueue(r))
    }

    /// Asks the worker for a resync (read-back and drift repair) now, and waits for it.
    public func resync() async -> SyncOutcome {
        await wait(for: requestResync())
    }

    public func requestResync(reply: (@Sendable (SyncOutcome) -> Void)? = nil) -> UInt64 {
        cond.lock()
        defer { cond.unlock() }
        resyncNow = true
        requested += 1
        resyncTickets.insert(requested)
        if let reply {
            if stopping {
                let t = requested
                DispatchQueue.global().async { reply(.failed("daemon stopping")) }
                return t
            }
            waiters.append((requested, reply))
        }
        cond.signal()
        return requested
    }

    // MARK: worker

    private func workerLoop() {
        var retryDelay = 0.2
        // First sync: retried until it succeeds or the daemon stops (the kernel keeps whatever
        // rules it had meanwhile: fail closed).
        while true {
            cond.lock()
            let stop = stopping
            let covered = requested
            pending = []
            cond.unlock()
            if stop { break }
            if let err = firstSync() {
                finish(through: covered, refresh: .failed(err), resync: .failed(err))
                cond.lock()
                _ = cond.wait(until: Date().addingTimeInterval(retryDelay))
                cond.unlock()
                retryDelay = min(retryDelay * 2, 5)
                continue
            }
            retryDelay = 0.2
            let ok = SyncOutcome.committed(generation: backend?.mirrorGeneration)
            finish(through: covered, refresh: ok, resync: ok)
            markReady()
            break
        }
        var nextResync = Date().addingTimeInterval(configuration.resyncInterval)
        var needsRepair = false
        while true {
            cond.lock()
            while pending.isEmpty && !stopping && !resyncNow && !needsRepair && Date() < nextResync {
                _ = cond.wait(until: nextResync)
            }
            if stopping { cond.unlock(); break }
            let items = pending
            pending = []
            let covered = requested
            let doResync = resyncNow || Date() >= nextResync || needsRepair
            resyncNow = false
            cond.unlock()

            // Refresh tickets get the outcome of the drain that carried them (or, if it failed,
            // of the repair that reloaded the store after it); resync tickets get the resync's.
            var refreshOutcome: SyncOutcome = .committed(generation: backend?.mirrorGeneration)
            if !items.isEmpty { refreshOutcome = drain(items) }
            var resyncOutcome = refreshOutcome
            let drainFailed = { if case .failed = refreshOutcome { true } else { false } }()
            if doResync || drainFailed {
                if let err = periodicResync() {
                    resyncOutcome = .failed(err)
                    needsRepair = true
                } else {
                    resyncOutcome = .committed(generation: backend?.mirrorGeneration)
                    if drainFailed { refreshOutcome = resyncOutcome }
                    needsRepair = false
                    retryDelay = 0.2
                }
                nextResync = Date().addingTimeInterval(configuration.resyncInterval)
            }
            finish(through: covered, refresh: refreshOutcome, resync: resyncOutcome)
            if needsRepair {
                cond.lock()
                _ = cond.wait(until: Date().addingTimeInterval(retryDelay))
                cond.unlock()
                retryDelay = min(retryDelay * 2, 5)
            }
        }
        cond.lock()
        finished = true
        cond.broadcast()
        cond.unlock()
        logger.info("worker stopped; rules left in place")
    }

    /// Answers every ticket up to `covered` and counts the pass as a success or a failure
    /// (`consecutiveFailedSyncs`, which decides readiness).
    private func finish(through covered: UInt64, refresh: SyncOutcome, resync: SyncOutcome) {
        cond.lock()
        let through = max(completed, covered)
        let tickets = resyncTickets.filter { $0 <= covered }
        resyncTickets.subtract(tickets)
        let pass = Pass(after: completed, through: through, refresh: refresh, resync: resync, resyncTickets: tickets)
        completed = through
        history.append(pass)
        if history.count > 256 { history.removeFirst(history.count - 256) }
        var ready: [(@Sendable (SyncOutcome) -> Void, SyncOutcome)] = []
        waiters.removeAll { w in
            if w.ticket <= covered { ready.append((w.reply, pass.outcome(w.ticket))); return true }
            return false
        }
        var failure: String?
        for o in [refresh, resync] { if case .failed(let e) = o { failure = e } }
        if let failure {
            lastOutcome = .failed(failure)
            status.lastError = failure
            status.consecutiveFailedSyncs += 1
        } else {
            lastOutcome = refresh
            if case .committed(let g) = refresh { status.generation = g ?? status.generation }
            status.lastError = nil
            status.consecutiveFailedSyncs = 0
        }
        cond.unlock()
        for (r, o) in ready { r(o) }
    }

    private func markReady() {
        cond.lock()
        status.synced = true
        let cs = readyContinuations
        readyContinuations = []
        let hooks = onReady
        onReady = []
        cond.unlock()
        for c in cs { c.resume() }
        for h in hooks { h() }
    }

    private func record(error: String) {
        errorCounter.increment()
        logger.error("\(error)")
        cond.lock()
        status.lastError = error
        cond.unlock()
    }

    private func updateCounts(syncMillis: Double?, commits: Int = 0) {
        let doc = engine.document
        let ir = engine.planned
        cond.lock()
        status.instances = doc.instances.count
        status.localInstances = doc.instances.values.reduce(0) { $0 + ($1.host == host ? 1 : 0) }
        status.groups = doc.groups.count
        status.chains = ir?.chains.count ?? 0
        status.sets = ir?.sets.count ?? 0
        status.generation = backend?.mirrorGeneration ?? status.generation
        status.commits += commits
        if let ms = syncMillis {
            status.syncs += 1
            status.lastSync = Date()
            status.lastSyncMillis = ms
        }
        cond.unlock()
    }

    private func connect() throws -> NFTablesBackend {
        if let b = backend { return b }
        let b = NFTablesBackend(client: try makeClient(), table: configuration.table)
        backend = b
        return b
    }

    /// Converges the kernel to the engine's committed IR (reading back when the mirror is not
    /// trusted) and counts what it took; `asDrift` also counts the operations as drift repaired.
    private func converge(_ b: NFTablesBackend, asDrift: Bool) throws -> Plan {
        // What the kernel holds before (converge then trusts it while the generation holds):
        // tells the cut a chain that only gained rules from one that lost some.
        let before = cutsConntrack ? try b.committed(reference: engine.planned) : nil
        let plan = try b.converge(to: engine.planned).plan ?? Plan()
        cutConnections(after: plan, before: before)
        guard !plan.isEmpty else { return plan }
        opsApplied.increment(by: plan.ops.count)
        commitCounter.increment()
        if asDrift {
            driftCounter.increment(by: plan.ops.count)
            cond.lock()
            status.driftRepaired += plan.ops.count
            cond.unlock()
        }
        return plan
    }

    /// Revocation is immediate (contract rule 8): after a commit of `plan` (from `before`), the
    /// conntrack entries the committed IR no longer allows are deleted, before the drain answers.
    /// A failure is recorded (status, error counter) and owed: the next sync cuts over the whole
    /// table, even with an empty plan.
    /// A drain's answer once its plan committed: a refresh returns only when the connections the
    /// new policy no longer allows are gone (contract rule 8), so a cut that failed makes the
    /// refresh fail too (the rules are in; the cut is owed to the next sync).
    private func committedOutcome(_ b: NFTablesBackend) -> SyncOutcome {
        cutOwed ? .failed("committed, but the conntrack cut failed: established connections the new policy refuses may still pass until the next sync")
            : .committed(generation: b.mirrorGeneration)
    }

    private func cutConnections(after plan: Plan, before: RulesetIR?) {
        guard cutsConntrack else { return }
        guard let ir = engine.planned else { cutOwed = false; return }  // no table: nothing is enforced
        var scope = Revocation.scope(of: plan, result: ir, previous: before)
        if cutOwed { scope = .all }
        guard scope != .none else { return }
        let ns = configuration.namespace
        do {
            if conntrack == nil { conntrack = try ConntrackConnection(namespace: ns) }
            let report = try Revocation.run(conntrack!, ir: ir, scope: scope, departed: Revocation.departed(in: plan, result: ir),
                                            hostAddresses: try Revocation.hostAddresses(in: ns))
            cutOwed = false
            conntrackTimer.recordNanoseconds(Int64(report.nanoseconds))
            if report.cut > 0 {
                conntrackCutCounter.increment(by: report.cut)
                logger.info("conntrack: \(report.cut) cut", metadata: ["examined": "\(report.examined)", "dumps": "\(report.dumps)",
                                                                      "ms": "\(Double(report.nanoseconds) / 1e6)"])
            }
            cond.lock()
            status.conntrackCut += report.cut
            status.conntrackCutOwed = false
            cond.unlock()
        } catch {
            cutOwed = true
            conntrack = nil
            cond.lock()
            status.conntrackCutOwed = true
            cond.unlock()
            record(error: "committed, but the conntrack cut failed (old connections may still pass): \(error)")
        }
    }

    /// Records a sync's duration (timer and status); returns it in nanoseconds.
    @discardableResult
    private func recordSync(since start: UInt64, commits: Int) -> UInt64 {
        let ns = DispatchTime.now().uptimeNanoseconds - start
        syncTimer.recordNanoseconds(Int64(ns))
        updateCounts(syncMillis: Double(ns) / 1e6, commits: commits)
        return ns
    }

    /// Loads the host's document and converges the kernel to it in one transaction.
    private func firstSync() -> String? {
        let start = DispatchTime.now().uptimeNanoseconds
        do {
            let b = try connect()
            try checkHostKnown()
            let doc = try store.document(forHost: host)
            if !configuration.allowEmpty && !doc.instances.values.contains(where: { $0.host == host }) {
                try checkNotEmptying(doc, kernel: try b.committed(reference: nil))
                b.invalidate()  // read back against the real reference below
            }
            _ = try engine.apply(document: doc)
            localCache = nil
            let plan = try converge(b, asDrift: false)
            let ns = recordSync(since: start, commits: plan.isEmpty ? 0 : 1)
            logger.info("first sync: \(plan.summary)", metadata: ["generation": "\(b.mirrorGeneration.map(String.init) ?? "-")",
                                                                 "instances": "\(doc.instances.count)", "ms": "\(Double(ns) / 1e6)"])
            return nil
        } catch {
            let msg = "first sync failed: \(error)"
            record(error: msg)
            return msg
        }
    }

    /// One drain: every pending refresh becomes engine events (or one whole reload), and all
    /// their Plans go to the kernel as one transaction.
    private func drain(_ items: Set<Refresh>) -> SyncOutcome {
        let start = DispatchTime.now().uptimeNanoseconds
        coalescedGauge.record(items.count)
        var plan = Plan()
        do {
            plan = try plans(for: items)
        } catch {
            record(error: "refresh failed: \(error)")
            return .failed("\(error)")
        }
        guard !plan.isEmpty else {
            // Nothing to send; still, if someone else committed since our last batch (one GETGEN),
            // read the table back and repair what they changed in it.
            do {
                let b = try connect()
                if try b.client.generation() != b.mirrorGeneration {
                    b.invalidate()
                    let repair = try converge(b, asDrift: true)
                    if !repair.isEmpty { logger.warning("another process changed the table; repaired: \(repair.summary)") }
                }
            } catch {
                record(error: "read-back after another commit failed: \(error)")
                return .failed("\(error)")
            }
            recordSync(since: start, commits: 0)
            return .committed(generation: backend?.mirrorGeneration)
        }
        do {
            let b = try connect()
            let before = b.mirror
            try b.commit(plan, result: engine.planned)
            cutConnections(after: plan, before: before)
            opsApplied.increment(by: plan.ops.count)
            commitCounter.increment()
            recordSync(since: start, commits: 1)
            logger.debug("drained \(items.count) refreshes: \(plan.summary)")
            return committedOutcome(b)
        } catch {
            // Refused whole (someone else committed: generation changed) or outcome unknown:
            // read the table back and converge to the engine's desired state.
            if case NetlinkError.generationChanged = error { logger.info("another process committed; reading the table back") } else { record(error: "commit failed: \(error)") }
            do {
                let b = try connect()
                b.invalidate()
                let repair = try converge(b, asDrift: false)
                recordSync(since: start, commits: repair.isEmpty ? 0 : 1)
                return committedOutcome(b)
            } catch {
                record(error: "repair failed: \(error)")
                return .failed("\(error)")
            }
        }
    }

    /// Reloads the document from the store, then reads the table back and repairs drift.
    private func periodicResync() -> String? {
        let start = DispatchTime.now().uptimeNanoseconds
        do {
            let b = try connect()
            let doc = try store.document(forHost: host)
            let catchUp = try engine.apply(document: doc)
            localCache = nil
            var caughtUp = false
            if !catchUp.isEmpty {
                // What the store has that no refresh brought (or a failed drain left): committed on
                // its own so that it is not counted as drift; if refused, the converge below
                // (from a fresh read-back) does it.
                do {
                    let before = b.mirror
                    try b.commit(catchUp, result: engine.planned)
                    cutConnections(after: catchUp, before: before)
                    opsApplied.increment(by: catchUp.ops.count)
                    commitCounter.increment()
                    caughtUp = true
                } catch {
                    logger.info("catch-up from the store refused (\(error)); converging from a read-back")
                }
            }
            b.invalidate()
            let repair = try converge(b, asDrift: true)
            resyncCounter.increment()
            if !repair.isEmpty { logger.warning("drift repaired: \(repair.summary)") }
            let ns = DispatchTime.now().uptimeNanoseconds - start
            cond.lock()
            status.resyncs += 1
            cond.unlock()
            updateCounts(syncMillis: Double(ns) / 1e6, commits: (caughtUp ? 1 : 0) + (repair.isEmpty ? 0 : 1))
            return nil
        } catch {
            let msg = "resync failed: \(error)"
            record(error: msg)
            return msg
        }
    }

    // MARK: refresh → engine events

    private struct Reload: Error {}

    /// The Plans of a drain, concatenated (each applies to the state the previous one left; the
    /// kernel runs a batch in order). Anything the incremental events cannot express exactly
    /// (a group new to this host, a reference to a group not yet known here, a deleted object,
    /// an instance moved between hosts) falls back to reloading the host's whole document.
    func plans(for items: Set<Refresh>) throws -> Plan {
        if items.contains(.host) { return try reload() }
        var ops: [PlanOp] = []
        do {
            // Instances first (their groups decide what is local), then rules, then members.
            for item in items.sorted(by: { order($0) < order($1) }) {
                let p: Plan
                switch item {
                case .instance(let id): p = try instanceRefresh(id)
                case .rules(let g): p = try rulesRefresh(g)
                case .members(let g): p = try membersRefresh(g)
                case .host: p = Plan()
                }
                ops += p.ops
            }
            return Plan(ops: ops)
        } catch is Reload {
            ops += try reload().ops
            return Plan(ops: ops)
        } catch is DocumentError {
            ops += try reload().ops
            return Plan(ops: ops)
        }
    }

    private func order(_ r: Refresh) -> Int {
        switch r { case .host: 0; case .instance: 1; case .rules: 2; case .members: 3 }
    }

    private func reload() throws -> Plan {
        localCache = nil
        return try engine.apply(document: store.document(forHost: host))
    }

    /// This host's instances as the engine has them (only instance events and reloads change them).
    private func localInstances() -> [String: Instance] {
        if let c = localCache { return c }
        var out: [String: Instance] = [:]
        for (id, i) in engine.document.instances where i.host == host { out[id] = i }
        localCache = out
        return out
    }

    /// Groups with a member on this host (their rules are in the document for real).
    private func localGroups() -> Set<String> {
        var out = Set<String>()
        for (_, i) in localInstances() { out.formUnion(i.groups) }
        return out
    }

    /// Groups some rule of the document references (their members elsewhere are in it).
    private func referencedGroups() -> Set<String> {
        var out = Set<String>()
        for (_, g) in engine.document.groups {
            for r in g.rules { if case .group(let ref) = r.remote { out.insert(ref) } }
        }
        return out
    }

    /// How an instance appears in this host's document (see `SQLiteStore.document(forHost:)`).
    private func project(_ inst: Instance, groups docGroups: [String: Group]) -> Instance {
        if inst.host == host { return inst }
        var i = inst
        i.groups = i.groups.filter { docGroups[$0] != nil }
        i.interface = nil
        i.mac = nil
        return i
    }

    private func instanceRefresh(_ id: String) throws -> Plan {
        defer { localCache = nil }
        let current = engine.document.instances[id]
        let record = try store.instance(id)
        guard let rec = record, rec.host == host else {
            if let c = current, c.host == host, record == nil { return try engine.instanceUnplugged(id: id) }
            if current == nil && record == nil { return Plan() }
            throw Reload()
        }
        let local = localGroups()
        if let c = current, c.host == host {
            if c == rec { return Plan() }
            var same = c
            same.groups = rec.groups
            if same == rec {
                // Only its groups changed: every new group must already be enforced here.
                var others = Set<String>()
                for (oid, i) in localInstances() where oid != id { others.formUnion(i.groups) }
                guard Set(rec.groups).subtracting(c.groups).isSubset(of: others) else { throw Reload() }
                return try engine.instanceGroupsChanged(id: id, groups: rec.groups)
            }
            throw Reload()
        }
        guard current == nil, Set(rec.groups).isSubset(of: local) else { throw Reload() }
        return try engine.instancePlugged(id: id, instance: rec)
    }

    private func rulesRefresh(_ group: String) throws -> Plan {
        guard localGroups().contains(group) else {
            // Not enforced here (as far as this host knows): only a reload can tell.
            if try store.hostsForRulesRefresh(group).contains(host) { throw Reload() }
            return Plan()
        }
        guard let g = try store.group(group) else { throw Reload() }
        // Only the groups that this host's own groups reference have their members kept up to
        // date here (that is where the store sends members refreshes); a group referenced only by
        // a group with no member here any more may hold stale members.
        var known = Set<String>()
        let doc = engine.document
        for l in localGroups() {
            for r in doc.groups[l]?.rules ?? [] { if case .group(let ref) = r.remote { known.insert(ref) } }
        }
        for r in g.rules { if case .group(let ref) = r.remote, !known.contains(ref) { throw Reload() } }
        return try engine.rulesChanged(group: group, rules: g.rules, description: g.description)
    }

    private func membersRefresh(_ group: String) throws -> Plan {
        guard referencedGroups().contains(group) else { return Plan() }
        let doc = engine.document
        var members: [String: Instance] = [:]
        // Instances elsewhere as the store has them; instances of this host as the engine has
        // them: their changes arrive as instance refreshes (which decide whether a group becomes
        // enforced here and so needs its real rules), never through a members refresh.
        for (id, inst) in try store.memberRecords(of: group) where inst.host != host {
            members[id] = project(inst, groups: doc.groups)
        }
        for (id, inst) in localInstances() where inst.groups.contains(group) {
            members[id] = inst
        }
        return try engine.membersChanged(group: group, members: members)
    }

    // MARK: for tests

    /// The IR the engine believes committed (worker state: call only while idle, in tests).
    public var engineCommittedForTesting: RulesetIR? { engine.planned }

    /// Prometheus text exposition.
    public func metricsText() -> String {
        var s = registry.emitToString()
        let st = currentStatus
        s += "# TYPE rampart_ready gauge\nrampart_ready \(st.ready ? 1 : 0)\n"
        s += "# TYPE rampart_pending_refreshes gauge\nrampart_pending_refreshes \(st.pending)\n"
        s += "# TYPE rampart_consecutive_failed_syncs gauge\nrampart_consecutive_failed_syncs \(st.consecutiveFailedSyncs)\n"
        s += "# TYPE rampart_refreshes_refused_total counter\nrampart_refreshes_refused_total \(st.refreshesRefused)\n"
        s += "# TYPE rampart_instances gauge\nrampart_instances{scope=\"local\"} \(st.localInstances)\nrampart_instances{scope=\"document\"} \(st.instances)\n"
        return s
    }
}
