import Testing
import RampartHarness
@testable import RampartNetlink

/// Socket buffers sized for the batch, and element lists split over messages.
@Suite("Big batches", .tags(.kernel), .rootOnly) struct BigBatchTests {
    @Test func fiftyThousandRulesInOneBatch() throws {
        let k = try KernelFixture("big")
        var b = Batch([.addTable(NFTTable(family: .inet, name: T))])
        for c in 0..<50 { b.append(.addChain(NFTChain(family: .inet, table: T, name: "c\(c)"))) }
        for i in 0..<50_000 {
            let port = UInt16(1 + i % 60_000)
            b.append(.addRule(rule("c\(i % 50)", NFTMatch.port(protocol: 6, destination: true, port...port) + NFTMatch.counter + [.verdict(.accept)],
                                   comment: "rule \(i)")))
        }
        let result = try k.nl.commit(b)
        #expect(result.messages == 50_051)
        #expect(result.bytes > 10_000_000)  // far beyond any default socket buffer
        let t = try #require(try k.nl.readTable(family: .inet, name: T))
        #expect(t.rules.values.map(\.count).reduce(0, +) == 50_000)
        #expect(t.rules["c7"]?[3].comment == "rule 157")
        let listed = try k.ns.nft("list", "chain", "inet", T, "c7").stdout
        #expect(listed.contains("tcp dport 158 counter packets 0 bytes 0 accept comment \"rule 157\""))
    }

    @Test func hundredThousandElementsSplitOverMessages() throws {
        let k = try KernelFixture("big")
        let elements = (0..<100_000).map { (i: Int) -> NFTSetElement in
            let b1 = UInt8(truncatingIfNeeded: i >> 16), b2 = UInt8(truncatingIfNeeded: i >> 8), b3 = UInt8(truncatingIfNeeded: i)
            return NFTSetElement(key: [10, b1, b2, b3])
        }
        let result = try k.nl.commit(Batch([
            .addTable(NFTTable(family: .inet, name: T)),
            .addSet(NFTSetDefinition(family: .inet, table: T, name: "big", keyType: .ipv4Address)),
            .addElements(family: .inet, table: T, set: "big", elements: elements),
        ]))
        // One element-list attribute holds < 64 KiB: 100k IPv4 keys need many messages.
        #expect(result.messages > 2 + 100_000 / 4_096)
        let t = try #require(try k.nl.readTable(family: .inet, name: T))
        let readBack = Set(t.elements["big"] ?? [])
        #expect(readBack.count == 100_000)
        #expect(readBack == Set(elements) ? true : false, "elements differ: \(Set(elements).subtracting(readBack).count) missing")
        // nft sees them all too.
        let json = try k.ns.nftJSON()
        let set = json.compactMap { $0["set"] as? [String: Any] }.first { $0["name"] as? String == "big" }
        #expect((set?["elem"] as? [Any])?.count == 100_000)

        // Deleting in bulk is split the same way.
        let r2 = try k.nl.commit(Batch([.deleteElements(family: .inet, table: T, set: "big", elements: Array(elements[0..<60_000]))]))
        #expect(r2.messages > 60_000 / 4_096)
        #expect(try k.nl.readTable(family: .inet, name: T)?.elements["big"]?.count == 40_000)
    }

    @Test func manyMapElementsWithLongChainNames() throws {
        // NFTVerdict-map elements are big (a 16-byte key and a chain name): the split is by bytes.
        let k = try KernelFixture("big")
        var b = Batch([.addTable(NFTTable(family: .inet, name: T)),
                       .addSet(NFTSetDefinition(family: .inet, table: T, name: "vm", keyType: .ifname, isVerdictMap: true))])
        let chainName = { (i: Int) in "in-" + String(repeating: "x", count: 60) + "-\(i)" }
        for i in 0..<2_000 { b.append(.addChain(NFTChain(family: .inet, table: T, name: chainName(i)))) }
        let elements = (0..<2_000).map { NFTSetElement(key: NFTMatch.ifnameBytes("tap\($0)"), verdict: .jump(chainName($0))) }
        b.append(.addElements(family: .inet, table: T, set: "vm", elements: elements))
        let r = try k.nl.commit(b)
        #expect(r.messages > 2 + 2_000 + 1)  // the elements needed more than one message
        let readBack = Set(try k.nl.readTable(family: .inet, name: T)?.elements["vm"] ?? [])
        #expect(readBack.count == elements.count)
        #expect(readBack == Set(elements), "elements differ")
    }
}

/// Deleting or flushing big objects in one batch: the kernel's notifications for what a message
/// removes must not flood the socket (they are echoed only for the echo carrier).
@Suite("Big deletions", .tags(.kernel), .rootOnly) struct BigDeletionTests {
    @Test func deleteAndFlushLargeObjects() throws {
        let k = try KernelFixture("bigdel")
        var b = Batch([.addTable(NFTTable(family: .inet, name: T)), .addChain(NFTChain(family: .inet, table: T, name: "c")),
                       .addSet(NFTSetDefinition(family: .inet, table: T, name: "s", keyType: .ipv4Address))])
        for i in 0..<20_000 {
            let p = UInt16(1 + i % 60_000)
            b.append(.addRule(rule("c", NFTMatch.port(protocol: 17, destination: true, p...p) + [.verdict(.accept)])))
        }
        b.append(.addElements(family: .inet, table: T, set: "s", elements: (0..<50_000).map { (i: Int) -> NFTSetElement in
            NFTSetElement(key: [10, UInt8(truncatingIfNeeded: i >> 16), UInt8(truncatingIfNeeded: i >> 8), UInt8(truncatingIfNeeded: i)])
        }))
        try k.nl.commit(b)
        // Each of these, as the first operation of its batch, makes the kernel notify thousands of
        // objects; none may be reported as anything but a success.
        try k.nl.commit(Batch([.flushSet(family: .inet, table: T, name: "s")]))
        try k.nl.commit(Batch([.flushChain(family: .inet, table: T, name: "c")]))
        try k.nl.commit(b.operations.dropFirst(3).reduce(into: Batch()) { $0.append($1) })
        let g = try k.nl.generation()
        let r = try k.nl.commit(Batch([.deleteTable(family: .inet, name: T)]))
        #expect(r.generation == g + 1)
        #expect(try k.nl.readTable(family: .inet, name: T) == nil)
    }
}
