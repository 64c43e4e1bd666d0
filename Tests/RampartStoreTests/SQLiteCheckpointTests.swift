import Foundation
import RampartCore
import RampartStore
import Testing

/// The SQLite store's WAL checkpoint off the commit path (`SQLiteStore.deferCheckpoints`): with it
/// deferred, no COMMIT checkpoints (the WAL grows past SQLite's 1,000 pages), `checkpointIfDue`
/// runs it once due and not before; without it, SQLite's own checkpoints keep the WAL near 1,000
/// pages (the control that makes the first half mean something).
@Suite("SQLite: checkpoints after the deliveries", .scratchDirectory) struct SQLiteCheckpointTests {
    /// The WAL file's length in pages.
    private func walPages(_ path: String) throws -> Int {
        let size = (try FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? Int) ?? 0
        return size / 4096
    }

    /// A verb for each of `range`: a group created and a rule authorized (two commits).
    private func verbs(_ st: SQLiteStore, _ range: Range<Int>) throws {
        for k in range {
            _ = try st.createGroup("g\(k)", description: String(repeating: "d", count: 250))
            _ = try st.authorize(group: "g\(k)", rule: try rule(#"{"protocol":"tcp","ports":"\#(k % 60000 + 1)","cidr":"10.0.0.0/8"}"#, "g\(k)"))
        }
    }

    @Test func deferredCheckpointsRunAfterTheVerbNotInItsCommit() throws {
        let path = tempStorePath()
        let st = try SQLiteStore(path: path)
        st.deferCheckpoints()
        try verbs(st, 0..<20)
        #expect(try !st.checkpointIfDue(), "due before the WAL reached 1,000 pages")
        // Until the WAL is past where SQLite would have checkpointed, nothing is due … and no
        // commit checkpointed: the file keeps growing.
        var k = 20
        while try walPages(path) < 1_300 && k < 5_000 {
            try verbs(st, k..<(k + 20))
            k += 20
        }
        let grown = try walPages(path)
        #expect(grown >= 1_300, "the WAL stayed at \(grown) pages after \(k) verbs: a commit checkpointed")
        #expect(try st.checkpointIfDue())
        #expect(try !st.checkpointIfDue(), "due again right after a checkpoint")
        // Checkpointed: the next commits write the WAL from its start again, so it stops growing.
        let after = try walPages(path)
        try verbs(st, k..<(k + 100))
        let later = try walPages(path)
        #expect(later == after, "the WAL grew from \(after) to \(later) pages after the checkpoint")
        // Nothing lost: another connection reads every group.
        let reader = try SQLiteStore(path: path, create: false)
        #expect(try reader.group("g0") != nil && reader.group("g\(k + 99)") != nil)

        // The control: without deferral, SQLite's own checkpoints keep the WAL near 1,000 pages.
        let plainPath = tempStorePath()
        let plain = try SQLiteStore(path: plainPath)
        try verbs(plain, 0..<k)
        let plainPages = try walPages(plainPath)
        #expect(plainPages < 1_100, "without deferral the WAL reached \(plainPages) pages")
    }
}
