import Foundation
import RampartCore
import RampartNetlink
import RampartSystem

/// The conntrack entries of one network namespace, kept in user space by address and fed by
/// ctnetlink events, so that a revocation finds the entries of the affected addresses without
/// asking the kernel to walk its whole conntrack hash (30–50 ms per walk at 100,000 entries;
/// docs/conntrack.md).
///
/// How it is built: subscribe first (`NFNLGRP_CONNTRACK_NEW` and `_DESTROY`, a 32 MiB forced
/// receive queue), then one whole dump; the events queued meanwhile are applied after the dump,
/// in order. A destroy removes an entry only if its id matches the indexed one (a stale destroy
/// cannot remove a newer connection with the same tuple), so a destroy that raced the dump wins
/// over the dumped entry, and a new entry created during the dump is added either way. `UPDATE`
/// events are not needed: the reply tuple (after NAT) is final when an entry is confirmed, which
/// is when its NEW event is sent.
///
/// Kept by a thread of its own, which waits on the socket and applies events as they come. A
/// lookup first applies, on the caller's thread and under the index's lock, every event already
/// queued: an entry confirmed before the lookup is in its answer, whatever the thread's lag.
///
/// Failure modes: when the kernel drops events (ENOBUFS: the receive queue overflowed) or the
/// index would exceed `limit` entries, the index is *stale*: lookups answer nil (the caller falls
/// back to dumping, `Revocation.run` does) while the thread re-dumps (the subscription is kept)
/// and applies what was queued meanwhile. A failed re-dump is retried every second.
///
/// Memory: every entry is held once (its tuples, status, id, zone, mark) plus a slot number in
/// one set per distinct address it involves (original source and destination, reply source,
/// and a related connection's master's ends); ~0.6 KB per entry measured at 100,000 entries
/// (`rampart-bench conntrack`, docs/conntrack.md). It never holds more than `limit` entries; the
/// kernel's table itself is bounded by `nf_conntrack_max`.
///
/// How a daemon is meant to own it: start one per enforced network namespace when the daemon
/// starts (`try ConntrackIndex.start(namespace:)`: subscribes, dumps once, then keeps itself
/// current on its own thread), keep it for the daemon's life, pass it to every
/// `Revocation.run(…, index:)` after a commit, export `statistics` (entries, events, losses,
/// rebuilds) in the status and metrics, and `stop()` it at shutdown. Nothing else: a stale
/// index makes the revocation dump as before, so correctness never depends on it. It sees only
/// the entries of its own namespace (the socket lives there). The CLI (`rampart apply`, one
/// shot) has nothing to gain from it: building it costs one whole dump.
public final class ConntrackIndex: @unchecked Sendable {
    /// What the index has done so far.
    public struct Statistics: Hashable, Sendable {
        /// Entries held now.
        public var entries = 0
        /// Distinct addresses indexed now.
        public var addresses = 0
        /// Events applied since the start.
        public var events = 0
        /// Times events were lost (ENOBUFS) or the limit was passed, each followed by a rebuild.
        public var losses = 0
        /// Whole dumps taken (the first one included).
        public var rebuilds = 0
        /// How long the last whole dump and catch-up took.
        public var lastRebuildNanoseconds: UInt64 = 0
        /// Rampart's own deletes made with the DESTROY group left (`deleting`), since the start.
        public var deleteWindows = 0
        /// Re-dumps taken to drop entries that may have ended unseen during such deletes (the
        /// lookups kept answering meanwhile).
        public var windowResyncs = 0
        public var fresh = false
        public init() {}
    }

    public let namespace: NetworkNamespace
    /// The most entries held; past it the index goes stale (lookups nil) until a rebuild fits.
    public let limit: Int

