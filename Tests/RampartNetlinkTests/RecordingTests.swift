import Testing
@testable import RampartNetlink
import RampartTestSupport

/// The in-memory fake follows the kernel's rules that higher layers rely on.
@Suite("Recording fake") struct RecordingTests {
    let table = NFTTable(family: .inet, name: T)

    @Test func recordsBatchesAndReadsBack() throws {
        let fake = RecordingNFTables()
        let batch = Batch([
            .addTable(table),
            .addChain(NFTChain(family: .inet, table: T, name: "c")),
            .addSet(NFTSetDefinition(family: .inet, table: T, name: "s", keyType: .ipv4Address)),
            .addElements(family: .inet, table: T, set: "s", elements: [NFTSetElement(key: ip4("1.1.1.1"))]),
            .addRule(rule("c", NFTMatch.address(.source, ipv6: false, inSet: "s") + [.verdict(.accept)])),
        ])
        let g = try fake.generation()
        #expect(try fake.commit(batch).generation == g + 1)
        #expect(fake.committed == [batch])
        let t = try #require(try fake.readTable(family: .inet, name: T))
        #expect(t.rules["c"]?.count == 1)
        #expect(t.elements["s"] == [NFTSetElement(key: ip4("1.1.1.1"))])
    }

    @Test func failedBatchChangesNothing() throws {
        let fake = RecordingNFTables()
        try fake.commit(Batch([.addTable(table), .addChain(NFTChain(family: .inet, table: T, name: "c")),
                               .addRule(rule("c", [.verdict(.accept)]))]))
        let before = try fake.readTable(family: .inet, name: T)
        let error = #expect(throws: NetlinkError.self) {
            try fake.commit(Batch([.flushChain(family: .inet, table: T, name: "c"),
                                   .addRule(rule("nope", [.verdict(.drop)]))]))
        }
        guard case .rejected(let f) = error else { Issue.record("expected .rejected"); return }
        #expect(f.map(\.index) == [1])
        #expect(try fake.readTable(family: .inet, name: T) == before)
        #expect(fake.committed.count == 1)
        #expect(fake.offered.count == 2)
    }

    @Test func referencedObjectsCannotBeDeleted() throws {
        let fake = RecordingNFTables()
        try fake.commit(Batch([
            .addTable(table),
            .addChain(NFTChain(family: .inet, table: T, name: "a")),
            .addChain(NFTChain(family: .inet, table: T, name: "b")),
            .addSet(NFTSetDefinition(family: .inet, table: T, name: "m", keyType: .ifname, isVerdictMap: true)),
            .addElements(family: .inet, table: T, set: "m", elements: [NFTSetElement(key: NFTMatch.ifnameBytes("t"), verdict: .jump("b"))]),
        ]))
        #expect(throws: NetlinkError.self) { try fake.commit(Batch([.deleteChain(family: .inet, table: T, name: "b")])) }
        try fake.commit(Batch([
            .deleteElements(family: .inet, table: T, set: "m", elements: [NFTSetElement(key: NFTMatch.ifnameBytes("t"))]),
            .deleteChain(family: .inet, table: T, name: "b"),
        ]))
        #expect(try fake.readTable(family: .inet, name: T)?.chains.map(\.name) == ["a"])
    }

    @Test func generationGuard() throws {
        let fake = RecordingNFTables()
        let g = try fake.generation()
        fake.bumpGeneration()
        #expect(throws: NetlinkError.self) { try fake.commit(Batch([.addTable(table)]), expectedGeneration: g) }
        try fake.commit(Batch([.addTable(table)]), expectedGeneration: g + 1)
    }
}
