import CNetfilter
import Foundation
import Testing
import RampartConntrack
import RampartCore
import RampartHarness
import RampartTestSupport
@testable import RampartNetlink

/// A conntrack table played by the scripted transport: dumps return `entries`, deletes remove
/// them (by tuple and id) and are recorded, stats count them. No socket, no root.
final class ScriptedConntrackTable {
    var entries: [ConntrackEntry]
    var deleted: [ConntrackEntry] = []
    var dumps = 0
    /// Called when a dump request arrives, before it is answered: events "during the dump".
    var duringDump: (() -> Void)?
    private(set) var transport: ScriptedNetlinkTransport!

    init(_ entries: [ConntrackEntry]) {
        self.entries = entries
        // Holds the table (a cycle, for the test's life): callers may keep only the transport.
        transport = ScriptedNetlinkTransport { [self] request in
            var out: [[UInt8]] = []
            for m in request.messages {
                let type = UInt32(m.type & 0xff)
                if type == IPCTNL_MSG_CT_GET.rawValue {
                    dumps += 1
                    duringDump?()
                    out += self.entries.map { ConntrackIndexTests.message($0, seq: m.seq) }
                    out.append(NetlinkReply.done(seq: m.seq))
                } else if type == IPCTNL_MSG_CT_GET_STATS.rawValue {
                    let n = UInt32(self.entries.count)
                    out.append(NetlinkReply.message(type: m.type, seq: m.seq) { nlh in
                        mnl_attr_put_u32(nlh, UInt16(CTA_STATS_GLOBAL_ENTRIES.rawValue), n.bigEndian)
                    })
                    out.append(NetlinkReply.ack(seq: m.seq))
                } else if type == IPCTNL_MSG_CT_DELETE.rawValue {
                    let p = UnsafeMutableRawBufferPointer.allocate(byteCount: m.bytes.count, alignment: 16)
                    defer { p.deallocate() }
                    p.copyBytes(from: m.bytes)
                    let e = try! ConntrackMessages.parseEntry(message: UnsafeRawBufferPointer(p))!
                    if let i = self.entries.firstIndex(where: { $0.original == e.original && $0.zone == e.zone && (e.id == nil || $0.id == e.id) }) {
                        self.deleted.append(self.entries.remove(at: i))
                        out.append(NetlinkReply.ack(seq: m.seq))
                    } else {
                        out.append(NetlinkReply.error(seq: m.seq, errno: ENOENT))
                    }
                }
            }
            return out.isEmpty ? [] : [NetlinkReply.datagram(out)]
        }
    }
}

