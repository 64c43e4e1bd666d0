import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import RampartConntrack
import RampartCore
import RampartHarness
import RampartNetlink
import RampartNFTables

/// `rampart-bench conntrack`: revocation that reaches established connections (contract rule 8).
/// A routed host with the example policy; the conntrack table holds `--entries` entries, 1,000 of
/// them admin → web-1:22 (allowed by web's `ssh-from-admin`). The event revokes that rule: time
/// from the engine event to committed-and-cut, beside the same revoke committed without any
/// conntrack work and beside `conntrack -D` (a process) with the equivalent filter after the
/// commit, all in the same run. Between repetitions the rule is restored and the 1,000 entries
/// re-created, outside the timing. The same revoke is also timed with a `ConntrackIndex` (started
/// before the table was filled, fed by the entries' events): no kernel walk at all.
struct ConntrackBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conntrack",
        abstract: "Revocation at 100,000 conntrack entries: revoke → committed and cut, vs no cut and vs conntrack -D.")
    @OptionGroup var options: CommonBenchOptions

    @Option(help: "Conntrack entries in the namespace (default 100,000).")
    var entries = 100_000

    func run() throws {
        let report = Report(json: options.json)
        let repeats = options.repeats ?? 15
        let ns = try TestNamespace(prefix: "bct")
        let ct = try ConntrackConnection(namespace: .named(ns.name))
        let backend = NFTablesBackend(client: try NFTablesConnection(namespace: .named(ns.name)))
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/examples/two-tier.json")
        let document = try Document.parse(json: Data(contentsOf: url.standardizedFileURL))
        var engine = Engine(host: document.host)
        try backend.commit(try engine.apply(document: document), result: engine.planned)
        let withSSH = document.groups["web"]!.rules
        let withoutSSH = withSSH.filter { $0.id != "ssh-from-admin" }

        func tcp(_ s: UInt32, _ sport: Int, _ d: UInt32, _ dport: UInt16) -> ConntrackEntry {
            ConntrackEntry(original: ConntrackTuple(family: .ipv4, protocolNumber: 6, source: ConntrackAddress(ipv4: s),
                                                    destination: ConntrackAddress(ipv4: d), sourcePort: UInt16(sport), destinationPort: dport))
        }
        let bastion: UInt32 = 0x0A00_0905, web1: UInt32 = 0x0A00_010B  // 10.0.9.5, 10.0.1.11
        let affected = (0..<1000).map { tcp(bastion, 20000 + $0, web1, 22) }
        // Unrelated flows (outside ↔ outside through the host, no instance involved).
        var others: [ConntrackEntry] = []
        for i in 0..<max(0, entries - affected.count) {
            others.append(tcp(0xC600_0000 | UInt32(i >> 10), 10000 + (i & 0x3ff), 0x0A09_0000 | UInt32(i & 0xff), 443))
        }
        // The index, started before the table is filled: fed by the entries' NEW events (entries
        // created over ctnetlink produce them). Its steady cost: how fast it takes in a burst of
        // events (the creation of the whole table, as fast as ctnetlink can), and its memory
        // (the process's resident memory before and after: the index is what grows).
        let heapBefore = residentBytes()
        var t0 = monotonicNanos()
        let index = try ConntrackIndex.start(namespace: .named(ns.name))
        defer { index.stop() }
        let startNs = monotonicNanos() - t0
        t0 = monotonicNanos()
        try ct.create(others)
        let createNs = monotonicNanos() - t0
        // Caught up: the thread has applied every event (or rebuilt after a loss).
        while index.statistics.entries < others.count || !index.isFresh {
            if monotonicNanos() - t0 > 120_000_000_000 { throw ValidationError("the index did not catch up: \(index.statistics)") }
            usleep(1000)
        }
        let caughtUpNs = monotonicNanos() - t0
        let afterFill = index.statistics
        let heapAfter = residentBytes()
        let perEntry = others.isEmpty ? 0 : (heapAfter - heapBefore) / others.count
        report.note("conntrack: \(others.count) unrelated entries created in \(formatDuration(createNs)); 1,000 admin → web-1:22 entries re-created before each repetition")
        report.note("conntrack index: started (subscribe + dump of an empty table) in \(formatDuration(startNs)); \(afterFill.events) events applied, all \(others.count) entries held \(formatDuration(caughtUpNs)) after the burst began (\(Int(Double(others.count) / (Double(caughtUpNs) / 1e9))) events/s; ctnetlink created them at \(Int(Double(others.count) / (Double(createNs) / 1e9)))/s); events lost \(afterFill.losses) times, rebuilds \(afterFill.rebuilds); resident memory +\((heapAfter - heapBefore) >> 20) MiB, \(perEntry) bytes per entry")

        func restore() throws {
            try backend.commit(try engine.rulesChanged(group: "web", rules: withSSH), result: engine.planned)
            try ct.create(affected)
        }
        func revoke() throws -> Plan {
            let plan = try engine.rulesChanged(group: "web", rules: withoutSSH)
            try backend.commit(plan, result: engine.planned)
            return plan
        }

        var cut: [UInt64] = [], noCut: [UInt64] = [], process: [UInt64] = [], indexed: [UInt64] = []
        var cutCounts: [Int] = [], dumps: [Int] = [], indexedCounts: [Int] = []
        var notIndexed = 0
        var indexFind: [UInt64] = [], indexDelete: [UInt64] = [], dumpDelete: [UInt64] = []
        for _ in 0..<repeats {
            // Rampart with the index: event → committed → cut, the entries looked up in the index.
            // The index has taken in the 1,000 entries' NEW events before the revoke (outside the
            // timing; in a daemon they arrive as the connections open, long before).
            try restore()
            _ = index.entries(involving: [])
            let beforeIndexed = engine.planned
            t0 = monotonicNanos()
            let planI = try revoke()
            let scopeI = Revocation.scope(of: planI, result: engine.planned!, previous: beforeIndexed, local: engine)
            let ri = try Revocation.run(ct, ir: engine.planned!, scope: scopeI, departed: Revocation.departed(in: planI, result: engine.planned!), index: index)
            indexed.append(monotonicNanos() - t0)
            indexedCounts.append(ri.cut)
            indexFind.append(ri.findNanoseconds)
            indexDelete.append(ri.deleteNanoseconds)
            if !ri.indexed { notIndexed += 1 }

            // Rampart: event → committed → cut (scoped by the plan, as `rampart apply` and rampartd do).
            try restore()
            let before = engine.planned
            t0 = monotonicNanos()
            let plan = try revoke()
            let scope = Revocation.scope(of: plan, result: engine.planned!, previous: before, local: engine)
            let r = try Revocation.run(ct, ir: engine.planned!, scope: scope, departed: Revocation.departed(in: plan, result: engine.planned!))
            cut.append(monotonicNanos() - t0)
            cutCounts.append(r.cut)
            dumps.append(r.dumps)
            dumpDelete.append(r.deleteNanoseconds)

            // The same revoke, committed without any conntrack work.
            try restore()
            t0 = monotonicNanos()
            _ = try revoke()
            noCut.append(monotonicNanos() - t0)
            _ = try ct.delete(affected)

            // The same revoke, then the equivalent `conntrack -D` filter as a process.
            try restore()
            t0 = monotonicNanos()
            _ = try revoke()
            let status = try spawnQuiet(["conntrack", "-D", "-p", "tcp", "-s", "10.0.9.5", "-d", "10.0.1.11", "--dport", "22"], in: .named(ns.name))
            guard status == 0 else { throw ValidationError("conntrack -D exited \(status)") }
            process.append(monotonicNanos() - t0)
        }
        guard cutCounts.allSatisfy({ $0 == affected.count }) else { throw ValidationError("cut \(cutCounts), expected 1000 each time") }
        guard indexedCounts.allSatisfy({ $0 == affected.count }) else { throw ValidationError("cut with the index \(indexedCounts), expected 1000 each time") }
        let stats = index.statistics
        // What a delete of the 1,000 costs with and without an event listener (the index's
        // socket gets a DESTROY event per deleted entry): the same deletes, the index running,
        // then stopped (its socket has left the event groups).
        // Alternately: past the index (it listens to DESTROY meanwhile) and through it (it leaves
        // the group for Rampart's own deletes, as revocation does).
        var deleteListened: [UInt64] = [], deleteThroughIndex: [UInt64] = [], deleteAlone: [UInt64] = []
        for _ in 0..<repeats {
            for through in [false, true] {
                try ct.create(affected)
                _ = index.entries(involving: [])
                let live = try ct.entries(ConntrackFilter(family: .ipv4, field: .originalSource(ConntrackAddress(ipv4: bastion))))
                t0 = monotonicNanos()
                if through {
                    _ = try index.deleting(live) { (e) throws(NetlinkError) in try ct.delete(e) }
                    deleteThroughIndex.append(monotonicNanos() - t0)
                } else {
                    _ = try ct.delete(live)
                    deleteListened.append(monotonicNanos() - t0)
                }
            }
        }
        index.stop()  // leaves the event groups: no more events for it
        // A socket subscribed like the index's that nobody reads: the kernel's part of the cost
        // (building and queueing a DESTROY event per entry) without the index's thread.
        /// The 1,000 entries made again, then deleted (timed), `repeats` times; `after` runs
        /// after each delete, untimed.
        func deletionTimes(after: () throws -> Void = {}) throws -> [UInt64] {
            var times: [UInt64] = []
            for _ in 0..<repeats {
                try ct.create(affected)
                let live = try ct.entries(ConntrackFilter(family: .ipv4, field: .originalSource(ConntrackAddress(ipv4: bastion))))
                let start = monotonicNanos()
                _ = try ct.delete(live)
                times.append(monotonicNanos() - start)
                try after()
            }
            return times
        }
        let unread = try ConntrackEvents(namespace: .named(ns.name), groups: [.new, .destroy], receiveBuffer: 64 << 20)
        let deleteUnread = try deletionTimes { _ = try unread.drain { _ in } }
        unread.unsubscribe()
        deleteAlone = try deletionTimes()
        report.note("conntrack: deleting the 1,000 entries (by tuple and id): \(formatDuration(median(deleteThroughIndex))) (p99 \(formatDuration(percentile(deleteThroughIndex, 99)))) through the index (out of the DESTROY group meanwhile), \(formatDuration(median(deleteListened))) (p99 \(formatDuration(percentile(deleteListened, 99)))) with the index listening, \(formatDuration(median(deleteUnread))) (p99 \(formatDuration(percentile(deleteUnread, 99)))) with a subscribed socket nobody reads during the deletes, \(formatDuration(median(deleteAlone))) (p99 \(formatDuration(percentile(deleteAlone, 99)))) with no listener")
        let left = try ct.entries(ConntrackFilter(family: .ipv4)).count
        let extra = ["p99": formatDuration(percentile(cut, 99)), "samples": "\(cut.count)", "entries": "\(entries)", "cut": "1000",
                     "kernel_walks": "\(dumps.sorted()[dumps.count / 2])", "entries_left": "\(left)",
                     "added_by_cut": formatDuration(median(cut) > median(noCut) ? median(cut) - median(noCut) : 0), "target_added": "≤ 2 ms",
                     "delete": formatDuration(median(dumpDelete))]
        report.add(Figure(benchmark: "conntrack revoke → committed and cut (\(entries) entries, 1,000 affected)", median_ns: median(cut),
                          baseline: "the same revoke + conntrack -D (process)", baseline_median_ns: median(process), extra: extra))
        report.add(Figure(benchmark: "conntrack revoke → committed and cut with the index (\(entries) entries, 1,000 affected)", median_ns: median(indexed),
                          baseline: "the same revoke, entries found by dumping", baseline_median_ns: median(cut),
                          extra: ["p99": formatDuration(percentile(indexed, 99)), "samples": "\(indexed.count)", "cut": "1000",
                                  "added_by_cut": formatDuration(median(indexed) > median(noCut) ? median(indexed) - median(noCut) : 0),
                                  "target_added": "≤ 2 ms", "kernel_walks": "0", "fell_back_to_dump": "\(notIndexed)",
                                  "index_entries": "\(stats.entries)", "index_events": "\(stats.events)", "index_losses": "\(stats.losses)",
                                  "index_bytes_per_entry": "\(perEntry)",
                                  "find_and_evaluate": formatDuration(median(indexFind)), "delete": formatDuration(median(indexDelete))]))
        report.add(Figure(benchmark: "conntrack revoke → committed, no cut", median_ns: median(noCut), baseline: nil, baseline_median_ns: nil,
                          extra: ["p99": formatDuration(percentile(noCut, 99)), "samples": "\(noCut.count)"]))
        report.finish()
    }
}

/// The process's resident memory (/proc/self/statm), in bytes.
func residentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}
