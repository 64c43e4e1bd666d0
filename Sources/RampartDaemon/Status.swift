import Foundation
import Metrics
import Prometheus
import RampartConntrack

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
    public var syncs: Int = 0
    public var commits: Int = 0
    public var refreshesReceived: Int = 0
    public var resyncs: Int = 0
    public var driftRepaired: Int = 0
    /// Drains whose refreshes could not be expressed as events and read the host's whole
    /// document instead (an instance moved between hosts, a deleted object, a host refresh): each
    /// costs a read that grows with the host. A count that climbs with every refresh is a bug.
    public var documentReloads: Int = 0
    /// Refreshes' reads of the store (a group, an instance, a group's members), and those that
    /// the change log's read-ahead answered instead (`ReadAhead`): with a PostgreSQL store the
    /// second should take most of them, each a round trip saved.
    public var refreshStoreReads: Int = 0
    public var refreshReadsAhead: Int = 0
    public var pending: Int = 0
    /// API refresh calls refused because the queue was full (503).
    public var refreshesRefused: Int = 0
    /// Conntrack entries deleted because a commit no longer allowed them (contract rule 8).
    public var conntrackCut: Int = 0
    /// The last commit's conntrack cut failed: old connections may still pass until a later
    /// sync cuts them (it then looks at the whole table).
    public var conntrackCutOwed: Bool = false
    public var instances: Int = 0
    public var localInstances: Int = 0
    public var groups: Int = 0
    public var chains: Int = 0
    public var sets: Int = 0
    /// The change log's state, when the daemon follows one (PostgreSQL store); nil otherwise.
    public var changeLog: ChangeLogStatus?
    /// The conntrack index's figures, when revocation uses one; nil otherwise.
    public var conntrackIndex: ConntrackIndex.Statistics?

    public init(host: String, ready: Bool = false) {
        self.host = host
        self.ready = ready
    }

    /// The JSON body of `/v1/status` (one line; the field names are the API's, see docs/daemon.md).
    public var json: String {
        let encoder = JSONEncoder()
        // Sorted: the same bytes for the same state (the keyed container keeps no order here);
        // errors name paths ("tap/db", "/var/lib/…"): keep them readable.
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(StatusDTO(self)) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}

/// The wire form of `DaemonStatus`: snake_case names, `null` for what is not known yet (never
/// a missing key), counts nested.
struct StatusDTO: Encodable {
    struct Counts: Encodable {
        var instances, localInstances, groups, chains, sets: Int
        enum CodingKeys: String, CodingKey {
            case instances, localInstances = "local_instances", groups, chains, sets
        }
    }
    var host: String
    var ready: Bool
    var generation: UInt32?
    var lastSync: String?
    var lastSyncMs: Double?
    var lastError: String?
    var consecutiveFailedSyncs, syncs, commits, refreshesReceived, refreshesRefused, conntrackCut: Int
    var conntrackCutOwed: Bool
    var resyncs, driftRepaired, documentReloads, refreshStoreReads, refreshReadsAhead, pending: Int
    var counts: Counts
    var changeLog: ChangeLogDTO?
    var conntrackIndex: ConntrackIndexDTO?

    struct ConntrackIndexDTO: Encodable {
        var entries, addresses, events, losses, rebuilds, deleteWindows, windowResyncs: Int
        var lastRebuildMs: Double
        var fresh: Bool
        enum CodingKeys: String, CodingKey {
            case entries, addresses, events, losses, rebuilds, deleteWindows = "delete_windows", windowResyncs = "window_resyncs",
                 lastRebuildMs = "last_rebuild_ms", fresh
        }
    }

