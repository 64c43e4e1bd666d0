import Dispatch
import Foundation
import Logging
import RampartConntrack
import RampartCore
import RampartStore

/// The reconciler: the one thread that touches the engine and the kernel. It drains the refresh
/// queue into engine events and commits **one backend transaction per drain**; it makes the
/// first sync (store → kernel, one converge), the periodic resync (reload the store, read the
/// kernel back, repair drift), the repair after a failed drain (retried with backoff), counts
/// failures (readiness), and cuts the conntrack entries a commit no longer allows before the
/// drain's refreshes are answered.
///
/// Backend calls block (netlink, iptables-restore), so it runs on a dedicated thread, never on
/// the cooperative pool; its schedule (resync interval, backoff) reads the injected clock.
final class Reconciler: @unchecked Sendable {
    let configuration: Daemon.Configuration
    var host: String { configuration.host }
    let store: Store
    let state: DaemonState
    let metrics: DaemonMetrics
    let clock: any DaemonClock
    let logger: Logger
    private let makeBackend: @Sendable () throws -> any FirewallBackend
    private let cutter: (any ConnectionCutter)?

    // Owned by the reconciler's thread.
    private var engine: Engine
    private var events: RefreshEvents
    private var backend: (any FirewallBackend)?
    /// A cut failed after its commit: the next sync cuts over the whole table.
    private var cutOwed = false

    /// Retry backoff after a failed first sync or repair: 0.2 s doubling to 5 s.
    static let firstRetry = 0.2
    static let maxRetry = 5.0

    init(configuration: Daemon.Configuration, store: Store, state: DaemonState, metrics: DaemonMetrics, clock: any DaemonClock,
         logger: Logger, backend: @escaping @Sendable () throws -> any FirewallBackend, cutter: (any ConnectionCutter)?) {
        self.configuration = configuration
        self.store = store
        self.state = state
        self.metrics = metrics
        self.clock = clock
        self.logger = logger
        makeBackend = backend
        self.cutter = cutter
        engine = Engine(host: configuration.host)
        events = RefreshEvents(host: configuration.host, store: store)
    }

    /// The IR the engine planned (and believes committed); read it only while the thread is idle.
    var plannedIR: RulesetIR? { engine.planned }

    // MARK: the loop

    /// Runs until the queue is stopped: the first sync (retried until it succeeds), then drains,
    /// resyncs and repairs. Leaves the kernel's rules in place when it returns.
    func run() {
        var retryDelay = Self.firstRetry
        var synced = false
        // First sync: retried until it succeeds or the daemon stops (the kernel keeps whatever
        // rules it had meanwhile: fail closed). Refreshes that arrive meanwhile are covered by it.
        while !synced {
            let (stop, work) = state.locked { s in (s.queue.stopping, s.queue.take()) }
            if stop { break }
            if let err = firstSync() {
                finish(through: work.covered, refresh: .failed(err), resync: .failed(err))
                backoff(&retryDelay)
                continue
            }
            retryDelay = Self.firstRetry
            let ok = SyncOutcome.committed(generation: backend?.generation)
            finish(through: work.covered, refresh: ok, resync: ok)
            markReady()
            synced = true
        }
        var nextResync = clock.now() + configuration.resyncInterval
        var needsRepair = false
        while synced {
            state.condition.lock()
            while !state.queue.hasWork && !state.queue.stopping && !needsRepair && clock.now() < nextResync {
                clock.wait(on: state.condition, until: nextResync)
            }
            if state.queue.stopping { state.condition.unlock(); break }
            let work = state.queue.take()
            let doResync = work.resync || needsRepair || clock.now() >= nextResync
            state.condition.unlock()

            // Refresh tickets get the outcome of the drain that carried them (or, if it failed,
            // of the repair that reloaded the store after it); resync tickets get the resync's.
            var refreshOutcome: SyncOutcome = .committed(generation: backend?.generation)
            if !work.items.isEmpty { refreshOutcome = drain(work.items, readAhead: work.readAhead) }
            var resyncOutcome = refreshOutcome
            let drainFailed = !refreshOutcome.isCommitted
            if doResync || drainFailed {
                if let err = resync() {
                    resyncOutcome = .failed(err)
                    needsRepair = true
                } else {
                    resyncOutcome = .committed(generation: backend?.generation)
                    if drainFailed { refreshOutcome = resyncOutcome }
                    needsRepair = false
                    retryDelay = Self.firstRetry
                }
                nextResync = clock.now() + configuration.resyncInterval
            }
            finish(through: work.covered, refresh: refreshOutcome, resync: resyncOutcome)
            if needsRepair { backoff(&retryDelay) }
        }
        logger.info("reconciler stopped; rules left in place")
    }

