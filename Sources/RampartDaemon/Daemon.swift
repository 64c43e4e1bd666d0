import RampartConntrack
import Foundation
import Logging
import Prometheus
import RampartCore
import RampartStore
import RampartSystem

/// The hypervisor daemon's core, as the API and `rampartd` see it: refresh calls go into the
/// coalescing `RefreshQueue`; the `Reconciler` (one dedicated thread, run by `ReconcilerService`)
/// drains them into engine events and one backend transaction per drain, resyncs periodically and
/// cuts revoked connections; `/v1/status` and `/metrics` read what it counted.
///
/// The backend is any `FirewallBackend` (nftables or iptables), made by the injected factory on
/// the reconciler's thread.
///
/// Where a refresh call becomes a kernel batch: `APIRouter` → `offer` (queue) →
/// `Reconciler.drain` → `RefreshEvents.plan` (store reads, engine events) → `FirewallBackend.commit`.
public final class Daemon: @unchecked Sendable {
    public struct Configuration: Sendable {
        public var host: String
        /// Seconds between periodic resyncs (read-back and drift repair).
        public var resyncInterval: Double
        /// After this many failed syncs in a row, `/v1/status` answers 503 (not ready) until one succeeds.
        public var maxFailedSyncs: Int
        /// Allow a first sync that removes every local instance from a kernel that holds some.
        public var allowEmpty: Bool
        /// Distinct refreshes waiting for a drain, at most (a refresh already pending is always
        /// accepted: it costs nothing). Beyond it the API answers 503 with Retry-After.
        public var maxQueuedRefreshes: Int
        public init(host: String, resyncInterval: Double = 30, maxFailedSyncs: Int = 3, allowEmpty: Bool = false, maxQueuedRefreshes: Int = 10_000) {
            self.host = host
            self.resyncInterval = resyncInterval
            self.maxFailedSyncs = max(1, maxFailedSyncs)
            self.allowEmpty = allowEmpty
            self.maxQueuedRefreshes = max(1, maxQueuedRefreshes)
        }
    }

    /// What refuses to start the daemon (see `preflight`).
    public struct Refusal: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    public let configuration: Configuration
    public var host: String { configuration.host }
    public let store: Store
    public let logger: Logger
    public var registry: PrometheusCollectorRegistry { metrics.registry }

    private let state: DaemonState
    private let metrics = DaemonMetrics()
    private let reconciler: Reconciler
    private let makeBackend: @Sendable () throws -> any FirewallBackend
    private let conntrackIndex: ConntrackIndex?
    private var thread: Thread?
    /// The change log's applied position as last updated, for `waitForChangeLog` (guarded by
    /// `appliedChanged`, apart from `state`'s lock, which the reconciler waits on for work).
    private let appliedChanged = NSCondition()
    private var appliedThrough: Int64 = 0

    /// - Parameters:
    ///   - backend: makes the backend (called on the reconciler's thread, again after it threw).
    ///   - cutter: deletes revoked connections after commits; nil cuts nothing (fake kernels).
    ///   - clock: schedules resyncs and retries (`SystemClock`; tests advance their own).
    ///   - conntrackIndex: the cutter's index, if any: its figures go into status and metrics.
    public init(configuration: Configuration, store: Store, logger: Logger = Logger(label: "rampartd"), clock: any DaemonClock = SystemClock(),
                backend: @escaping @Sendable () throws -> any FirewallBackend, cutter: (any ConnectionCutter)? = nil,
                conntrackIndex: ConntrackIndex? = nil) {
        self.configuration = configuration
        self.conntrackIndex = conntrackIndex
        self.store = store
        self.logger = logger
        makeBackend = backend
        state = DaemonState(host: configuration.host, capacity: configuration.maxQueuedRefreshes)
        reconciler = Reconciler(configuration: configuration, store: store, state: state, metrics: metrics, clock: clock,
                                logger: logger, backend: backend, cutter: cutter)
    }