@Suite("conntrack index (scripted kernel, no root)") struct ConntrackIndexTests {
    /// An entry as a dump or a NEW event carries it.
    static func message(_ e: ConntrackEntry, seq: UInt32) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 4096)
        let n = bytes.withUnsafeMutableBytes { b in
            var n = ConntrackMessages.buildCreate(into: b.baseAddress!, sequence: seq, entry: e, timeout: 60)
            let nlh = b.baseAddress!.assumingMemoryBound(to: nlmsghdr.self)
            if let id = e.id { mnl_attr_put_u32(nlh, UInt16(CTA_ID.rawValue), id.bigEndian); n = Int(nlh.pointee.nlmsg_len) }
            return n
        }
        return Array(bytes[0..<n])
    }
    static func destroy(_ e: ConntrackEntry) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 4096)
        let n = bytes.withUnsafeMutableBytes { ConntrackMessages.buildDelete(into: $0.baseAddress!, sequence: 0, entry: e) }
        return Array(bytes[0..<n])
    }

    static func a(_ s: String) -> ConntrackAddress { IPAddress(s)!.conntrack }
    static func tcp(_ s: String, _ sport: UInt16, _ d: String, _ dport: UInt16, id: UInt32, replySource: String? = nil) -> ConntrackEntry {
        let o = ConntrackTuple(family: .ipv4, protocolNumber: 6, source: a(s), destination: a(d), sourcePort: sport, destinationPort: dport)
        var r = o.inverted
        if let rs = replySource { r.source = a(rs); r.sourcePort = 22 }
        return ConntrackEntry(original: o, reply: r, status: 0x8, id: id)
    }

    static let revoked = tcp("10.0.9.5", 40001, "10.0.1.11", 22, id: 1)         // bastion → web-1 ssh (revoked)
    static let kept = tcp("192.0.2.10", 40002, "10.0.1.11", 80, id: 2)          // → web-1 http (still allowed)
    static let dnat = tcp("192.0.2.10", 40003, "203.0.113.1", 2222, id: 3, replySource: "10.0.1.11")  // DNAT → web-1:22
    static let web2 = tcp("10.0.9.5", 40004, "10.0.1.12", 22, id: 4)            // bastion → web-2 ssh (revoked, other instance)
    static let outside = tcp("198.0.0.1", 40005, "10.9.0.1", 443, id: 5)        // no instance
    static let table = [revoked, kept, dnat, web2, outside]
    static let web1: Set<IPAddress> = [IPAddress("10.0.1.11")!, IPAddress("fd00::11")!]

    /// Catches: events applied before the dump (a destroy lost to a stale dumped entry), a stale
    /// destroy (another id) removing a newer entry of the same tuple, an entry behind a
    /// destination NAT not found by the instance's address, a lost event not making the index
    /// stale, a rebuild that does not recover the table.
    @Test func startLossAndRebuild() throws {
        let kernel = ScriptedConntrackTable(Self.table)
        let eventSocket = ScriptedNetlinkTransport()
        // Queued while the dump runs: web-2's entry destroyed, a destroy of an older entry with
        // revoked's tuple (another id), and a new entry.
        let fresh = Self.tcp("10.0.9.5", 40009, "10.0.1.11", 22, id: 9)
        var stale = Self.revoked
        stale.id = 77
        // Queued before the dump: older than it, discarded.
        eventSocket.enqueue([NetlinkReply.datagram([Self.destroy(Self.revoked)])])
        kernel.duringDump = {
            eventSocket.enqueue([NetlinkReply.datagram([Self.destroy(Self.web2), Self.destroy(stale), Self.message(fresh, seq: 0)])])
        }
        let index = ConntrackIndex(events: ConntrackEvents(transport: eventSocket), dumper: ConntrackConnection(transport: kernel.transport))
        #expect(index.entries(involving: Self.web1) == nil, "not built yet")
        try index.rebuild()
        #expect(index.isFresh)
        let found = try #require(index.entries(involving: Self.web1))
        #expect(Set(found.map(\.id)) == [1, 2, 3, 9])
        #expect(index.entries(involving: [IPAddress("10.0.1.12")!]) == [])
        #expect(index.statistics.entries == 5 && index.statistics.events == 3)

        // Events lost: stale (nil) until rebuilt, and the events queued after the loss count.
        eventSocket.enqueue([.failure(.ENOBUFS), NetlinkReply.datagram([Self.destroy(Self.kept)])])
        #expect(index.entries(involving: Self.web1) == nil)
        #expect(!index.isFresh)
        kernel.entries = [Self.revoked, Self.outside]
        kernel.duringDump = nil
        #expect(index.pump())
        #expect(Set(try #require(index.entries(involving: Self.web1)).map(\.id)) == [1])
        #expect(index.statistics.losses == 1 && index.statistics.rebuilds == 2)
    }

    /// Catches: the index path evaluating other entries than the dump path, or deleting
    /// differently (for a scope of addresses and for the whole table), or dumping anyway.
    @Test(arguments: [false, true]) func revocationWithTheIndexCutsWhatTheDumpCuts(_ all: Bool) throws {
        let ir = try RevocationTests.ir(RevocationTests.document(withoutWebRules: ["ssh-from-admin"]))
        let scope: Revocation.Scope = all ? .all : .addresses(Self.web1)
        let viaDump = ScriptedConntrackTable(Self.table)
        let d = try Revocation.run(ConntrackConnection(transport: viaDump.transport), ir: ir, scope: scope)

        let viaIndex = ScriptedConntrackTable(Self.table)
        let index = ConntrackIndex(events: ConntrackEvents(transport: ScriptedNetlinkTransport()),
                                   dumper: ConntrackConnection(transport: ScriptedConntrackTable(Self.table).transport))
        try index.rebuild()
        let i = try Revocation.run(ConntrackConnection(transport: viaIndex.transport), ir: ir, scope: scope, index: index)
        #expect(i.indexed && i.dumps == 0 && viaIndex.dumps == 0, "\(i)")
        #expect(!d.indexed && d.dumps == 1)
        #expect(Set(viaIndex.deleted) == Set(viaDump.deleted))
        #expect(i.cut == d.cut && i.evaluated == d.evaluated)
        let expected: Set<UInt32> = all ? [1, 3, 4] : [1, 3]
        #expect(Set(viaIndex.deleted.compactMap(\.id)) == expected)

        // A stale index: the run dumps, with the same result.
        let lost = ScriptedNetlinkTransport()
        let staleIndex = ConntrackIndex(events: ConntrackEvents(transport: lost), dumper: ConntrackConnection(transport: ScriptedConntrackTable(Self.table).transport))
        try staleIndex.rebuild()
        lost.enqueue([.failure(.ENOBUFS)])
        let fallback = ScriptedConntrackTable(Self.table)
        let f = try Revocation.run(ConntrackConnection(transport: fallback.transport), ir: ir, scope: scope, index: staleIndex)
        #expect(!f.indexed && fallback.dumps == 1 && Set(fallback.deleted) == Set(viaDump.deleted))
    }
}