    /// Waits `delay` on the clock, unless work arrives or the daemon stops first (a refresh is
    /// served at once, and the failed sync retried with it); then doubles the delay, up to 5 s.
    private func backoff(_ delay: inout Double) {
        let deadline = clock.now() + delay
        state.condition.lock()
        while !state.queue.stopping && !state.queue.hasWork && clock.now() < deadline {
            clock.wait(on: state.condition, until: deadline)
        }
        state.condition.unlock()
        delay = min(delay * 2, Self.maxRetry)
    }

    /// Answers every ticket up to `covered` and counts the pass as a success or a failure
    /// (`consecutiveFailedSyncs`, which decides readiness).
    private func finish(through covered: UInt64, refresh: SyncOutcome, resync: SyncOutcome) {
        let replies = state.locked { s in
            let replies = s.queue.finish(through: covered, refresh: refresh, resync: resync)
            var failure: String?
            for o in [refresh, resync] { if case .failed(let e) = o { failure = e } }
            if let failure {
                s.status.lastError = failure
                s.status.consecutiveFailedSyncs += 1
            } else {
                if case .committed(let g) = refresh { s.status.generation = g ?? s.status.generation }
                s.status.lastError = nil
                s.status.consecutiveFailedSyncs = 0
            }
            return replies
        }
        DaemonState.answer(replies)
    }

    private func markReady() {
        let (continuations, hooks) = state.locked { s in
            s.status.synced = true
            defer { s.readyContinuations = []; s.onReady = [] }
            return (s.readyContinuations, s.onReady)
        }
        for c in continuations { c.resume() }
        for h in hooks { h() }
    }

    // MARK: syncs

    /// Loads the host's document and converges the kernel to it in one transaction.
    private func firstSync() -> String? {
        let start = DispatchTime.now().uptimeNanoseconds
        do {
            let b = try connect()
            try StartChecks.checkHostKnown(host, store: store)
            let doc = try store.document(forHost: host)
            if StartChecks.wouldEmpty(doc, configuration) {
                try StartChecks.refuseEmptying(host, kernelInstances: try b.enforcedInstances())
                b.invalidate()  // converge reads back below, against the real desired state
            }
            _ = try engine.apply(document: doc)
            let change = try converge(b, asDrift: false)
            let ns = recordSync(since: start, commits: change.isEmpty ? 0 : 1)
            logger.info("first sync", metadata: ["summary": "\(change.summary)", "generation": "\(b.generation.map(String.init) ?? "-")",
                                                 "instances": "\(doc.instances.count)", "ms": "\(Double(ns) / 1e6)", "backend": "\(b.name)"])
            return nil
        } catch {
            let msg = "first sync failed: \(error)"
            record(error: msg)
            return msg
        }
    }

    /// One drain: every pending refresh becomes engine events (or one whole reload), and all
    /// their Plans go to the kernel as one transaction. `readAhead` answers the refreshes' reads
    /// it holds (`ReadAhead`); the store answers the rest.
    private func drain(_ items: Set<Refresh>, readAhead: ReadAhead?) -> SyncOutcome {
        let start = DispatchTime.now().uptimeNanoseconds
        metrics.lastDrainItems.record(items.count)
        // What the previous successful commit left: the cut compares a rewritten chain with its
        // old version. Only those chains, recorded by the engine as the events replace them:
        // holding the planned IR (or its chain dictionary) here would make the first event copy
        // all of it (copy-on-write), a cost that grows with the host.
        let hadTable = engine.planned != nil
        engine.recordReplacedChains()
        // The chains the events replaced, as they were (nil: there was no table).
        func replacedChains() -> RulesetIR? {
            let replaced = engine.takeReplacedChains()
            return hadTable ? RulesetIR(chains: replaced.compactMapValues { $0 }) : nil
        }
        let plan: Plan
        let before: RulesetIR?
        do {
            let reads = events.reads
            defer {
                let now = events.reads
                state.locked {
                    if now.documents != reads.documents { $0.status.documentReloads += 1 }
                    $0.status.refreshStoreReads += now.store - reads.store
                    $0.status.refreshReadsAhead += now.ahead - reads.ahead
                }
            }
            plan = try events.plan(for: items, engine: &engine, readAhead: readAhead)
            before = replacedChains()
        } catch let partly as RefreshEvents.PartlyPlanned {
            // The store failed after some refreshes reached the engine: their Plan goes to the
            // kernel now (no store needed), so that a revoke already read is not held back until
            // the store returns, and the engine never runs ahead of the kernel. The drain still
            // fails: the resync after it reloads the rest.
            let previous = replacedChains()
            record(error: "refresh failed part-way (the refreshes read before it are committed): \(partly.underlying)")
            commitOrRepair(partly.applied, previous: previous, since: start)
            return .failed("\(partly.underlying)")
        } catch {
            _ = engine.takeReplacedChains()
            record(error: "refresh failed: \(error)")
            return .failed("\(error)")
        }
        guard !plan.isEmpty else {
            // Nothing to send; still, if someone else changed the kernel since our last commit
            // (nftables: one generation query), read back and repair what they changed.
            do {
                let b = try connect()
                if try b.changedByOthers() {
                    b.invalidate()
                    let repair = try converge(b, asDrift: true)
                    if !repair.isEmpty { logger.warning("another process changed Rampart's objects; repaired", metadata: ["summary": "\(repair.summary)"]) }
                }
            } catch {
                record(error: "read-back after another commit failed: \(error)")
                return .failed("\(error)")
            }
            recordSync(since: start, commits: 0)
            return .committed(generation: backend?.generation)
        }
        logger.debug("drained", metadata: ["refreshes": "\(items.count)", "summary": "\(plan.summary)"])
        return commitOrRepair(plan, previous: before, since: start)
    }