    // MARK: lifecycle

    /// Starts the reconciler's thread: first sync (the kernel is brought to the store's document
    /// in one transaction), then serving the queue and the periodic resync.
    public func start() {
        state.locked { _ in
            guard thread == nil else { return }
            let t = Thread { [self] in
                nameThisThreadForKernel("rampartd-recon")
                reconciler.run()
                let (waiters, hooks) = state.locked { s in
                    s.finished = true
                    s.condition.broadcast()
                    defer { s.onFinished = [] }
                    return (s.queue.removeWaiters(), s.onFinished)
                }
                for w in waiters { w(RefreshQueue.stoppingOutcome) }
                for h in hooks { h() }
            }
            thread = t
            t.start()
        }
    }

    /// Asks the reconciler to stop after the pass in progress; returns at once. The kernel keeps
    /// its rules.
    public func requestStop() {
        state.locked { s in
            s.queue.stop()
            s.condition.broadcast()
        }
    }

    /// Stops the reconciler after the pass in progress and waits for its thread to end (blocks:
    /// not for the cooperative pool; `ReconcilerService` awaits `stopped()` instead).
    public func stop() {
        requestStop()
        let orphans = state.locked { s -> [RefreshQueue.Reply] in
            while thread != nil && !s.finished { s.condition.wait() }
            // Never started: nobody else will answer the waiters.
            return thread == nil ? s.queue.removeWaiters() : []
        }
        for w in orphans { w(RefreshQueue.stoppingOutcome) }
    }

