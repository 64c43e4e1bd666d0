import Foundation
import RampartConntrack
import RampartCore
import RampartDaemon
import RampartStore

/// A clock the test moves by hand: the reconciler's resync interval and retry backoff pass
/// without sleeping. `wait` blocks until signalled or until `advance` reaches the deadline.
final class ManualClock: DaemonClock, @unchecked Sendable {
    private let lock = NSLock()
    private var time: Double = 0
    private var nextID = 0
    /// Threads waiting now, with their deadlines.
    private var sleepers: [Int: (condition: NSCondition, deadline: Double)] = [:]

    func now() -> Double { lock.withLock { time } }

    func wait(on condition: NSCondition, until deadline: Double) {
        // The caller holds `condition`: `advance` cannot broadcast before we are waiting on it.
        let id: Int? = lock.withLock {
            guard time < deadline else { return nil }
            nextID += 1
            sleepers[nextID] = (condition, deadline)
            return nextID
        }
        guard let id else { return }
        condition.wait()
        lock.withLock { sleepers[id] = nil }
    }

    /// Moves the time to `t` (if later) and wakes every waiter to look at it.
    func advance(to t: Double) {
        let conditions = lock.withLock {
            time = max(time, t)
            return sleepers.values.map(\.condition)
        }
        for c in conditions {
            c.lock()
            c.broadcast()
            c.unlock()
        }
    }

    func advance(by s: Double) { advance(to: now() + s) }

    /// The deadlines of the threads waiting now.
    var deadlines: [Double] { lock.withLock { sleepers.values.map(\.deadline) } }

    /// Waits (wall time, polling, at most `seconds`) until a thread waits for a deadline
    /// `deadline` (± 1 µs): the reconciler is idle until then. Returns whether it happened.
    func waitForSleeper(at deadline: Double, seconds: Double = 5) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if deadlines.contains(where: { abs($0 - deadline) < 1e-6 }) { return true }
            Thread.sleep(forTimeInterval: 0.002)
        }
        return false
    }
}

/// A classified failure a fake backend throws.
struct FakeBackendFailure: BackendFailure {
    var kind: BackendFailureKind
    var description: String { "injected \(kind) failure" }
}

/// An in-memory `FirewallBackend`: "the kernel" is an IR. It can fail (every call, or the next
/// commit), be changed behind the daemon's back, and converge without a Plan as iptables does.
final class MemoryBackend: FirewallBackend, @unchecked Sendable {
    private let lock = NSLock()
    private var _kernel: RulesetIR?
    private var _generation: UInt32 = 1
    private var _othersChanged = false
    private var _failAll: BackendFailureKind?
    private var _failNextCommit: BackendFailureKind?
    private var _commits = 0, _converges = 0
    /// Converge without a Plan or the previous IR (as the iptables backend does).
    let planless: Bool

    init(planless: Bool = false) { self.planless = planless }

    var name: String { planless ? "memory (planless)" : "memory" }
    var generation: UInt32? { lock.withLock { _generation } }
    var kernel: RulesetIR? { lock.withLock { _kernel } }
    var commits: Int { lock.withLock { _commits } }
    var converges: Int { lock.withLock { _converges } }
    var failAll: BackendFailureKind? {
        get { lock.withLock { _failAll } }
        set { lock.withLock { _failAll = newValue } }
    }
    var failNextCommit: BackendFailureKind? {
        get { lock.withLock { _failNextCommit } }
        set { lock.withLock { _failNextCommit = newValue } }
    }

    /// Someone else changes the kernel; `visible`: as a generation change would show it.
    func tamper(visible: Bool = true, _ change: (inout RulesetIR) -> Void) {
        lock.withLock {
            guard var k = _kernel else { return }
            change(&k)
            _kernel = k
            if visible { _othersChanged = true; _generation += 1 }
        }
    }

    func commit(_ plan: Plan, result: RulesetIR?) throws -> BackendChange {
        try lock.withLock {
            if let k = _failAll { throw FakeBackendFailure(kind: k) }
            if let k = _failNextCommit { _failNextCommit = nil; throw FakeBackendFailure(kind: k) }
            if _othersChanged { throw FakeBackendFailure(kind: .conflict) }
            let previous = _kernel
            _kernel = result
            _commits += 1
            _generation += 1
            return BackendChange(isEmpty: plan.isEmpty, summary: "\(plan.summary)", plan: plan, previous: previous, operations: plan.ops.count, generation: _generation)
        }
    }

    func converge(to desired: RulesetIR?) throws -> BackendChange {
        try lock.withLock {
            if let k = _failAll { throw FakeBackendFailure(kind: k) }
            let previous = _kernel
            let plan = diff(from: previous, to: desired)
            _kernel = desired
            _converges += 1
            _othersChanged = false
            if !plan.isEmpty { _generation += 1 }
            return BackendChange(isEmpty: plan.isEmpty, summary: "\(plan.summary)", plan: planless ? nil : plan, previous: planless ? nil : previous,
                                 operations: plan.ops.count, generation: _generation)
        }
    }

    func pending(to desired: RulesetIR?) throws -> BackendChange {
        let plan = diff(from: kernel, to: desired)
        return BackendChange(isEmpty: plan.isEmpty, summary: "\(plan.summary)", plan: plan, operations: plan.ops.count)
    }

    func changedByOthers() throws -> Bool {
        try lock.withLock {
            if let k = _failAll { throw FakeBackendFailure(kind: k) }
            return _othersChanged
        }
    }

