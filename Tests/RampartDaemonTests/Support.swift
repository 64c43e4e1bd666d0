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
