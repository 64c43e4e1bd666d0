import Foundation
import Logging
import RampartStore
import RampartSystem

/// What `/v1/status` shows of the change log (PostgreSQL store): whether the store is reachable,
/// and how far this host's log has been applied.
public struct ChangeLogStatus: Sendable, Equatable {
    /// The store answers and the wake-up source listens.
    public var connected: Bool = false
    /// The last sequence number of this host's log that a committed drain covered.
    public var applied: Int64 = 0
    /// The host's last sequence number, as last read.
    public var head: Int64 = 0
    /// Rows applied since start.
    public var rowsApplied: Int = 0
    /// Whole-document reloads because the log had been trimmed past `applied`.
    public var reloads: Int = 0
    /// Reconnections to the store since start.
    public var reconnects: Int = 0
    /// Pages read by the wake-up connection as the NOTIFY came (`PrefetchingWakeups`), and used.
    public var readsAtWakeup: Int = 0
    /// Why the store is unreachable, while it is.
    public var lastError: String?
    /// Where the last step that applied rows spent its time; nil before the first.
    public var lastStep: StepTimes?
    public init() {}

    /// The moments of one step of the follower (`DispatchTime.uptimeNanoseconds`, the process's
    /// monotonic clock): an operator reads the phases' durations in the status; a benchmark in
    /// the same process places them on the timeline of the verb that caused them.
    public struct StepTimes: Sendable, Equatable {
        /// The wake-up that started this step arrived (its NOTIFY or relay message); the step's
        /// start when none did (a poll, a retry, more rows after a full batch).
        public var woken: UInt64
        /// The step began (before the log read).
        public var started: UInt64
        /// The log's rows were read.
        public var read: UInt64
        /// The drain covering them committed (kernel and conntrack done).
        public var drained: UInt64
        /// The applied position was written to the store (what `--wait` sees).
        public var recorded: UInt64
        public init(woken: UInt64, started: UInt64, read: UInt64, drained: UInt64, recorded: UInt64) {
            self.woken = woken; self.started = started; self.read = read; self.drained = drained; self.recorded = recorded
        }
    }
}

/// Applies this host's change log (the PostgreSQL store's per-host rows, `ChangeLog`) through
/// the same coalescing queue as the socket API, in sequence order, and records in the store how
/// far it got, so that a controller can wait for it.
///
/// It runs on its own thread (store calls block). Woken by `ChangeWakeups` (one LISTEN
/// connection in direct mode), it also polls every `pollInterval` seconds, so a lost NOTIFY
/// costs latency, never a change. When the store is unreachable the kernel keeps its rules
/// (fail static): the follower reports it, reconnects with backoff, then catches up from the
/// log, or reloads the whole document when the log was trimmed past its position (or when it is
/// so far behind that a reload is cheaper).
public final class ChangeLogFollower: @unchecked Sendable {
    public struct Settings: Sendable {
        /// Rows read per query.
        public var batch: Int = 1000
        /// A page of at most this many rows comes with what its refreshes will read, in the
        /// same statement (`ReadAhead`; 0: never). Longer pages are a catch-up, whose refreshes
        /// read the store themselves (or the host reloads, `reloadAbove`).
        public var readAhead: Int = 16
        /// Seconds between reads of the log when no wake-up came.
        public var pollInterval: Double = 10
        /// Reconnect backoff: from `minBackoff`, doubling, up to `maxBackoff` seconds.
        public var minBackoff: Double = 0.1
        public var maxBackoff: Double = 5
        /// Behind by more distinct refreshes than this (after an outage, a restart), a reader
        /// reloads the whole document instead: each refresh reads the store on its own, a reload
        /// reads a host in a few statements (1,000 rows over 200 groups: 302 ms replayed, 41 ms
        /// reloaded, `rampart-bench controller`).
        public var reloadAbove: Int = 64
        public init() {}
    }

    let daemon: Daemon
    let log: any ChangeLog
    let wakeups: any ChangeWakeups
    /// The same source, when it can read for this host at the wake-up (`PrefetchingWakeups`).
    private let prefetching: (any PrefetchingWakeups)?
    let settings: Settings
    let logger: Logger
    private let condition: NSCondition
    /// The follower's thread, and whether it was asked to stop (under `condition`).
    private let loop: LoopThread
    // Guarded by `condition`:
    private var woken = false
    /// When the pending wake-up arrived (nil: none since the last step began).
    private var wokenAt: UInt64?
    /// A page the wake-up source read for this host as the NOTIFY came (`PrefetchingWakeups`).
    private var prefetched: PrefetchedPage?
    private var listening = false
    /// Where the log is applied through; nil until the first sync covered a known position.
    private var applied: Int64?
    // Used only on the follower's thread:
    /// The last position written to the store (`host_progress`); behind `applied` when a write failed.
    private var recorded: Int64?
    /// The pause after a failed drain: from `minBackoff`, doubling up to `maxBackoff`.
    private var drainBackoff: Double = 0

