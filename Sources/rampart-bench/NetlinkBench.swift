import ArgumentParser
import Foundation
import RampartHarness
import RampartNetlink
import RampartSystem

/// `rampart-bench netlink`: the netlink layer against `nft` doing the same work, in the same run,
/// each in a throwaway network namespace.
struct NetlinkBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "netlink",
        abstract: "Bulk rules, bulk elements and one-element commits: netlink vs the nft process.")

    @OptionGroup var options: CommonBenchOptions

    func run() throws {
        let report = Report(json: options.json)
        let bulkRepeats = options.repeats ?? 7
        let ns = try TestNamespace(prefix: "bench")
        let nl = try NFTablesConnection(namespace: .named(ns.name))
        let table = "bench"
        let where_ = NetworkNamespace.named(ns.name)

        report.note("netlink benchmarks in namespace \(ns.name) (medians of \(bulkRepeats) runs for bulk loads)")

        // 10,000 rules in one batch vs nft -f of the same ruleset.
        /// One bulk load both ways, after checking that both load the same table.
        func bulk(_ name: String, _ batch: Batch, _ text: String, baseline: String, extra: [String: String]) throws {
            try verifySame(ns: ns, nl: nl, table: table, batch: batch, text: text)
            let ours = try measureFresh(nl: nl, table: table, repeats: bulkRepeats) { try nl.commit(batch) }
            let file = try temporaryFile(text)
            let theirs = try measureFresh(nl: nl, table: table, repeats: bulkRepeats) {
                try expectSuccess(spawnQuiet(["nft", "-f", file], in: where_))
            }
            report.add(Figure(benchmark: name, median_ns: median(ours), baseline: baseline, baseline_median_ns: median(theirs),
                              extra: extra.merging(["target": "≥1.5× faster than nft -f"]) { a, _ in a }))
        }
        let rules = BulkRuleset(table: table, chains: 100, rules: 10_000)
        try bulk("netlink.bulk_10k_rules", rules.batch(), rules.nftText(), baseline: "nft -f (same ruleset)", extra: ["rules": "10000"])
        let elements = BulkElements(table: table, count: 100_000)
        try bulk("netlink.bulk_100k_elements", elements.batch(), elements.nftText(), baseline: "nft -f (same set)",
                 extra: ["elements": "100000"])

        // The element lists' encoding alone (no kernel), written directly and through libnftnl
        // objects (as before `ElementListWriter`), alternating.
        let bulk = elements.batch()
        var direct: [UInt64] = [], throughLibnftnl: [UInt64] = []
        for k in 0..<(2 * bulkRepeats) {
            let viaLibnftnl = k % 2 == 1
            let t0 = monotonicNanos()
            _ = try bulk.encodedLength(elementsThroughLibnftnl: viaLibnftnl)
            (viaLibnftnl ? { throughLibnftnl.append(monotonicNanos() - t0) } : { direct.append(monotonicNanos() - t0) })()
        }
        report.add(Figure(benchmark: "netlink.encode_100k_elements", median_ns: median(direct),
                          baseline: "the same through libnftnl objects", baseline_median_ns: median(throughLibnftnl),
                          extra: ["elements": "100000", "note": "encoding only, no kernel"]))

        // One element committed: add then delete, alternating, on a table with a set of 1,000.
        try resetTable(nl: nl, table: table)
        try nl.commit(BulkElements(table: table, count: 1_000).batch())
        let one = [NFTSetElement(key: [172, 16, 0, 1])]
        var add = true
        let hot = try measure(repeats: options.repeats ?? 2_000) {
            try nl.commit(Batch([add ? .addElements(family: .inet, table: table, set: "s", elements: one)
                                     : .deleteElements(family: .inet, table: table, set: "s", elements: one)]))
            add.toggle()
        }
        if !add { try nl.commit(Batch([.deleteElements(family: .inet, table: table, set: "s", elements: one)])) }
        // An isolated commit (after 10 ms idle) pays cold caches; report it too.
        var isolated: [UInt64] = []
        for i in 0..<(options.repeats.map { min($0, 200) } ?? 200) {
            usleep(10_000)
            let op: BatchOperation = i % 2 == 0 ? .addElements(family: .inet, table: table, set: "s", elements: one)
                                           : .deleteElements(family: .inet, table: table, set: "s", elements: one)
            let t0 = monotonicNanos()
            try nl.commit(Batch([op]))
            isolated.append(monotonicNanos() - t0)
        }
        if isolated.count % 2 == 1 { try nl.commit(Batch([.deleteElements(family: .inet, table: table, set: "s", elements: one)])) }
        var nftToggle = true
        let nftOne = try measure(repeats: options.repeats.map { min($0, 40) } ?? 40) {
            try expectSuccess(spawnQuiet(["nft", nftToggle ? "add" : "delete", "element", "inet", table, "s", "{ 172.16.0.1 }"], in: where_))
            nftToggle.toggle()
        }
        report.add(Figure(benchmark: "netlink.one_element_commit", median_ns: median(hot),
                          baseline: "nft add/delete element (one process each)", baseline_median_ns: median(nftOne),
                          extra: ["target": "≤0.3 ms", "p99_ns": "\(percentile(hot, 99))"]))
        report.add(Figure(benchmark: "netlink.one_element_commit_isolated", median_ns: median(isolated),
                          baseline: "nft add/delete element (one process each)", baseline_median_ns: median(nftOne),
                          extra: ["note": "after 10 ms idle each", "p99_ns": "\(percentile(isolated, 99))"]))

        let gen = try measure(repeats: 2_000) { _ = try nl.generation() }
        report.add(Figure(benchmark: "netlink.getgen_round_trip", median_ns: median(gen), baseline: nil, baseline_median_ns: nil))
        report.finish()
    }

    private func temporaryFile(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "rampart-bench-\(getpid())-\(text.count).nft"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    private func expectSuccess(_ status: Int32) throws {
        guard status == 0 else { throw HarnessError("baseline command failed with status \(status)") }
    }

    /// Times `body` with the table absent before each run (removed outside the timing).
    private func measureFresh(nl: NFTablesConnection, table: String, repeats: Int,
                              _ body: () throws -> Void) throws -> [UInt64] {
        var samples: [UInt64] = []
        for _ in 0..<repeats {
            try resetTable(nl: nl, table: table)
            let t0 = monotonicNanos()
            try body()
            samples.append(monotonicNanos() - t0)
        }
        return samples
    }

    private func resetTable(nl: NFTablesConnection, table: String) throws {
        if try nl.readTable(family: .inet, name: table) != nil {
            try nl.commit(Batch([.deleteTable(family: .inet, name: table)]))
        }
    }

    /// Both ways of loading must produce the same ruleset, or the comparison means nothing.
    private func verifySame(ns: TestNamespace, nl: NFTablesConnection, table: String, batch: Batch, text: String) throws {
        // A big hash set keeps resizing in the background after a bulk insert, and a listing
        // that spans several netlink datagrams can then skip or repeat elements (nft's as much
        // as ours: see docs/netlink.md): list until two listings agree.
        func settledListing() throws -> String {
            var last = try ns.nft("list", "table", "inet", table).stdout
            for _ in 0..<20 {
                let next = try ns.nft("list", "table", "inet", table).stdout
                if next == last { return next }
                last = next
            }
            throw HarnessError("nft list of table \(table) never settled")
        }
        try resetTable(nl: nl, table: table)
        try nl.commit(batch)
        let ours = try settledListing()
        try resetTable(nl: nl, table: table)
        try ns.nft("-f", "-", input: text)
        let theirs = try settledListing()
        guard ours == theirs else {
            let a = ours.split(separator: "\n"), b = theirs.split(separator: "\n")
            let i = (0..<min(a.count, b.count)).first { a[$0] != b[$0] } ?? min(a.count, b.count)
            throw HarnessError("netlink and nft -f loaded different rulesets; first difference at line \(i + 1): "
                               + "netlink \"\(i < a.count ? a[i] : "<end>")\" vs nft \"\(i < b.count ? b[i] : "<end>")\"")
        }
    }
}

