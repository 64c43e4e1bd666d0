import Testing
import RampartCoreTestSupport
@testable import RampartNetlink

/// `ElementListWriter` writes element lists byte for byte as libnftnl's objects did.
@Suite("Element lists written directly") struct ElementListWriterTests {
    /// The datagram's bytes with every attribute's padding zeroed: libmnl 1.0.4 leaves the
    /// bytes that align an attribute as the buffer held them (the kernel ignores them).
    static func bytes(_ batch: Batch, libnftnl: Bool) throws -> [UInt8] {
        let e = try EncodedBatch(batch, firstSequence: 7, expectedGeneration: 3, elementsThroughLibnftnl: libnftnl)
        var out = try e.withBytes { p, n in Array(UnsafeRawBufferPointer(start: p, count: n)) }
        func u16(_ i: Int) -> Int { Int(out[i]) | Int(out[i + 1]) << 8 }
        func attributes(_ start: Int, _ end: Int) {
            var i = start
            while i + 4 <= end {
                let len = u16(i), type = u16(i + 2)
                guard len >= 4, i + len <= end else { return }
                if type & 0x8000 != 0 { attributes(i + 4, i + len) }
                let padded = min(end, i + (len + 3) & ~3)
                for k in (i + len)..<padded { out[k] = 0 }
                i = padded
            }
        }
        var m = 0
        while m + 16 <= out.count {
            let full = Int(out[m]) | Int(out[m + 1]) << 8 | Int(out[m + 2]) << 16 | Int(out[m + 3]) << 24  // nlmsg_len
            guard full >= 20 else { break }
            attributes(m + 20, m + full)  // after nlmsghdr (16) and nfgenmsg (4)
            m += (full + 3) & ~3
        }
        return out
    }

    static func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> String {
        guard let i = zip(a, b).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset else {
            return a.count == b.count ? "none" : "lengths \(a.count) and \(b.count)"
        }
        return "at byte \(i) of \(a.count): \(Array(a[max(0, i - 8)..<min(a.count, i + 8)])) against \(Array(b[max(0, i - 8)..<min(b.count, i + 8)]))"
    }

    /// Every kind of element Rampart writes (plain keys of every length, data values, verdicts
    /// with and without a chain, comments of every length, interval ends), in lists long enough
    /// to be cut over several messages, added and deleted: the same bytes both ways.
    @Test func theSameBytesAsLibnftnl() throws {
        var rng = SplitMix64(state: 42)
        for round in 0..<40 {
            let n = round < 30 ? Int(rng.next() % 60) + 1 : 3_000 + Int(rng.next() % 9_000)
            var elements: [NFTSetElement] = []
            for i in 0..<n {
                let keyLength = [4, 8, 16, 20, 22, 32][Int(rng.next() % 6)]
                var e = NFTSetElement(key: (0..<keyLength).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
                switch rng.next() % 5 {
                case 0: e.data = (0..<[4, 12, 16][Int(rng.next() % 3)]).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                case 1: e.verdict = [.accept, .drop, .jump("gin-web"), .goto("chain-\(i)")][Int(rng.next() % 4)]
                case 2: e.rangeEnd = (0..<keyLength).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                default: break
                }
                if rng.next() % 2 == 0 { e.comment = String(repeating: "c", count: Int(rng.next() % 120)) + "\(i)" }
                elements.append(e)
            }
            let ops: [BatchOperation] = [.addElements(family: .inet, table: "rampart", set: "members4", elements: elements),
                                         .deleteElements(family: .ipv6, table: "t", set: "s\(round)", elements: elements)]
            for op in ops {
                let batch = Batch([.addChain(NFTChain(family: .inet, table: "rampart", name: "c")), op])
                let direct = try Self.bytes(batch, libnftnl: false), reference = try Self.bytes(batch, libnftnl: true)
                #expect(direct == reference, "round \(round), \(n) elements: first difference \(Self.firstDifference(direct, reference))")
                if round >= 30 {
                    let messages = try EncodedBatch(batch, firstSequence: 1, expectedGeneration: nil).messageCount
                    #expect(messages > 5, "round \(round): \(n) elements in \(messages) messages")
                }
            }
        }
    }

    /// A bad name or comment is refused with an error, both ways (the libnftnl way crashed the
    /// process before: the batch's buffer was freed twice).
    @Test(arguments: [false, true]) func badNamesAndCommentsAreRefused(libnftnl: Bool) {
        let long = String(repeating: "x", count: 300)
        for op in [BatchOperation.addElements(family: .inet, table: "t", set: long, elements: [NFTSetElement(key: [1, 2, 3, 4])]),
                   .addElements(family: .inet, table: "t", set: "s", elements: [NFTSetElement(key: [1, 2, 3, 4], verdict: .jump(long))]),
                   .addElements(family: .inet, table: "t", set: "s", elements: [NFTSetElement(key: [1, 2, 3, 4], comment: long)])] {
            #expect(throws: NetlinkError.self) { _ = try Self.bytes(Batch([op]), libnftnl: libnftnl) }
        }
    }
}