    /// Returns when the reconciler's thread has ended (at once if it never started).
    public func stopped() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.locked { s -> Bool in
                if thread == nil || s.finished { return true }
                s.onFinished.append { c.resume() }
                return false
            }
            if now { c.resume() }
        }
    }

    /// Waits for the first successful sync.
    public func waitUntilReady() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.locked { s -> Bool in
                if s.status.synced { return true }
                s.readyContinuations.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    /// Runs `body` once, after the first successful sync (sd_notify READY=1).
    public func whenReady(_ body: @escaping @Sendable () -> Void) {
        let now = state.locked { s -> Bool in
            if s.status.synced { return true }
            s.onReady.append(body)
            return false
        }
        if now { body() }
    }

    public var currentStatus: DaemonStatus {
        state.locked { s in
            var st = s.status
            st.pending = s.queue.pending.count
            st.ready = st.synced && st.consecutiveFailedSyncs < configuration.maxFailedSyncs
            st.conntrackIndex = conntrackIndex?.statistics
            return st
        }
    }

    /// Prometheus text exposition.
    public func metricsText() -> String { metrics.text(currentStatus) }

    /// Updates what the status shows of the change log (`ChangeLogFollower`), and wakes whoever
    /// waits for its position (`waitForChangeLog`).
    public func updateChangeLog(_ body: (inout ChangeLogStatus) -> Void) {
        let applied = state.locked { s -> Int64 in
            var c = s.status.changeLog ?? ChangeLogStatus()
            body(&c)
            s.status.changeLog = c
            return c.applied
        }
        appliedChanged.lock()
        if applied != appliedThrough {
            appliedThrough = applied
            appliedChanged.broadcast()
        }
        appliedChanged.unlock()
    }

    /// Waits until the change log's position in the status (`ChangeLogStatus.applied`, which the
    /// follower moves after each step once it has recorded it in the store, where `--wait` reads
    /// it) reaches `sequence`, or until `deadline`; returns whether it did.
    ///
    /// For observers in this process (`rampart-bench controller`, tests): a status read takes
    /// the daemon's lock and copies the whole status, which a benchmark polling ten daemons
    /// every 100 µs did beside the work it timed.
    public func waitForChangeLog(appliedThrough sequence: Int64, deadline: Date) -> Bool {
        appliedChanged.lock()
        defer { appliedChanged.unlock() }
        while appliedThrough < sequence {
            if !appliedChanged.wait(until: deadline) { return appliedThrough >= sequence }
        }
        return true
    }

    /// What refuses to start the daemon (checked by `rampartd` before it serves, so that it exits
    /// with the kernel untouched; the first sync checks the same): a host the store does not know
    /// (a mistyped `--host`), and without `allowEmpty` a document with no instance of this host
    /// while the kernel enforces instances (a wrong store would remove every instance's rules).
    public func preflight() throws {
        try StartChecks.checkHostKnown(host, store: store)
        let doc = try store.document(forHost: host)
        guard StartChecks.wouldEmpty(doc, configuration) else { return }
        try StartChecks.refuseEmptying(host, kernelInstances: try makeBackend().enforcedInstances())
    }

    // MARK: refresh calls

    /// Marks work dirty (no cap); returns the ticket that a later drain covers.
    @discardableResult
    public func enqueue(_ refresh: Refresh) -> UInt64 {
        metrics.refreshCalls.increment()
        return state.locked { s in
            let t = s.queue.enqueue(refresh)
            s.status.refreshesReceived += 1
            s.condition.signal()
            return t
        }
    }

    /// The API's enqueue: refused (nil) when `maxQueuedRefreshes` distinct refreshes already wait
    /// and this one is not among them; with `reply`, the waiter is registered atomically with
    /// the ticket and answered with the outcome of the drain that carries it. `readAhead`: what
    /// the refresh will read, read with it (`ReadAhead`, the change log's follower).
    public func offer(_ refresh: Refresh, reply: (@Sendable (SyncOutcome) -> Void)? = nil, readAhead: ReadAhead? = nil) -> UInt64? {
        let (offer, immediate) = state.locked { s in
            let r = s.queue.offer(refresh, reply: reply, readAhead: readAhead)
            if case .queued = r.0 {
                s.status.refreshesReceived += 1
                s.condition.signal()
            } else {
                s.status.refreshesRefused += 1
            }
            return r
        }
        if let (r, o) = immediate { r(o) }
        guard case .queued(let ticket) = offer else { return nil }
        metrics.refreshCalls.increment()
        return ticket
    }

    /// Waits until the drain covering `ticket` has committed (or failed).
    public func wait(for ticket: UInt64) async -> SyncOutcome {
        await withCheckedContinuation { (c: CheckedContinuation<SyncOutcome, Never>) in
            wait(for: ticket) { c.resume(returning: $0) }
        }
    }

    /// Calls `reply` (on the reconciler's thread, or at once) when the drain covering `ticket`
    /// is done. Needs no task: the API server waits this way without holding a thread.
    public func wait(for ticket: UInt64, reply: @escaping @Sendable (SyncOutcome) -> Void) {
        if let now = state.locked({ $0.queue.wait(for: ticket, reply: reply) }) { reply(now) }
    }

    /// Enqueue and wait for the commit that covers it.
    public func refresh(_ r: Refresh) async -> SyncOutcome {
        await wait(for: enqueue(r))
    }

    /// Asks the reconciler for a resync (read-back and drift repair) now, and waits for it.
    public func resync() async -> SyncOutcome {
        await wait(for: requestResync())
    }

    /// Asks for a resync now; `reply` gets the resync's own outcome.
    @discardableResult
    public func requestResync(reply: (@Sendable (SyncOutcome) -> Void)? = nil) -> UInt64 {
        let (ticket, immediate) = state.locked { s in
            let r = s.queue.requestResync(reply: reply)
            s.condition.signal()
            return r
        }
        // Not under the caller's stack: the API replies on its event loop.
        if let (r, o) = immediate { DispatchQueue.global().async { r(o) } }
        return ticket
    }

    // MARK: for tests

    /// The IR the engine planned (and believes committed): call only while idle, in tests.
    public var engineCommittedForTesting: RulesetIR? { reconciler.plannedIR }
}
