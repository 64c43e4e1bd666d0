import Foundation

/// A thread that runs one body to its end and can be waited for.
public final class WorkerThread: Sendable {
    private let done = DispatchSemaphore(value: 0)

    /// Starts `body` on a new thread called `name`.
    public init(name: String, _ body: @escaping @Sendable () -> Void) {
        let t = Thread { [done] in
            body()
            done.signal()
        }
        t.name = name
        t.start()
    }

    /// Waits until the body has returned (at once if it had); may be called more than once.
    public func join() {
        done.wait()
        done.signal()
    }
}

/// The loop thread of a component whose calls block (the daemon's change-log follower, the
/// relay's reader) and the flag that ends it. The flag lives under the component's own
/// condition, so that its loop sees a stop in the same critical sections as the rest of its
/// state, and `stop` wakes it with that condition.
public final class LoopThread: @unchecked Sendable {
    private let condition: NSCondition
    // Guarded by `condition`:
    private var thread: WorkerThread?
    private var stopRequested = false

    public init(condition: NSCondition) { self.condition = condition }

    /// Whether `stop` was called; read with the condition held.
    public var stopping: Bool { stopRequested }

    /// Starts `body` on a thread called `name` (once; later calls do nothing).
    public func start(name: String, _ body: @escaping @Sendable () -> Void) {
        condition.withLock {
            guard thread == nil else { return }
            thread = WorkerThread(name: name, body)
        }
    }

    /// Asks the loop to end, wakes it (broadcast on the condition) and waits for the body to return.
    public func stop() {
        let t: WorkerThread? = condition.withLock {
            stopRequested = true
            condition.broadcast()
            return thread
        }
        t?.join()
    }
}