    private let lock = NSLock()
    // Guarded by `lock`:
    private let events: ConntrackEvents
    private var table = Table()
    private var fresh = false
    private var stats = Statistics()
    private var stopped = false
    private var lastError: NetlinkError?
    /// Deletes made with the DESTROY group left since the last whole dump: entries that ended
    /// on their own meanwhile may still be held (see `deleting`).
    private var unseenWindows = 0
    private var lastRebuildAt: UInt64 = 0
    /// While a resync's dump runs: every event applied to `table`, to be replayed onto the dump
    /// (nil otherwise).
    private var recorded: [ConntrackEvent]?
    /// Entries Rampart deleted (`deleting`) not yet dropped from the table: the next catch-up
    /// drops them before it applies any event queued since, off the revocation's path.
    private var deletedByRampart: [[ConntrackEntry]] = []
    /// How long after a whole dump entries possibly ended unseen are dropped by another one.
    public let windowResyncSeconds: Double
    // Used by whoever rebuilds: `start` before the thread exists, then the thread only.
    private let dumper: ConntrackConnection
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)

    /// Subscribes to the conntrack events of `namespace`, dumps its table once, and keeps the
    /// index current on a thread of its own until `stop()`. Returns when the index is fresh.
    /// Needs CAP_NET_ADMIN (and root for the forced receive buffer). `windowResyncSeconds`: see
    /// `deleting`.
    public static func start(namespace: NetworkNamespace = .current, receiveBuffer: Int = 32 << 20,
                             limit: Int = 4_000_000, windowResyncSeconds: Double = 600) throws(NetlinkError) -> ConntrackIndex {
        // Subscribe before dumping: nothing that happens during the dump is missed.
        let events = try ConntrackEvents(namespace: namespace, groups: [.new, .destroy], receiveBuffer: receiveBuffer)
        let dumper = try ConntrackConnection(namespace: namespace)
        let index = ConntrackIndex(events: events, dumper: dumper, namespace: namespace, limit: limit,
                                   windowResyncSeconds: windowResyncSeconds)
        try index.rebuild()
        index.startThread()
        return index
    }

    /// An index over given connections, not started: tests drive it with `rebuild()` and `pump()`.
    package init(events: ConntrackEvents, dumper: ConntrackConnection, namespace: NetworkNamespace = .current, limit: Int = 4_000_000,
                 windowResyncSeconds: Double = 600) {
        self.windowResyncSeconds = windowResyncSeconds
        self.events = events
        self.dumper = dumper
        self.namespace = namespace
        self.limit = limit
    }

    /// Whether lookups answer now (built, and no event lost since).
    public var isFresh: Bool { lock.withLock { fresh } }

    public var statistics: Statistics {
        lock.withLock {
            var s = stats
            s.entries = table.count
            s.addresses = table.byAddress.count
            s.fresh = fresh
            return s
        }
    }

    /// Why the last rebuild failed, if it did.
    public var lastFailure: NetlinkError? { lock.withLock { lastError } }

    /// Stops the thread (within ~0.1 s) and leaves the event groups; lookups answer nil from
    /// then on. The thread holds the index: an owner must call this, and the sockets are closed
    /// when the last reference goes.
    public func stop() {
        let running: Bool = lock.withLock {
            let was = thread != nil && !stopped
            stopped = true
            return was
        }
        if running { finished.wait() }
        // No more events queued in the kernel for an index nobody reads.
        lock.withLock { events.unsubscribe(); fresh = false }
    }

    // MARK: lookups

    /// The entries with one of `addresses` at one end (original source or destination, the
    /// reply's source: the instance behind a destination NAT, or a related connection's master's
    /// ends), as of this call; nil while the index is stale or not built (then dump instead).
    public func entries(involving addresses: Set<IPAddress>) -> [ConntrackEntry]? {
        lock.withLock { () -> [ConntrackEntry]? in
            guard catchUp() else { return nil }
            let found = addresses.compactMap { table.byAddress[$0] }
            // One address with entries (the common cut: one instance's one family): its slots
            // as they are, without building their union.
            if found.count == 1 { return found[0].compactMap { table.slots[Int($0)] } }
            var slots = Set<Int32>()
            for s in found { slots.formUnion(s) }
            return slots.compactMap { table.slots[Int($0)] }
        }
    }

    /// Every entry held, as of this call; nil while stale.
    public func allEntries() -> [ConntrackEntry]? {
        lock.withLock { () -> [ConntrackEntry]? in
            guard catchUp() else { return nil }
            return table.slots.compactMap { $0 }
        }
    }

    // MARK: Rampart's own deletes

    /// Deletes `entries` with `delete` (the caller's ctnetlink connection) while the index's
    /// socket is out of the DESTROY group, then removes them from the index itself.
    ///
    /// Why: while any socket listens to DESTROY, the kernel builds an event for every deleted
    /// entry, in the deleting `sendto`: most of a delete's cost (deleting 1,000 entries, 20,000
    /// in the table: 2.9 ms with a DESTROY listener, 1.1 ms with the index out of the group;
    /// docs/conntrack.md). Whether anyone listens is one bit per netlink group for the whole
    /// host, not per namespace: a DESTROY listener in any other namespace (another index,
    /// `conntrack -E`, conntrackd) brings the cost back, for every namespace. The entries
    /// Rampart deletes need no event: the index knows them. What it cannot see meanwhile are
    /// entries that end on their own during the deletes (a millisecond or so): they stay held
    /// until the next whole dump. That costs memory, never correctness: a held entry that no
    /// longer exists is deleted with ENOENT ("already gone") if a revocation meets it (and then
    /// dropped), a new connection with its tuple replaces it (NEW events are still followed),
    /// and a delete names the entry's id, so it cannot remove a newer connection. The index
    /// re-dumps (`resync`, lookups answering meanwhile) `windowResyncSeconds` after its last
    /// whole dump once such deletes happened.
    ///
    /// If `delete` throws (a failure other than "already gone"), what was deleted is unknown:
    /// the index goes stale and rebuilds.
    public func deleting(_ entries: [ConntrackEntry],
                         _ delete: ([ConntrackEntry]) throws(NetlinkError) -> ConntrackDeletion) throws(NetlinkError) -> ConntrackDeletion {
        // Apply what is queued (older than these deletes), then leave the group.
        let left = lock.withLock { () -> Bool in
            _ = catchUp()
            return events.leaveDestroy()
        }
        let result: ConntrackDeletion
        do {
            result = try delete(entries)
        } catch {
            lock.withLock {
                if left { do throws(NetlinkError) { try events.rejoinDestroy() } catch { lastError = error } }
                fresh = false
                stats.losses += 1
            }
            throw error
        }
        lock.withLock {
            if left {
                do throws(NetlinkError) { try events.rejoinDestroy() } catch {
                    // Not listening to DESTROY any more: stale until a rebuild subscribes again.
                    lastError = error
                    fresh = false
                    stats.losses += 1
                }
                unseenWindows += 1
                stats.deleteWindows += 1
            }
            // Every entry was deleted or already gone: the next catch-up drops each (only with
            // its own id). Dropping 1,000 here cost the revocation ~0.8 ms of hashing.
            deletedByRampart.append(entries)
        }
        return result
    }

    // MARK: upkeep

    /// Applies one event to the table (lock held), recording it for a resync's dump if one is
    /// running. False if a new entry would pass `limit`.
    private func apply(_ e: ConntrackEvent) -> Bool {
        recorded?.append(e)
        return table.apply(e, limit: limit)
    }

    /// Applies every queued event (lock held). False if the index is stale, or became so.
    private func catchUp() -> Bool {
        guard fresh else { return false }
        // Before the events queued since they were deleted: a NEW event of a later connection
        // with the same tuple (even the same id) is applied after the drop, so it stays.
        for batch in deletedByRampart {
            for e in batch { _ = apply(ConntrackEvent(.destroy, e)) }
        }
        deletedByRampart = []
        do {
            var overflow = false
            let r = try events.drain { (e) throws(NetlinkError) in
                stats.events += 1
                if !apply(e) { overflow = true }
            }
            if r == .eventsLost || overflow {
                fresh = false
                stats.losses += 1
            }
        } catch {
            lastError = error
            fresh = false
            stats.losses += 1
        }
        return fresh
    }

    /// One turn of the thread's work: applies what is queued, or rebuilds when stale. Returns
    /// whether the index is fresh afterwards.
    @discardableResult
    package func pump() -> Bool {
        if lock.withLock({ catchUp() }) { return true }
        do { try rebuild() } catch { lock.withLock { lastError = error } }
        return isFresh
    }

    /// Replaces the table by a whole dump while lookups keep answering from the current one:
    /// drops the entries that may have ended unseen during Rampart's own deletes (`deleting`).
    /// The events applied while the dump runs (and the entries `deleting` drops meanwhile) are
    /// recorded and replayed onto the dump, in order, before it replaces the table; replaying
    /// one the dump already reflects changes nothing (a NEW replaces the same entry, a DESTROY
    /// removes only its own id). A stale index, a dump that fails, or events lost meanwhile
    /// leave the table as it was (the thread rebuilds a stale index as usual).
    /// `afterDump` runs between the dump and the swap (tests: changes the dump cannot have seen).
    package func resync(afterDump: () -> Void = {}) throws(NetlinkError) {
        let start = DispatchTime.now().uptimeNanoseconds
        let windowsBefore: Int? = lock.withLock {
            guard catchUp() else { return nil }
            recorded = []
            return unseenWindows
        }
        guard let windowsBefore else { return }
        var built = Table()
        var overflow = false
        let limit = limit
        do {
            try dumper.dump(.all) { (e) throws(NetlinkError) in
                if !built.apply(ConntrackEvent(.new, e), limit: limit) { overflow = true }
            }
        } catch {
            lock.withLock { recorded = nil }
            throw error
        }
        afterDump()
        lock.withLock {
            _ = catchUp()
            let replay = recorded ?? []
            recorded = nil
            guard fresh, !overflow else { return }
            for e in replay where !built.apply(e, limit: limit) { return }
            table = built
            // Windows that ended after the dump began may have hidden entries from it too.
            unseenWindows -= windowsBefore
            lastRebuildAt = DispatchTime.now().uptimeNanoseconds
            stats.windowResyncs += 1
            stats.lastRebuildNanoseconds = lastRebuildAt - start
        }
    }

    /// Takes a whole dump (outside the lock: lookups answer nil meanwhile) and applies the events
    /// queued since the subscription or the loss. Throws what the dump threw (the index stays
    /// stale).
    package func rebuild() throws(NetlinkError) {
        let start = DispatchTime.now().uptimeNanoseconds
        lock.lock()
        fresh = false
        // Empty the queue first, discarding: what it holds is older than the dump. This also
        // matters for noticing losses: after an overflow the kernel reports ENOBUFS once and then
        // drops silently until the queue has been emptied (NETLINK_S_CONGESTED), so an event
        // dropped during the dump would go unnoticed if the queue were not emptied before it.
        var failure: NetlinkError?
        do {
            for _ in 0..<1_000_000 {
                if try events.receive(wait: false, { _ in }) == .nothing { break }
            }
        } catch { failure = error }
        lock.unlock()
        if let failure { throw failure }
        var built = Table()
        var overflow = false
        let limit = limit
        try dumper.dump(.all) { (e) throws(NetlinkError) in
            if !built.apply(ConntrackEvent(.new, e), limit: limit) { overflow = true }
        }
        lock.withLock {
            table = built
            deletedByRampart = []   // the dump is newer than them
            stats.rebuilds += 1
            unseenWindows = 0
            lastRebuildAt = DispatchTime.now().uptimeNanoseconds
            if overflow {
                stats.losses += 1
                return
            }
            self.fresh = true
            _ = catchUp()
            stats.lastRebuildNanoseconds = DispatchTime.now().uptimeNanoseconds - start
        }
    }

    private func startThread() {
        let t = Thread { [self] in
            nameThisThreadForKernel("rampartd-ct")
            var failedAt: UInt64?
            while !lock.withLock({ stopped }) {
                if !isFresh {
                    // Stale: re-dump, at most once a second after a failure.
                    if let f = failedAt, DispatchTime.now().uptimeNanoseconds - f < 1_000_000_000 {
                        _ = events.wait(milliseconds: 100)
                        continue
                    }
                    if !pump() { failedAt = DispatchTime.now().uptimeNanoseconds } else { failedAt = nil }
                    continue
                }
                // Only waits for readability: the socket is read under the lock.
                _ = events.wait(milliseconds: 100)
                let resyncDue = lock.withLock { () -> Bool in
                    _ = catchUp()
                    let due = Double(DispatchTime.now().uptimeNanoseconds &- lastRebuildAt) / 1e9 >= windowResyncSeconds
                    return unseenWindows > 0 && due
                }
                if resyncDue {
                    // Entries may have ended unseen during Rampart's own deletes: a whole dump
                    // drops them, lookups answering from the current table meanwhile. A failed
                    // one is tried again a second later (lastRebuildAt moves on).
                    do throws(NetlinkError) { try resync() } catch {
                        lock.withLock {
                            lastError = error
                            lastRebuildAt = DispatchTime.now().uptimeNanoseconds &- UInt64(max(0, windowResyncSeconds - 1) * 1e9)
                        }
                    }
                }
            }
            finished.signal()
        }
        thread = t
        t.start()
    }
}

