import Foundation
import RampartCore
import RampartDaemon
import RampartNetlink
import RampartStore
import Testing

/// The fake kernel, shared with the daemon's worker thread (the tests read it only while idle).
final class FakeKernel: @unchecked Sendable {
    let nft = RecordingNFTables()
}

func tempDir(_ tag: String) -> String {
    let p = FileManager.default.temporaryDirectory.appendingPathComponent("rampartd-\(tag)-\(UUID().uuidString.prefix(8))").path
    try? FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
    return p
}

func ip(_ s: String) -> IPAddress { IPAddress(s)! }

func rule(_ json: String, _ group: String, refs: [String] = []) throws -> RampartCore.Rule {
    try RulesCodec.parseRule(json, group: group, references: refs)
}

/// Runs `body(i)` for i in 0..<n, each on a thread of its own, and returns the results in order.
func runOnThreads<T: Sendable>(_ n: Int, _ body: @escaping @Sendable (Int) -> T) -> [T] {
    let box = ResultBox<T>(n)
    let group = DispatchGroup()
    for i in 0..<n {
        group.enter()
        let t = Thread {
            let r = body(i)
            box.lock.lock(); box.results[i] = r; box.lock.unlock()
            group.leave()
        }
        t.start()
    }
    group.wait()
    return box.results.map { $0! }
}

final class ResultBox<T>: @unchecked Sendable {
    var results: [T?]
    let lock = NSLock()
    init(_ n: Int) { results = Array(repeating: nil, count: n) }
}
