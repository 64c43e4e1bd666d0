#if canImport(Glibc)
import Glibc
#endif

/// A system call that failed: which one (with what it was called on), and the errno.
public struct SystemCallError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The call, e.g. `open(/run/netns/x)` or `setns(/run/netns/x)`.
    public var name: String
    public var errno: Errno

    public init(_ name: String, _ errno: Errno) {
        self.name = name
        self.errno = errno
    }

    public var description: String { "\(name) failed: \(errno)" }
}

/// The funnel every system call of Rampart goes through (as NIOPosix's `syscall`): runs `body`,
/// a call that returns -1 (any negative value) and sets errno on failure; retries it when it
/// was interrupted by a signal (EINTR); turns any other failure into a `SystemCallError` naming
/// the call. `name` is evaluated only on failure.
@discardableResult
public func syscall<T: BinaryInteger>(_ name: @autoclosure () -> String, _ body: () -> T) throws(SystemCallError) -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let e = Glibc.errno
        if e == EINTR { continue }
        throw SystemCallError(name(), Errno(e))
    }
}

/// The funnel for the calls that return an error number instead of setting errno
/// (`posix_spawn`, `pthread_*`): 0 is success; EINTR is retried.
public func errorNumberCall(_ name: @autoclosure () -> String, _ body: () -> Int32) throws(SystemCallError) {
    while true {
        let rc = body()
        if rc == 0 { return }
        if rc == EINTR { continue }
        throw SystemCallError(name(), Errno(rc))
    }
}