    struct ChangeLogDTO: Encodable {
        var connected: Bool
        var applied, head: Int64
        var rowsApplied, reloads, reconnects, readsAtWakeup: Int
        var lastError: String?
        var lastStep: StepDTO?
        /// The last step's phases in milliseconds: wake-up to the step's start, the log read,
        /// the drain, the position write.
        struct StepDTO: Encodable {
            var wait, read, drain, record: Double
            init(_ t: ChangeLogStatus.StepTimes) {
                func ms(_ a: UInt64, _ b: UInt64) -> Double { (Double(b &- a) / 1e3).rounded() / 1e3 }
                wait = ms(t.woken, t.started); read = ms(t.started, t.read); drain = ms(t.read, t.drained); record = ms(t.drained, t.recorded)
            }
            enum CodingKeys: String, CodingKey { case wait = "wait_ms", read = "read_ms", drain = "drain_ms", record = "record_ms" }
        }
        enum CodingKeys: String, CodingKey {
            case connected, applied, head, rowsApplied = "rows_applied", reloads, reconnects, readsAtWakeup = "reads_at_wakeup", lastError = "last_error", lastStep = "last_step"
        }
        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(connected, forKey: .connected)
            try c.encode(applied, forKey: .applied)
            try c.encode(head, forKey: .head)
            try c.encode(rowsApplied, forKey: .rowsApplied)
            try c.encode(reloads, forKey: .reloads)
            try c.encode(reconnects, forKey: .reconnects)
            try c.encode(readsAtWakeup, forKey: .readsAtWakeup)
            try c.encode(lastError, forKey: .lastError)
            try c.encode(lastStep, forKey: .lastStep)
        }
    }

    enum CodingKeys: String, CodingKey {
        case host, ready, generation, lastSync = "last_sync", lastSyncMs = "last_sync_ms", lastError = "last_error"
        case consecutiveFailedSyncs = "consecutive_failed_syncs", syncs, commits, refreshesReceived = "refreshes_received"
        case refreshesRefused = "refreshes_refused", conntrackCut = "conntrack_cut", conntrackCutOwed = "conntrack_cut_owed"
        case resyncs, driftRepaired = "drift_repaired", documentReloads = "document_reloads", refreshStoreReads = "refresh_store_reads", refreshReadsAhead = "refresh_reads_ahead", pending, counts, changeLog = "change_log", conntrackIndex = "conntrack_index"
    }

    init(_ s: DaemonStatus) {
        host = s.host
        ready = s.ready
        generation = s.generation
        lastSync = s.lastSync.map { ISO8601DateFormatter().string(from: $0) }
        // Milliseconds to the microsecond, as before (a figure for people, not a measurement).
        lastSyncMs = s.lastSyncMillis.map { ($0 * 1000).rounded() / 1000 }
        lastError = s.lastError
        consecutiveFailedSyncs = s.consecutiveFailedSyncs
        syncs = s.syncs
        commits = s.commits
        refreshesReceived = s.refreshesReceived
        refreshesRefused = s.refreshesRefused
        conntrackCut = s.conntrackCut
        conntrackCutOwed = s.conntrackCutOwed
        resyncs = s.resyncs
        driftRepaired = s.driftRepaired
        documentReloads = s.documentReloads
        refreshStoreReads = s.refreshStoreReads
        refreshReadsAhead = s.refreshReadsAhead
        pending = s.pending
        counts = Counts(instances: s.instances, localInstances: s.localInstances, groups: s.groups, chains: s.chains, sets: s.sets)
        conntrackIndex = s.conntrackIndex.map {
            ConntrackIndexDTO(entries: $0.entries, addresses: $0.addresses, events: $0.events, losses: $0.losses, rebuilds: $0.rebuilds,
                              deleteWindows: $0.deleteWindows, windowResyncs: $0.windowResyncs,
                              lastRebuildMs: (Double($0.lastRebuildNanoseconds) / 1e3).rounded() / 1e3, fresh: $0.fresh)
        }
        changeLog = s.changeLog.map {
            ChangeLogDTO(connected: $0.connected, applied: $0.applied, head: $0.head, rowsApplied: $0.rowsApplied,
                         reloads: $0.reloads, reconnects: $0.reconnects, readsAtWakeup: $0.readsAtWakeup, lastError: $0.lastError, lastStep: $0.lastStep.map(ChangeLogDTO.StepDTO.init))
        }
    }

    /// Explicit so that unknown values are `null` (the synthesized form would drop the keys).
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(host, forKey: .host)
        try c.encode(ready, forKey: .ready)
        try c.encode(generation, forKey: .generation)
        try c.encode(lastSync, forKey: .lastSync)
        try c.encode(lastSyncMs, forKey: .lastSyncMs)
        try c.encode(lastError, forKey: .lastError)
        try c.encode(consecutiveFailedSyncs, forKey: .consecutiveFailedSyncs)
        try c.encode(syncs, forKey: .syncs)
        try c.encode(commits, forKey: .commits)
        try c.encode(refreshesReceived, forKey: .refreshesReceived)
        try c.encode(refreshesRefused, forKey: .refreshesRefused)
        try c.encode(conntrackCut, forKey: .conntrackCut)
        try c.encode(conntrackCutOwed, forKey: .conntrackCutOwed)
        try c.encode(resyncs, forKey: .resyncs)
        try c.encode(driftRepaired, forKey: .driftRepaired)
        try c.encode(documentReloads, forKey: .documentReloads)
        try c.encode(refreshStoreReads, forKey: .refreshStoreReads)
        try c.encode(refreshReadsAhead, forKey: .refreshReadsAhead)
        try c.encode(pending, forKey: .pending)
        try c.encode(counts, forKey: .counts)
        try c.encode(changeLog, forKey: .changeLog)
        try c.encode(conntrackIndex, forKey: .conntrackIndex)
    }
}