/// The index against the kernel, in throwaway namespaces: entries created over ctnetlink produce
/// NEW events, deletes DESTROY events; a tiny receive queue loses events and the index recovers.
@Suite("conntrack index (kernel)", .serialized, .tags(.kernel), .rootOnly) struct ConntrackIndexKernelTests {
    static func waitFresh(_ index: ConntrackIndex, seconds: Double = 10) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if index.isFresh { return true }
            usleep(20_000)
        }
        return false
    }

    /// Catches: no events from ctnetlink-created entries (the benchmark's premise), an index
    /// that misses entries created after its start or keeps deleted ones, a NAT entry not found
    /// by the instance's address.
    @Test func followsTheKernel() throws {
        let ns = try TestNamespace(prefix: "cti")
        let ct = try ConntrackConnection(namespace: .named(ns.name))
        func plain(_ e: ConntrackEntry) -> ConntrackEntry { var e = e; e.id = nil; e.status = 0; return e }
        try ct.create([plain(ConntrackIndexTests.outside)])   // before the start: found by the dump
        let index = try ConntrackIndex.start(namespace: .named(ns.name))
        defer { index.stop() }
        #expect(index.statistics.entries == 1 && index.isFresh)
        let toWeb1 = (0..<300).map { plain(ConntrackIndexTests.tcp("192.0.2.10", UInt16(30000 + $0), "10.0.1.11", 80, id: 0)) }
        let dnat = plain(ConntrackIndexTests.dnat)
        try ct.create(toWeb1 + [dnat])
        let found = try #require(index.entries(involving: ConntrackIndexTests.web1))
        #expect(found.count == 301)
        #expect(found.contains { $0.original == dnat.original })
        #expect(found.allSatisfy { $0.id != nil })
        _ = try ct.delete(Array(found.prefix(100)))
        #expect(index.entries(involving: ConntrackIndexTests.web1)?.count == 201)
        #expect(index.statistics.losses == 0)
    }

    /// Catches: a cut that reads the host's addresses (a trip into the namespace) or sets up
    /// its evaluator when no entry is there to evaluate, the common case of a daemon's drain
    /// with an index; and one that skips the read when an entry does need it.
    @Test func aCutWithNothingToEvaluateReadsNothing() throws {
        let ns = try TestNamespace(prefix: "ctn")
        let ct = try ConntrackConnection(namespace: .named(ns.name))
        let index = try ConntrackIndex.start(namespace: .named(ns.name))
        defer { index.stop() }
        #expect(Self.waitFresh(index))
        let ir = try RevocationTests.ir(RevocationTests.document(withoutWebRules: ["ssh-from-admin"]))
        var reads = 0
        let none = try Revocation.run(ct, ir: ir, scope: .addresses(ConntrackIndexTests.web1),
                                      hostAddresses: { () throws(NetlinkError) in reads += 1; return [] }, index: index)
        #expect(none.indexed && none.examined == 0 && none.cut == 0 && reads == 0, "\(none)")
        let ssh = ConntrackEntry(original: ConntrackTuple(family: .ipv4, protocolNumber: 6, source: IPAddress("10.0.9.5")!.conntrack,
                                                          destination: IPAddress("10.0.1.11")!.conntrack, sourcePort: 40000, destinationPort: 22))
        try ct.create([ssh, { var e = ssh; e.original.sourcePort = 40001; return e }()])
        #expect(Self.waitFresh(index))
        let two = try Revocation.run(ct, ir: ir, scope: .addresses(ConntrackIndexTests.web1),
                                     hostAddresses: { () throws(NetlinkError) in reads += 1; return [] }, index: index)
        #expect(two.cut == 2 && reads == 1, "\(two), \(reads) reads of the host's addresses (one per run that needs them)")
    }

    /// Rampart's own deletes through the index (`deleting`): the index leaves the DESTROY group
    /// meanwhile (no event is built for them: none reaches it), drops the deleted entries
    /// itself, and listens again afterwards (a later delete by someone else is seen). Catches:
    /// a window that stays open (later destroys missed), deleted entries kept, the group never
    /// left (the 100 DESTROY events would reach the index).
    @Test func ownDeletesLeaveTheDestroyEventsOut() throws {
        let ns = try TestNamespace(prefix: "ctw")
        let ct = try ConntrackConnection(namespace: .named(ns.name))
        func plain(_ e: ConntrackEntry) -> ConntrackEntry { var e = e; e.id = nil; e.status = 0; return e }
        let index = try ConntrackIndex.start(namespace: .named(ns.name))
        defer { index.stop() }
        try ct.create((0..<300).map { plain(ConntrackIndexTests.tcp("192.0.2.10", UInt16(30000 + $0), "10.0.1.11", 80, id: 0)) })
        let found = try #require(index.entries(involving: ConntrackIndexTests.web1))
        #expect(found.count == 300)
        let eventsBefore = index.statistics.events
        let d = try index.deleting(Array(found.prefix(100))) { (e) throws(NetlinkError) in try ct.delete(e) }
        #expect(d.deleted == 100)
        #expect(index.entries(involving: ConntrackIndexTests.web1)?.count == 200)
        #expect(index.statistics.deleteWindows == 1)
        // No DESTROY event for the 100 reached the index (they were never built for it).
        Thread.sleep(forTimeInterval: 0.2)
        _ = index.entries(involving: [])
        #expect(index.statistics.events - eventsBefore < 100, "\(index.statistics)")
        // Listening again: a delete made outside the index is seen through its DESTROY event.
        let rest = try #require(index.entries(involving: ConntrackIndexTests.web1))
        _ = try ct.delete(Array(rest.prefix(50)))
        #expect(index.entries(involving: ConntrackIndexTests.web1)?.count == 150)
        #expect(index.statistics.losses == 0 && index.isFresh)
    }

    /// Entries that end while the index is out of the DESTROY group (deleted by someone else
    /// during Rampart's own deletes) stay held until the resync drops them; lookups answer
    /// throughout, and entries created and deleted while it dumps come out right. Catches: a
    /// resync that never comes, one that makes the index stale meanwhile (a lookup answering
    /// nil), events of the dump's time lost or replayed wrong (the index then differs from the
    /// kernel), Rampart's deleted entries kept.
    @Test func entriesEndingUnseenAreDroppedByTheResync() throws {
        let ns = try TestNamespace(prefix: "ctr")
        let name = ns.name
        let ct = try ConntrackConnection(namespace: .named(name))
        func plain(_ e: ConntrackEntry) -> ConntrackEntry { var e = e; e.id = nil; e.status = 0; return e }
        let index = try ConntrackIndex.start(namespace: .named(name), windowResyncSeconds: 1)
        defer { index.stop() }
        try ct.create((0..<5000).map { plain(ConntrackIndexTests.tcp("192.0.2.\(10 + $0 / 1000)", UInt16(30000 + $0 % 1000), "10.0.1.11", 80, id: 0)) })
        let found = try #require(index.entries(involving: ConntrackIndexTests.web1))
        #expect(found.count == 5000)
        let other = try ConntrackConnection(namespace: .named(name))
        _ = try index.deleting(Array(found.prefix(100))) { (e) throws(NetlinkError) in
            _ = try other.delete(Array(found.suffix(10)))   // ends unseen: the group is left
            return try ct.delete(e)
        }
        // Held until the resync (due a second after the start: on a slow machine it may come
        // before this look, which then sees them gone).
        let resyncsBefore = index.statistics.windowResyncs
        let heldBefore = index.entries(involving: ConntrackIndexTests.web1)?.count
        let resyncsAfter = index.statistics.windowResyncs
        if resyncsAfter == 0 {
            #expect(heldBefore == 4900, "the 10 are still held")
        } else if resyncsBefore > 0 {
            #expect(heldBefore == 4890, "resynced already")
        }
        // Churn on another thread while the resync (due a second after the start) dumps.
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            defer { done.signal() }
            guard let c = try? ConntrackConnection(namespace: .named(name)) else { return }
            for round in 0..<30 {
                let batch = (0..<100).map { i in
                    ConntrackEntry(original: ConntrackTuple(family: .ipv4, protocolNumber: 6, source: IPAddress("198.51.100.\(round + 1)")!.conntrack,
                                                            destination: IPAddress("10.0.1.11")!.conntrack, sourcePort: UInt16(20000 + i), destinationPort: 443))
                }
                try? c.create(batch)
                if round % 2 == 1, let live = try? c.entries(ConntrackFilter(family: .ipv4, field: .originalSource(IPAddress("198.51.100.\(round)")!.conntrack))) {
                    _ = try? c.delete(live)
                }
                usleep(60_000)
            }
        }
        let end = Date().addingTimeInterval(15)
        var unanswered = 0
        while index.statistics.windowResyncs == 0, Date() < end {
            if index.entries(involving: ConntrackIndexTests.web1) == nil { unanswered += 1 }
            usleep(2_000)
        }
        done.wait()
        #expect(index.statistics.windowResyncs >= 1, "\(index.statistics)")
        #expect(unanswered == 0, "lookups answered nil \(unanswered) times during the resync")
        let held = Set(try #require(index.allEntries()).map(\.original))
        let kernel = Set(try ct.entries(.all).map(\.original))
        #expect(held == kernel, "index \(held.count), kernel \(kernel.count): \(held.subtracting(kernel).count) held but gone, \(kernel.subtracting(held).count) missing")
        #expect(kernel.count == 4890 + 15 * 100, "\(kernel.count)")
        #expect(index.statistics.losses == 0 && index.isFresh)

        // Deterministically: entries created, and dumped ones deleted, after the dump and
        // before the swap (the thread's own resync is an hour away here).
        let quiet = try ConntrackIndex.start(namespace: .named(name), windowResyncSeconds: 3600)
        defer { quiet.stop() }
        let late = (0..<50).map { i in
            ConntrackEntry(original: ConntrackTuple(family: .ipv4, protocolNumber: 6, source: IPAddress("203.0.113.9")!.conntrack,
                                                    destination: IPAddress("10.0.1.11")!.conntrack, sourcePort: UInt16(50000 + i), destinationPort: 443))
        }
        let dumped = try #require(quiet.entries(involving: ConntrackIndexTests.web1))
        try quiet.resync {
            try? other.create(late)
            _ = try? other.delete(Array(dumped.prefix(20)))
        }
        let after = Set(try #require(quiet.allEntries()).map(\.original))
        #expect(after == Set(try ct.entries(.all).map(\.original)), "\(after.count) held")
        #expect(after.isSuperset(of: late.map(\.original)) && after.isDisjoint(with: dumped.prefix(20).map(\.original)))
        #expect(quiet.statistics.windowResyncs == 1 && quiet.isFresh)
    }

    /// Catches: ENOBUFS not noticed (an index that silently misses entries), a revocation that
    /// trusts a stale index, an index that does not come back after a loss.
    @Test func lostEventsStillGiveTheRightCut() throws {
        let ns = try TestNamespace(prefix: "ctl")
        let ct = try ConntrackConnection(namespace: .named(ns.name))
        let index = try ConntrackIndex.start(namespace: .named(ns.name), receiveBuffer: 4096)
        defer { index.stop() }
        let ir = try RevocationTests.ir(RevocationTests.document(withoutWebRules: ["ssh-from-admin"]))
        let revoked = (0..<1000).map { ConntrackEntry(original: ConntrackTuple(family: .ipv4, protocolNumber: 6, source: IPAddress("10.0.9.5")!.conntrack,
                                                                                destination: IPAddress("10.0.1.11")!.conntrack, sourcePort: UInt16(20000 + $0), destinationPort: 22)) }
        let kept = revoked.map { var e = $0; e.original.destinationPort = 80; e.original.source = IPAddress("192.0.2.10")!.conntrack; return e }
        try ct.create(revoked + kept)   // 2,000 NEW events into a ~4 KiB queue: lost
        // Whether the thread has rebuilt yet or not, the cut is right (index or dump).
        let r = try Revocation.run(ct, ir: ir, scope: .addresses(ConntrackIndexTests.web1), index: index)
        #expect(r.cut == 1000 && r.evaluated == 2000, "\(r)")
        #expect(index.statistics.losses >= 1, "\(index.statistics)")
        // The 1,000 DESTROY events are lost too; the index comes back and holds exactly the kept.
        #expect(Self.waitFresh(index))
        let left = index.entries(involving: ConntrackIndexTests.web1)
        #expect(left == nil || left!.count == 1000, "\(left?.count ?? -1)")
        #expect(Self.waitFresh(index))
        try ct.create(Array(revoked.prefix(10)))
        let r2 = try Revocation.run(ct, ir: ir, scope: .addresses(ConntrackIndexTests.web1), index: index)
        #expect(r2.cut == 10, "\(r2)")
    }

    /// Catches: the index path cutting other entries than the dump path with a big table
    /// (`RAMPART_CT_ENTRIES`, default 20,000), for a scope of addresses and the whole table.
    @Test func cutsWhatTheDumpCutsWithABigTable() throws {
        let ns = try TestNamespace(prefix: "ctb")
        let ct = try ConntrackConnection(namespace: .named(ns.name))
        let index = try ConntrackIndex.start(namespace: .named(ns.name))
        defer { index.stop() }
        let total = Int(ProcessInfo.processInfo.environment["RAMPART_CT_ENTRIES"] ?? "") ?? 20_000
        let ir = try RevocationTests.ir(RevocationTests.document(withoutWebRules: ["ssh-from-admin"]))
        let revoked = try RevocationTests.createBigTable(ct, total: total)
        for scope in [Revocation.Scope.addresses(ConntrackIndexTests.web1), .all] {
            let i = try Revocation.run(ct, ir: ir, scope: scope, index: index)
            #expect(i.indexed && i.dumps == 0 && i.cut == 1000 && i.evaluated == 2000, "\(i)")
            try ct.create(revoked)
            let d = try Revocation.run(ct, ir: ir, scope: scope)
            #expect(!d.indexed && d.cut == 1000 && d.evaluated == 2000, "\(d)")
            try ct.create(revoked)
            print("revocation, \(total) entries, 1,000 cut, scope \(String("\(scope)".prefix(9))): index "
                  + String(format: "%.2f ms, dump %.1f ms", Double(i.nanoseconds) / 1e6, Double(d.nanoseconds) / 1e6))
        }
        #expect(index.allEntries()?.count == total)
        #expect(index.statistics.losses == 0, "\(index.statistics)")
    }
}
