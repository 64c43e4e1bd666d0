import Foundation
import RampartStore

/// What the API's threads and the reconciler's thread share, under one lock: the refresh queue,
/// the status, and who waits for readiness. The condition also wakes the reconciler when work
/// arrives or the daemon stops.
final class DaemonState: @unchecked Sendable {
    let condition = NSCondition()
    // Everything below is guarded by `condition`.
    var queue: RefreshQueue
    var status: DaemonStatus
    /// The reconciler's thread has ended.
    var finished = false
    var readyContinuations: [CheckedContinuation<Void, Never>] = []
    var onReady: [@Sendable () -> Void] = []
    var onFinished: [@Sendable () -> Void] = []

    init(host: String, capacity: Int) {
        queue = RefreshQueue(capacity: capacity)
        status = DaemonStatus(host: host)
    }

    /// Runs `body` under the lock.
    func locked<T>(_ body: (DaemonState) throws -> T) rethrows -> T {
        condition.lock()
        defer { condition.unlock() }
        return try body(self)
    }

    /// Calls the replies (outside the lock: a reply may write to a socket).
    static func answer(_ replies: [(RefreshQueue.Reply, SyncOutcome)]) {
        for (r, o) in replies { r(o) }
    }
}
