import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Names the calling thread for the kernel (`comm`: what `top -H`, `ps -L` and `perf` show), cut
/// to the kernel's 15 bytes; give a name of at most 15 ASCII bytes.
///
/// Why: corelibs Foundation's `Thread.name` reaches neither `comm` nor `Thread.current.name` on
/// Linux (both read the process name), and `pthread_setname_np` and `prctl` do not import into
/// Swift; the kernel takes the name written to the thread's own `comm` file. Best effort: a
/// thread whose name cannot be set keeps the process's, and does its work all the same.
public func nameThisThreadForKernel(_ name: String) {
    let bytes = Array(name.utf8.prefix(15))
    guard let fd = try? syscall("open(/proc/thread-self/comm)", { open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC) }) else { return }
    defer { close(fd) }
    _ = try? syscall("write(/proc/thread-self/comm)") { bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
}

/// A thread that runs one body to its end and can be waited for.
public final class WorkerThread: Sendable {
    private let done = DispatchSemaphore(value: 0)

    /// Starts `body` on a new thread called `name` (for the kernel too: `nameThisThreadForKernel`).
    public init(name: String, _ body: @escaping @Sendable () -> Void) {
        let t = Thread { [done] in
            nameThisThreadForKernel(name)
            body()
            done.signal()
        }
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
