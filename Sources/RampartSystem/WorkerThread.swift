import Foundation

/// A thread that runs one body to its end and can be waited for: the loop of a component whose
/// calls block (the daemon's change-log follower, the relay's reader). The body decides when to
/// return (its owner sets a flag and wakes it); `join` waits for that.
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