    /// Commits a drain's `plan` (the engine's planned IR the result) and cuts what it narrowed
    /// from `previous`; if the kernel refuses it whole (someone else committed) or the outcome is
    /// unknown, reads the kernel back and converges it to the engine's desired state instead.
    @discardableResult
    private func commitOrRepair(_ plan: Plan, previous: RulesetIR?, since start: UInt64) -> SyncOutcome {
        do {
            let b = try connect()
            cutConnections(after: try b.commit(plan, result: engine.planned), previous: previous)
            metrics.opsApplied.increment(by: plan.ops.count)
            metrics.commits.increment()
            recordSync(since: start, commits: 1)
            return committedOutcome(b)
        } catch {
            if error.backendFailureKind == .conflict {
                logger.info("another process committed; reading the kernel back")
            } else {
                record(error: "commit failed: \(error)")
            }
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

    /// Reloads the document from the store, then reads the kernel back and repairs drift.
    private func resync() -> String? {
        let start = DispatchTime.now().uptimeNanoseconds
        do {
            let b = try connect()
            let before = engine.planned.map { RulesetIR(chains: $0.chains) }  // see drain
            let catchUp = try events.reload(&engine)
            var caughtUp = false
            if !catchUp.isEmpty {
                // What the store has that no refresh brought (or a failed drain left): committed on
                // its own so that it is not counted as drift; if refused, the converge below
                // (from a fresh read-back) does it.
                do {
                    cutConnections(after: try b.commit(catchUp, result: engine.planned), previous: before)
                    metrics.opsApplied.increment(by: catchUp.ops.count)
                    metrics.commits.increment()
                    caughtUp = true
                } catch {
                    logger.info("catch-up from the store refused; converging from a read-back", metadata: ["error": "\(error)"])
                }
            }
            b.invalidate()
            let repair = try converge(b, asDrift: true)
            metrics.resyncs.increment()
            if !repair.isEmpty { logger.warning("drift repaired", metadata: ["summary": "\(repair.summary)"]) }
            let ns = DispatchTime.now().uptimeNanoseconds - start
            state.locked { $0.status.resyncs += 1 }
            updateCounts(syncMillis: Double(ns) / 1e6, commits: (caughtUp ? 1 : 0) + (repair.isEmpty ? 0 : 1))
            // The kernel is right but revoked connections may live on: not a successful sync
            // (retried with backoff, and a drain repaired by it is not answered as committed).
            if cutOwed { return "resync: the conntrack cut failed; established connections the policy refuses may still pass" }
            return nil
        } catch {
            let msg = "resync failed: \(error)"
            record(error: msg)
            return msg
        }
    }

    // MARK: the backend

    private func connect() throws -> any FirewallBackend {
        if let b = backend { return b }
        let b = try makeBackend()
        backend = b
        return b
    }

    /// Converges the kernel to the engine's planned IR (reading back when the mirror is not
    /// trusted), cuts what it narrowed, and counts what it took; `asDrift` also counts the
    /// operations as drift repaired.
    private func converge(_ b: any FirewallBackend, asDrift: Bool) throws -> BackendChange {
        var change = try b.converge(to: engine.planned)
        // A backend that converged without a core Plan but knew the kernel's IR before: the
        // difference is the plan (what revocation reads what narrowed from).
        if change.plan == nil, !change.isEmpty, let previous = change.previous, let ir = engine.planned { change.plan = diff(from: previous, to: ir) }
        cutConnections(after: change, previous: change.previous)
        guard !change.isEmpty else { return change }
        metrics.opsApplied.increment(by: change.operations)
        metrics.commits.increment()
        if asDrift {
            metrics.driftRepaired.increment(by: change.operations)
            state.locked { $0.status.driftRepaired += change.operations }
        }
        return change
    }

    /// A drain's answer once its plan committed: a refresh returns only when the connections the
    /// new policy no longer allows are gone (contract rule 8), so a cut that failed makes the
    /// refresh fail too (the rules are in; the cut is owed to the next sync).
    private func committedOutcome(_ b: any FirewallBackend) -> SyncOutcome {
        cutOwed ? .failed("committed, but the conntrack cut failed: established connections the new policy refuses may still pass until the next sync")
            : .committed(generation: b.generation)
    }

    /// Revocation is immediate (contract rule 8): after a committed `change` (from `previous`),
    /// the conntrack entries the committed IR no longer allows are deleted, before the drain
    /// answers (`Revocation.work`: without a plan, a change that was not empty reviews the whole
    /// table). A failure is recorded (status, error counter) and owed: the next sync cuts over
    /// the whole table, even with an empty plan.
    private func cutConnections(after change: BackendChange, previous: RulesetIR?) {
        guard let cutter else { return }
        guard let ir = engine.planned else { cutOwed = false; return }  // no table: nothing is enforced
        // The engine answers what revocation asks of the local instances from its indexes
        // (`LocalInstances`): `ir` is its planned IR, so the answers are the IR's, without a walk
        // of the host.
        var (scope, departed) = Revocation.work(after: change, result: ir, previous: previous, local: engine)
        if cutOwed { scope = .all }
        guard scope != .none else { return }
        do {
            let report = try cutter.cut(ir: ir, scope: scope, departed: departed, local: engine)
            cutOwed = false
            metrics.conntrackTimer.recordNanoseconds(Int64(report.nanoseconds))
            if report.cut > 0 {
                metrics.conntrackCut.increment(by: report.cut)
                logger.info("conntrack entries cut", metadata: ["cut": "\(report.cut)", "examined": "\(report.examined)", "dumps": "\(report.dumps)",
                                                                "ms": "\(Double(report.nanoseconds) / 1e6)"])
            }
            state.locked { s in
                s.status.conntrackCut += report.cut
                s.status.conntrackCutOwed = false
            }
        } catch {
            cutOwed = true
            state.locked { $0.status.conntrackCutOwed = true }
            record(error: "committed, but the conntrack cut failed (old connections may still pass): \(error)")
        }
    }

    // MARK: status

    private func record(error: String) {
        metrics.errors.increment()
        logger.error("sync failed", metadata: ["error": "\(error)"])
        state.locked { $0.status.lastError = error }
    }

    /// Records a sync's duration (timer and status); returns it in nanoseconds.
    @discardableResult
    private func recordSync(since start: UInt64, commits: Int) -> UInt64 {
        let ns = DispatchTime.now().uptimeNanoseconds - start
        metrics.syncTimer.recordNanoseconds(Int64(ns))
        updateCounts(syncMillis: Double(ns) / 1e6, commits: commits)
        return ns
    }

    private func updateCounts(syncMillis: Double?, commits: Int = 0) {
        let doc = engine.document
        let ir = engine.planned
        let generation = backend?.generation
        // From the engine's index: walking the document's instances here cost every drain
        // O(instances) (5,000 at a host-1k's document; `rampart-bench controller`'s profile).
        let localInstances = engine.localInstanceCount
        state.locked { s in
            s.status.instances = doc.instances.count
            s.status.localInstances = localInstances
            s.status.groups = doc.groups.count
            s.status.chains = ir?.chains.count ?? 0
            s.status.sets = ir?.sets.count ?? 0
            s.status.generation = generation ?? s.status.generation
            s.status.commits += commits
            if let ms = syncMillis {
                s.status.syncs += 1
                s.status.lastSync = Date()
                s.status.lastSyncMillis = ms
            }
        }
    }
}