/// The entries and the address index. Slots keep each entry once; the address sets hold slot
/// numbers (4 bytes each), not entries.
struct Table {
    struct Key: Hashable {
        var original: ConntrackTuple
        var zone: UInt16
    }
    var slots: [ConntrackEntry?] = []
    var free: [Int32] = []
    var slotOf: [Key: Int32] = [:]
    var byAddress: [IPAddress: Set<Int32>] = [:]

    var count: Int { slotOf.count }

    static func addresses(_ e: ConntrackEntry) -> [IPAddress] {
        let f = e.original.family
        var out = [IPAddress(e.original.source, f), IPAddress(e.original.destination, f)]
        if let r = e.reply { out.append(IPAddress(r.source, f)) }
        if let m = e.master { out.append(IPAddress(m.source, f)); out.append(IPAddress(m.destination, f)) }
        var unique: [IPAddress] = []
        for a in out where !unique.contains(a) { unique.append(a) }
        return unique
    }

    /// Applies one event; false if a new entry would pass `limit` (it is not added).
    mutating func apply(_ event: ConntrackEvent, limit: Int) -> Bool {
        let e = event.entry
        let key = Key(original: e.original, zone: e.zone)
        switch event.kind {
        case .new, .update:
            if let s = slotOf[key] {
                // The same tuple again: a newer entry (or an update): replace.
                unlink(s)
                slots[Int(s)] = e
                link(s, e)
                return true
            }
            guard slotOf.count < limit else { return false }
            let s: Int32
            if let f = free.popLast() {
                s = f
                slots[Int(s)] = e
            } else {
                s = Int32(slots.count)
                slots.append(e)
            }
            slotOf[key] = s
            link(s, e)
        case .destroy:
            // Only the entry with this id: a stale destroy must not remove a newer connection.
            guard let i = slotOf.index(forKey: key) else { return true }
            let s = slotOf.values[i]
            guard let held = slots[Int(s)] else { return true }
            if let a = held.id, let b = e.id, a != b { return true }
            unlink(s)
            slots[Int(s)] = nil
            slotOf.remove(at: i)
            free.append(s)
        }
        return true
    }

    private mutating func link(_ s: Int32, _ e: ConntrackEntry) {
        for a in Self.addresses(e) { byAddress[a, default: []].insert(s) }
    }

    private mutating func unlink(_ s: Int32) {
        guard let e = slots[Int(s)] else { return }
        for a in Self.addresses(e) {
            guard let i = byAddress.index(forKey: a) else { continue }
            byAddress.values[i].remove(s)
            if byAddress.values[i].isEmpty { byAddress.remove(at: i) }
        }
    }
}