/// The daemon's swift-metrics instruments, exported by swift-prometheus (`GET /metrics`), and
/// the gauges read from the status at exposition time.
final class DaemonMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let syncTimer: Metrics.Timer
    let opsApplied: Metrics.Counter
    let commits: Metrics.Counter
    let errors: Metrics.Counter
    let resyncs: Metrics.Counter
    let driftRepaired: Metrics.Counter
    let refreshCalls: Metrics.Counter
    let lastDrainItems: Metrics.Gauge
    let conntrackCut: Metrics.Counter
    let conntrackTimer: Metrics.Timer

    init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        // 0.25 ms – 5 s: a membership delta commits in well under a millisecond, a whole-host
        // converge at host-1k in ~150 ms.
        factory.defaultDurationHistogramBuckets = [.microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
                                                   .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
                                                   .milliseconds(500), .seconds(1), .seconds(5)]
        syncTimer = Metrics.Timer(label: "rampart_sync_duration_seconds", factory: factory)
        opsApplied = Metrics.Counter(label: "rampart_ops_applied_total", factory: factory)
        commits = Metrics.Counter(label: "rampart_commits_total", factory: factory)
        errors = Metrics.Counter(label: "rampart_errors_total", factory: factory)
        resyncs = Metrics.Counter(label: "rampart_resyncs_total", factory: factory)
        driftRepaired = Metrics.Counter(label: "rampart_drift_repaired_total", factory: factory)
        refreshCalls = Metrics.Counter(label: "rampart_refresh_calls_total", factory: factory)
        lastDrainItems = Metrics.Gauge(label: "rampart_last_drain_items", factory: factory)
        conntrackCut = Metrics.Counter(label: "rampart_conntrack_cut_total", factory: factory)
        conntrackTimer = Metrics.Timer(label: "rampart_conntrack_cut_duration_seconds", factory: factory)
    }

    /// Prometheus text exposition: the instruments, then the values read from `status`.
    func text(_ st: DaemonStatus) -> String {
        var s = registry.emitToString()
        /// One metric family: its type line, then its samples (labels → value).
        func family(_ name: String, _ type: String, _ samples: [(labels: String, value: Int64)]) {
            s += "# TYPE \(name) \(type)\n"
            for (labels, value) in samples { s += "\(name)\(labels) \(value)\n" }
        }
        func gauge(_ name: String, _ value: Int64) { family(name, "gauge", [("", value)]) }
        func counter(_ name: String, _ value: Int) { family(name, "counter", [("", Int64(value))]) }
        gauge("rampart_ready", st.ready ? 1 : 0)
        gauge("rampart_pending_refreshes", Int64(st.pending))
        gauge("rampart_consecutive_failed_syncs", Int64(st.consecutiveFailedSyncs))
        counter("rampart_refreshes_refused_total", st.refreshesRefused)
        counter("rampart_document_reloads_total", st.documentReloads)
        family("rampart_refresh_reads_total", "counter", [(#"{answered_by="store"}"#, Int64(st.refreshStoreReads)),
                                                           (#"{answered_by="read_ahead"}"#, Int64(st.refreshReadsAhead))])
        family("rampart_instances", "gauge", [(#"{scope="local"}"#, Int64(st.localInstances)), (#"{scope="document"}"#, Int64(st.instances))])
        if let x = st.conntrackIndex {
            gauge("rampart_conntrack_index_entries", Int64(x.entries))
            gauge("rampart_conntrack_index_fresh", x.fresh ? 1 : 0)
            counter("rampart_conntrack_index_events_total", x.events)
            counter("rampart_conntrack_index_losses_total", x.losses)
            counter("rampart_conntrack_index_rebuilds_total", x.rebuilds)
            counter("rampart_conntrack_index_delete_windows_total", x.deleteWindows)
            counter("rampart_conntrack_index_window_resyncs_total", x.windowResyncs)
        }
        if let c = st.changeLog {
            gauge("rampart_store_connected", c.connected ? 1 : 0)
            gauge("rampart_changelog_applied_sequence", c.applied)
            gauge("rampart_changelog_head_sequence", c.head)
            counter("rampart_changelog_rows_applied_total", c.rowsApplied)
            counter("rampart_changelog_reloads_total", c.reloads)
            counter("rampart_store_reconnects_total", c.reconnects)
            counter("rampart_changelog_reads_at_wakeup_total", c.readsAtWakeup)
        }
        return s
    }
}
