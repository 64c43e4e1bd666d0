import Foundation

/// True for the first caller of `claim()` only, from any thread: makes `destroy()` idempotent.
final class OnceFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var claimed = false

    func claim() -> Bool {
        lock.lock(); defer { lock.unlock() }
        defer { claimed = true }
        return !claimed
    }
}