    public init(daemon: Daemon, log: any ChangeLog, wakeups: any ChangeWakeups, settings: Settings = Settings(), logger: Logger) {
        self.daemon = daemon
        self.log = log
        self.wakeups = wakeups
        prefetching = wakeups as? any PrefetchingWakeups
        self.settings = settings
        self.logger = logger
        let c = NSCondition()
        condition = c
        loop = LoopThread(condition: c)
    }

    /// Direct mode: the PostgreSQL store's own log, woken by one LISTEN connection of its own
    /// (what `rampartd --store postgres://…` runs; a relay tier would pass other wake-ups).
    public convenience init(daemon: Daemon, postgres store: PostgresStore, settings: Settings = Settings()) {
        self.init(daemon: daemon, log: store, wakeups: PostgresWakeups(location: store.location, eventLoopGroup: store.eventLoopGroup), settings: settings, logger: daemon.logger)
    }

    /// Reads the host's log head: call before the daemon's first sync, which then loads a
    /// document at least as new, so that applying from here misses nothing. Throws if the store
    /// cannot be read (the follower then reloads the document once it can).
    public func prime() throws(StoreError) {
        let page = try log.entries(host: daemon.host, after: Int64.max, limit: 0)
        condition.withLock { applied = page.head }
        daemon.updateChangeLog { $0.head = page.head; $0.applied = page.head }
    }

    /// Starts the follower's thread; it records the primed position once the daemon is ready.
    public func start() {
        loop.start(name: "rampartd-log") { [self] in run() }
    }

    /// Stops the thread after the step in progress and waits for it.
    public func stop() {
        loop.stop()
        wakeups.stop()
    }

    private func wake(_ w: Wakeup) {
        condition.withLock {
            switch w {
            case .appended(let hosts):
                guard hosts == nil || hosts!.contains(daemon.host) else { return }
            case .lost(let why):
                listening = false
                logger.warning("store wake-ups lost; reconnecting", metadata: ["error": "\(why)"])
            }
            woken = true
            if wokenAt == nil { wokenAt = DispatchTime.now().uptimeNanoseconds }
            condition.signal()
        }
    }

    /// A page read for this host by the wake-up source (nil: its read failed): a wake-up.
    private func delivered(_ page: PrefetchedPage?) {
        condition.withLock {
            if let page { prefetched = page }
            woken = true
            if wokenAt == nil { wokenAt = page?.notified ?? DispatchTime.now().uptimeNanoseconds }
            condition.signal()
        }
    }

    /// Sleeps up to `seconds` or until woken (or stopping). Returns false when stopping.
    /// `armed`: a wake-up source that can read for this host does so at the next NOTIFY that
    /// names it, from the position applied and recorded now (only then: a page is used only
    /// from the position it was read after).
    private func pause(_ seconds: Double, armed: Bool = false) -> Bool {
        let prefetching = armed ? prefetching : nil
        if let prefetching, let at = condition.withLock({ applied }), at == recorded {
            prefetching.arm(host: daemon.host, after: at, limit: settings.batch, readingAhead: settings.readAhead) { [weak self] in
                self?.delivered($0)
            }
        }
        defer { prefetching?.disarm() }
        return condition.withLock {
            let deadline = Date(timeIntervalSinceNow: seconds)
            while !woken && !loop.stopping && condition.wait(until: deadline) {}
            woken = false
            return !loop.stopping
        }
    }

    private var isStopping: Bool { condition.withLock { loop.stopping } }

    private func run() {
        // The first sync covers the primed head (recorded by the first step).
        waitUntilReady()
        var backoff = settings.minBackoff
        var wasDown = false
        while !isStopping {
            do {
                if !condition.withLock({ listening }) {
                    try wakeups.start { [weak self] in self?.wake($0) }
                    condition.withLock { listening = true }
                    if wasDown { daemon.updateChangeLog { $0.reconnects += 1 } }
                }
                daemon.updateChangeLog { $0.connected = true; $0.lastError = nil }
                if wasDown {
                    logger.info("store reachable again; catching up from the change log")
                    // The last position was committed without waiting for the WAL flush
                    // (`PostgresStore.recordApplied`): a server that crashed may have lost it.
                    // Written again by the next step, so that a `--wait` sees it.
                    recorded = nil
                }
                wasDown = false
                backoff = settings.minBackoff
                if try step() { continue }  // more rows may wait: read again at once
                _ = pause(settings.pollInterval, armed: true)
            } catch {
                if !wasDown { logger.error("store unreachable; the kernel keeps its rules", metadata: ["error": "\(error)"]) }
                wasDown = true
                condition.withLock { listening = false }
                wakeups.stop()
                daemon.updateChangeLog { $0.connected = false; $0.lastError = "\(error)" }
                _ = pause(backoff)
                backoff = min(backoff * 2, settings.maxBackoff)
            }
        }
    }

