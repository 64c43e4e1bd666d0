import Foundation
import Testing
import RampartHarness
@testable import RampartNetlink

/// ctnetlink against the kernel, in a throwaway namespace: entries inserted over netlink are
/// dumped back (per family, and filtered by an address in the kernel with CTA_FILTER), deleted by
/// tuple; `conntrack -L` is the oracle.
@Suite("conntrack over netlink", .serialized, .tags(.kernel), .rootOnly) struct ConntrackKernelTests {
    static func v4(_ a: UInt32) -> ConntrackAddress { ConntrackAddress(ipv4: a) }
    static let web1: UInt32 = 0x0A00_010B  // 10.0.1.11
    static let web2: UInt32 = 0x0A00_010C  // 10.0.1.12

    static func tcp(_ src: UInt32, _ sport: UInt16, _ dst: UInt32, _ dport: UInt16) -> ConntrackEntry {
        ConntrackEntry(original: ConntrackTuple(family: .ipv4, protocolNumber: 6, source: v4(src), destination: v4(dst),
                                                sourcePort: sport, destinationPort: dport), status: 0)
    }

    static func oracleCount(_ ns: TestNamespace, _ args: [String] = []) throws -> Int {
        let out = try ns.run(["conntrack", "-L"] + args).stdout
        return out.split(separator: "\n").filter { $0.contains("src=") }.count
    }

    @Test func dumpFilterAndDelete() throws {
        let ns = try TestNamespace(prefix: "ct")
        let ct = try ConntrackConnection(namespace: .named(ns.name))
        var entries = (0..<50).map { Self.tcp(0xC000_020A, UInt16(30000 + $0), Self.web1, 80) }      // 192.0.2.10 → web-1:80
        entries += (0..<20).map { Self.tcp(Self.web1, UInt16(40000 + $0), 0x0A00_0002, 53) }          // web-1 → 10.0.0.2
        entries += (0..<30).map { Self.tcp(0xC000_020A, UInt16(30000 + $0), Self.web2, 443) }         // → web-2
        let udp = ConntrackEntry(original: ConntrackTuple(family: .ipv4, protocolNumber: 17, source: Self.v4(Self.web2),
                                                          destination: Self.v4(0x0A00_0002), sourcePort: 5353, destinationPort: 53))
        let icmp6 = ConntrackEntry(original: ConntrackTuple(
            family: .ipv6, protocolNumber: 58, source: ConntrackAddress(high: 0x2001_0db8_0000_0000, low: 0x10),
            destination: ConntrackAddress(high: 0xfd00_0000_0000_0000, low: 0x11), icmpType: 128, icmpCode: 0, icmpID: 77))
        try ct.create(entries + [udp, icmp6])
        #expect(try Self.oracleCount(ns) == 102)
        #expect(try ct.count() == 102)

        // Per family, in the kernel.
        let all4 = try ct.entries(ConntrackFilter(family: .ipv4))
        #expect(all4.count == 101)
        let all6 = try ct.entries(ConntrackFilter(family: .ipv6))
        #expect(all6.count == 1)
        #expect(try ct.entries(.all).count == 102)
        let six = try #require(all6.first)
        #expect(six.original == icmp6.original)
        #expect(six.reply?.icmpType == 129 && six.id != nil)
        let tcp = try #require(all4.first { $0.original == entries[0].original })
        #expect(tcp.reply == entries[0].original.inverted && tcp.status & 0x8 != 0)  // IPS_CONFIRMED

        // By address, in the kernel: only matching entries come back.
        let toWeb1 = try ct.entries(ConntrackFilter(family: .ipv4, field: .originalDestination(Self.v4(Self.web1))))
        #expect(toWeb1.count == 50 && toWeb1.allSatisfy { $0.original.destination == Self.v4(Self.web1) })
        let fromWeb1 = try ct.entries(ConntrackFilter(family: .ipv4, field: .originalSource(Self.v4(Self.web1))))
        #expect(fromWeb1.count == 20)
        let fromWeb2 = try ct.entries(ConntrackFilter(family: .ipv4, field: .originalSource(Self.v4(Self.web2))))
        #expect(fromWeb2.map(\.original) == [udp.original])

        // Delete by tuple (and id): gone from the kernel; a second delete finds nothing, not an error.
        let d = try ct.delete(toWeb1)
        #expect(d == ConntrackDeletion(deleted: 50, alreadyGone: 0))
        #expect(try Self.oracleCount(ns, ["-d", "10.0.1.11"]) == 0)
        #expect(try Self.oracleCount(ns) == 52)
        #expect(try ct.delete(toWeb1) == ConntrackDeletion(deleted: 0, alreadyGone: 50))
        // An id that is not the entry's: the entry is not deleted (a newer connection with the same tuple survives).
        var stale = fromWeb2[0]
        stale.id = stale.id.map { $0 &+ 1 }
        #expect(try ct.delete([stale]) == ConntrackDeletion(deleted: 0, alreadyGone: 1))
        #expect(try Self.oracleCount(ns, ["-s", "10.0.1.12"]) == 1)
        #expect(try ct.delete(all6).deleted == 1)
    }

    /// The costs the revocation pays, with a big table: a dump per family, a dump filtered by one
    /// address in the kernel, and deleting 1,000 entries (figures printed, bounds loose).
    @Test func costsWithABigTable() throws {
        let ns = try TestNamespace(prefix: "ctbig")
        let ct = try ConntrackConnection(namespace: .named(ns.name))
        let total = Int(ProcessInfo.processInfo.environment["RAMPART_CT_ENTRIES"] ?? "") ?? 100_000
        let affected = 1_000
        var entries: [ConntrackEntry] = []
        entries.reserveCapacity(total)
        for i in 0..<affected { entries.append(Self.tcp(0xC000_0000 | UInt32(i >> 8), UInt16(20000 + (i & 0xff)), Self.web1, 22)) }
        for i in affected..<total {
            entries.append(Self.tcp(0xC600_0000 | UInt32(i >> 10), UInt16(10000 + (i & 0x3ff)), 0x0A01_0000 | UInt32(i & 0xff), 80))
        }
        func time(_ body: () throws -> Void) rethrows -> Double {
            let t = DispatchTime.now().uptimeNanoseconds
            try body()
            return Double(DispatchTime.now().uptimeNanoseconds - t) / 1e6
        }
        let emptyMs = try time { _ = try ct.entries(.all) }
        let createMs = try time { try ct.create(entries) }
        var n = 0
        let fullMs = try time { n = 0; try ct.dump(ConntrackFilter(family: .ipv4)) { (_) throws(NetlinkError) in n += 1 } }
        #expect(n == total)
        var hits: [ConntrackEntry] = []
        let filteredMs = try time { hits = try ct.entries(ConntrackFilter(family: .ipv4, field: .originalDestination(Self.v4(Self.web1)))) }
        #expect(hits.count == affected)
        let otherFamilyMs = try time { _ = try ct.entries(ConntrackFilter(family: .ipv6)) }
        print(String(format: "conntrack: a dump of the other family (nothing returned) %.2f ms", otherFamilyMs))
        let missMs = try time { _ = try ct.entries(ConntrackFilter(family: .ipv4, field: .originalSource(Self.v4(Self.web1)))) }
        var deleted = ConntrackDeletion()
        let deleteMs = try time { deleted = try ct.delete(hits) }
        #expect(deleted.deleted == affected)
        let processMs = try time { _ = try ns.run(["conntrack", "-D", "-d", "10.0.1.12"]) }
        let listMs = try time { _ = try ns.run(["sh", "-c", "conntrack -L -f ipv4 >/dev/null 2>&1"]) }
        print(String(format: "`conntrack -L -f ipv4 > /dev/null` (a process, C): %.1f ms", listMs))
        print(String(format: "conntrack: one walk of an empty namespace's table %.2f ms", emptyMs))
        print(String(format: "conntrack costs, %d entries: create %.1f ms; dump all %.1f ms; dump filtered by address %.2f ms (%d hits), %.2f ms (none); delete %d %.2f ms; `conntrack -D -d` (a process, no match) %.1f ms",
                     total, createMs, fullMs, filteredMs, affected, missMs, affected, deleteMs, processMs))
        #expect(try Self.oracleCount(ns, ["-d", "10.0.1.11"]) == 0)
    }
}
