import Foundation
import RampartSystem
import Testing

/// Threads named for the kernel: what `top -H`, `ps -L` and `perf` show.
@Suite("Thread names reach the kernel") struct ThreadNameTests {
    static func comm() -> String {
        (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8))?.trimmingCharacters(in: .newlines) ?? "?"
    }

    @Test func aWorkerThreadCarriesItsNameCutTo15Bytes() {
        let seen = NSLock(), names = Box()
        for name in ["rampartd-log", "a-name-longer-than-fifteen"] {
            let t = WorkerThread(name: name) { seen.withLock { names.value.append(Self.comm()) } }
            t.join()
        }
        #expect(names.value == ["rampartd-log", "a-name-longer-t"])
        // The caller's own name is untouched.
        #expect(Self.comm() != "a-name-longer-t")
    }

    final class Box: @unchecked Sendable { var value: [String] = [] }
}