/// A table of regular chains full of rules like a hypervisor's: prefix, port, counter, accept.
struct BulkRuleset {
    var table: String
    var chains: Int
    var rules: Int

    private func rule(_ i: Int) -> (chain: String, a: Int, b: Int, port: Int) {
        ("c\(i % chains)", (i / 250) % 250, i % 250, 1 + i % 60_000)
    }

    func batch() -> Batch {
        var b = Batch([.addTable(NFTTable(family: .inet, name: table))])
        for c in 0..<chains { b.append(.addChain(NFTChain(family: .inet, table: table, name: "c\(c)"))) }
        for i in 0..<rules {
            let r = rule(i)
            let port = UInt16(r.port)
            b.append(.addRule(NFTRule(family: .inet, table: table, chain: r.chain,
                                   expressions: NFTMatch.address(.source, [10, UInt8(r.a), UInt8(r.b), 0], prefixLength: 24)
                                       + NFTMatch.port(protocol: 6, destination: true, port...port)
                                       + NFTMatch.counter + [.verdict(.accept)])))
        }
        return b
    }

    func nftText() -> String {
        var s = "table inet \(table) {\n"
        var byChain = [[String]](repeating: [], count: chains)
        for i in 0..<rules {
            let r = rule(i)
            byChain[i % chains].append("ip saddr 10.\(r.a).\(r.b).0/24 tcp dport \(r.port) counter accept")
        }
        for c in 0..<chains {
            s += "chain c\(c) {\n" + byChain[c].map { "  \($0)\n" }.joined() + "}\n"
        }
        return s + "}\n"
    }
}

/// A table with one IPv4 hash set of `count` elements.
struct BulkElements {
    var table: String
    var count: Int

    private func address(_ i: Int) -> [UInt8] { [10, UInt8(truncatingIfNeeded: i >> 16), UInt8(truncatingIfNeeded: i >> 8), UInt8(truncatingIfNeeded: i)] }

    func batch() -> Batch {
        Batch([
            .addTable(NFTTable(family: .inet, name: table)),
            .addSet(NFTSetDefinition(family: .inet, table: table, name: "s", keyType: .ipv4Address)),
            .addElements(family: .inet, table: table, set: "s", elements: (0..<count).map { NFTSetElement(key: address($0)) }),
        ])
    }

    func nftText() -> String {
        let elems = (0..<count).map { address($0).map(String.init).joined(separator: ".") }.joined(separator: ",")
        return "table inet \(table) {\nset s {\ntype ipv4_addr\nelements = { \(elems) }\n}\n}\n"
    }
}