    func invalidate() {}

    func enforcedInstances() throws -> Int {
        kernel?.chains.keys.filter { $0.hasPrefix("out-") }.count ?? 0
    }

    func enforcement() throws -> EnforcementReport? { nil }
    func warnings() -> [String] { [] }
}

/// A cutter that records what it was asked to cut, and can fail.
final class RecordingCutter: ConnectionCutter, @unchecked Sendable {
    private let lock = NSLock()
    private var _scopes: [Revocation.Scope] = []
    private var _fail = false
    var scopes: [Revocation.Scope] { lock.withLock { _scopes } }
    var fail: Bool {
        get { lock.withLock { _fail } }
        set { lock.withLock { _fail = newValue } }
    }

    func cut(ir: RulesetIR, scope: Revocation.Scope, departed: Set<IPAddress>, local: (any LocalInstances)?) throws -> Revocation.Report {
        try lock.withLock {
            if _fail { throw FakeBackendFailure(kind: .unknown) }
            _scopes.append(scope)
            var r = Revocation.Report()
            r.scope = scope
            return r
        }
    }
}

/// A store that forwards to a real one and can go down: `blockReadingMembers(of:)` holds the
/// reader of one group's members until released (so that a test can line up a drain), and
/// `goDownAtMembers(of:)` makes that read and every read after it fail as unavailable until
/// `down` is cleared. The verbs are the inner store's own (a test changes it directly).
final class FlakyStore: Store, @unchecked Sendable {
    let inner: SQLiteStore
    private let lock = NSLock()
    private var _down = false
    private var failAt: String?
    private var blockAt: String?
    private let entered = DispatchSemaphore(value: 0)
    private let released = DispatchSemaphore(value: 0)

    init(_ inner: SQLiteStore) { self.inner = inner }

    var down: Bool {
        get { lock.withLock { _down } }
        set { lock.withLock { _down = newValue } }
    }
    func goDownAtMembers(of group: String) { lock.withLock { failAt = group } }
    func blockReadingMembers(of group: String) { lock.withLock { blockAt = group } }
    /// Waits (up to 5 s) until a reader is held by `blockReadingMembers(of:)`.
    func waitUntilBlocked() -> Bool { entered.wait(timeout: .now() + 5) == .success }
    func release() { released.signal() }

    private func read<T>(_ body: () throws(StoreError) -> T) throws(StoreError) -> T {
        if down { throw StoreError(.unavailable, "injected: the store is down") }
        return try body()
    }

    func document(forHost host: String) throws(StoreError) -> Document { try read { () throws(StoreError) in try inner.document(forHost: host) } }
    func group(_ id: String) throws(StoreError) -> Group? { try read { () throws(StoreError) in try inner.group(id) } }
    func groupExists(_ id: String) throws(StoreError) -> Bool { try read { () throws(StoreError) in try inner.groupExists(id) } }
    func instance(_ id: String) throws(StoreError) -> Instance? { try read { () throws(StoreError) in try inner.instance(id) } }
    func memberRecords(of group: String) throws(StoreError) -> [String: Instance] {
        let (block, fail) = lock.withLock { () -> (Bool, Bool) in
            let b = blockAt == group, f = failAt == group
            if b { blockAt = nil }
            if f { failAt = nil; _down = true }
            return (b, f)
        }
        if block {
            entered.signal()
            released.wait()
        }
        if fail { throw StoreError(.unavailable, "injected: the store went down reading \(group)'s members") }
        return try read { () throws(StoreError) in try inner.memberRecords(of: group) }
    }
    func hosts() throws(StoreError) -> [String] { try read { () throws(StoreError) in try inner.hosts() } }
    func knowsHost(_ host: String) throws(StoreError) -> Bool { try read { () throws(StoreError) in try inner.knowsHost(host) } }
    func exportDocument(forHost host: String) throws(StoreError) -> Document { try read { () throws(StoreError) in try inner.exportDocument(forHost: host) } }
    func hostsForMembersRefresh(_ group: String) throws(StoreError) -> [String] { try read { () throws(StoreError) in try inner.hostsForMembersRefresh(group) } }
    func hostsForRulesRefresh(_ group: String) throws(StoreError) -> [String] { try read { () throws(StoreError) in try inner.hostsForRulesRefresh(group) } }
    func createGroup(_ id: String, description: String?) throws(StoreError) -> [Delivery] { try inner.createGroup(id, description: description) }
    func deleteGroup(_ id: String) throws(StoreError) -> [Delivery] { try inner.deleteGroup(id) }
    func authorize(group: String, rule: Rule) throws(StoreError) -> [Delivery] { try inner.authorize(group: group, rule: rule) }
    func revoke(group: String, rule: Rule?, id: String?) throws(StoreError) -> [Delivery] { try inner.revoke(group: group, rule: rule, id: id) }
    func addInstance(_ id: String, _ instance: Instance) throws(StoreError) -> [Delivery] { try inner.addInstance(id, instance) }
    func removeInstance(_ id: String) throws(StoreError) -> [Delivery] { try inner.removeInstance(id) }
    func setGroups(instance id: String, groups: [String]) throws(StoreError) -> [Delivery] { try inner.setGroups(instance: id, groups: groups) }
    func importDocument(_ document: Document) throws(StoreError) -> [Delivery] { try inner.importDocument(document) }
    func setGuardedPrefixes(host: String, _ prefixes: [String]) throws(StoreError) -> [Delivery] { try inner.setGuardedPrefixes(host: host, prefixes) }
}