    private func waitUntilReady() {
        let ready = DispatchSemaphore(value: 0)
        daemon.whenReady { ready.signal() }
        while ready.wait(timeout: .now() + 0.5) == .timedOut { if isStopping { return } }
    }

    /// One read of the log and the drains it needs. Returns true if a full batch was applied
    /// (more may follow at once).
    private func step() throws -> Bool {
        let host = daemon.host
        var started = DispatchTime.now().uptimeNanoseconds
        let (woken, prefetched) = condition.withLock { () -> (UInt64, PrefetchedPage?) in
            defer { wokenAt = nil; self.prefetched = nil }
            return (wokenAt ?? started, self.prefetched)
        }
        guard let from = condition.withLock({ applied }) else {
            // Never primed (the store was down at start): whole document, from a fresh head.
            try reload(reason: "start")
            return true
        }
        // A position not yet in the store (the first sync's, or a write that failed) goes first:
        // a controller waiting with --wait reads it there.
        if recorded != from { try record(from) }
        let page: LogPage
        let read: UInt64
        if let prefetched, prefetched.after == from {
            // Read as the NOTIFY came, from this position (a page from another is dropped).
            page = prefetched.page
            started = prefetched.notified
            read = prefetched.read
            daemon.updateChangeLog { $0.readsAtWakeup += 1 }
        } else {
            page = try log.entries(host: host, after: from, limit: settings.batch, readingAhead: settings.readAhead)
            read = DispatchTime.now().uptimeNanoseconds
        }
        daemon.updateChangeLog { $0.head = page.head }
        if page.trimmed {
            try reload(reason: "log trimmed past \(from)")
            return true
        }
        guard let last = page.entries.last else { return false }
        let distinct = Set(page.entries.map(\.refresh)).count
        if distinct > settings.reloadAbove {
            try reload(reason: "\(distinct) distinct refreshes behind")
            return true
        }
        // A failed drain: read and offer again after the backoff (apply paused), not after a poll.
        guard try apply(page.entries.map(\.refresh), readAhead: page.readAhead) else { return true }
        let drained = DispatchTime.now().uptimeNanoseconds
        condition.withLock { applied = last.sequence }
        try record(last.sequence)
        let times = ChangeLogStatus.StepTimes(woken: min(woken, started), started: started, read: read, drained: drained,
                                              recorded: DispatchTime.now().uptimeNanoseconds)
        daemon.updateChangeLog { $0.applied = last.sequence; $0.rowsApplied += page.entries.count; $0.lastStep = times }
        return page.entries.count == settings.batch
    }

    /// Reloads the whole document: head first, then the reload (which reads a document at least
    /// as new), then the position.
    private func reload(reason: String) throws {
        logger.info("reloading the host's document from the store", metadata: ["reason": "\(reason)"])
        let page = try log.entries(host: daemon.host, after: Int64.max, limit: 0)
        guard try apply([.host]) else { return }
        condition.withLock { applied = page.head }
        try record(page.head)
        daemon.updateChangeLog { $0.applied = page.head; $0.head = page.head; $0.reloads += 1 }
    }

    /// Writes the applied position to the store.
    private func record(_ sequence: Int64) throws {
        try log.recordApplied(host: daemon.host, sequence: sequence)
        recorded = sequence
    }

    /// Offers the refreshes in order (with what they will read, if it was read ahead) and waits
    /// for the drain that covers the last one. Returns false if that drain failed (after a pause
    /// that grows while drains keep failing).
    private func apply(_ refreshes: [Refresh], readAhead: ReadAhead? = nil) throws -> Bool {
        let done = DispatchSemaphore(value: 0)
        let outcome = OutcomeBox()
        for (i, r) in refreshes.enumerated() {
            var reply: (@Sendable (SyncOutcome) -> Void)?
            if i == refreshes.count - 1 {
                reply = { (o: SyncOutcome) in
                    outcome.set(o)
                    done.signal()
                }
            }
            // A full queue (the API's cap) is waited out: the log is the truth, nothing is dropped.
            while daemon.offer(r, reply: reply, readAhead: readAhead) == nil {
                if !pause(0.05) { return false }
            }
        }
        done.wait()
        if case .failed(let why) = outcome.get() {
            drainBackoff = min(max(drainBackoff * 2, settings.minBackoff), settings.maxBackoff)
            logger.warning("a drain of change-log rows failed; retrying", metadata: ["error": "\(why)", "retry_s": "\(drainBackoff)"])
            _ = pause(drainBackoff)
            return false
        }
        drainBackoff = 0
        return true
    }
}

/// A drain's outcome handed from the reconciler's thread to the follower's.
private final class OutcomeBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: SyncOutcome?
    func set(_ o: SyncOutcome) { lock.withLock { value = o } }
    func get() -> SyncOutcome? { lock.withLock { value } }
}
