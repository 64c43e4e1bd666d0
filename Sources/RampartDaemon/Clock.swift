import Dispatch
import Foundation

/// The time the reconciler schedules by: resync intervals and retry backoff. Injected so that
/// tests advance it by hand instead of sleeping (`ManualClock` in the tests); `SystemClock`
/// in `rampartd`.
///
/// Times are seconds on a monotonic scale with an arbitrary origin.
public protocol DaemonClock: Sendable {
    /// Now, in seconds.
    func now() -> Double
    /// Waits on `condition`, which the caller holds locked (it is unlocked while waiting), until
    /// the condition is signalled or the clock reaches `deadline`. It may return early; callers
    /// check their predicate and the time again.
    func wait(on condition: NSCondition, until deadline: Double)
}

/// The machine's monotonic clock (`DispatchTime`, unaffected by changes of the wall clock).
public struct SystemClock: DaemonClock {
    public init() {}

    public func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    public func wait(on condition: NSCondition, until deadline: Double) {
        let left = deadline - now()
        guard left > 0 else { return }
        _ = condition.wait(until: Date(timeIntervalSinceNow: left))
    }
}
