import RampartBackends
import ArgumentParser
import Foundation
import RampartCore
import RampartHarness
import RampartIPTables
import RampartNetlink

/// `rampart-bench iptables`: the iptables backend at host-1k, each change from the Engine's
/// event to the kernel, beside the classic driver's full `iptables-restore` of the per-member
/// expansion of the same policy (what it runs for every one of these changes).

struct IPTablesBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iptables",
        abstract: "iptables backend at host-1k: cold apply, membership, rules, plug vs the classic full restore.")
    @OptionGroup var options: CommonBenchOptions

    @Option(name: .customLong("iptables"), help: "Which iptables: legacy, nft, or both (default both).")
    var variants: [IPTablesVariant] = []

    @Option(help: "Instances on the host (default 1000: host-1k).")
    var instances = 1_000

    func run() throws {
        let report = Report(json: options.json)
        let doc = Scenarios.hostDocument(instances: instances)
        try doc.validate()
        for v in variants.isEmpty ? IPTablesVariant.allCases : variants {
            try scenario(v, doc, report)
        }
        report.finish()
    }

    func add(_ report: Report, _ name: String, _ samples: [UInt64], baseline: String? = nil, _ base: [UInt64]? = nil,
             extra: [String: String] = [:]) {
        var e = extra
        e["p99"] = formatDuration(percentile(samples, 99))
        e["runs"] = "\(samples.count)"
        report.add(Figure(benchmark: name, median_ns: median(samples), baseline: baseline, baseline_median_ns: base.map(median), extra: e))
    }

    func scenario(_ v: IPTablesVariant, _ doc: Document, _ report: Report) throws {
        let tag = "iptables-\(v.rawValue) host-" + (instances % 1000 == 0 ? "\(instances / 1000)k" : "\(instances)")
        let slow = max(3, (options.repeats ?? 301) / 60)
        let fast = options.repeats ?? 301
        let ns = try TestNamespace(prefix: "iptb")
        let backend = IPTablesBackend(variant: v, netns: ns.name)
        report.note("\(tag): namespace \(ns.name), ipsets via \(backend.ipset.kind)")

        // The classic baseline: the whole expanded table, restored (not --noflush).
        let classic = Scenarios.classicRestore(doc)
        let file = NSTemporaryDirectory() + "rampart-classic-\(getpid()).rules"
        try classic.text.write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let restore = "iptables-\(v.rawValue)-restore"
        let classicT = try measure(repeats: slow) {
            // posix_spawn from inside the namespace, as Rampart's own processes: no `ip netns exec`.
            let status = try spawnQuiet([restore, "-w"], in: .named(ns.name), stdinPath: file)
            guard status == 0 else { throw ValidationError("classic restore failed: status \(status)") }
        }
        try ns.run([restore, "-w"], input: "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n", check: true)
        let base = "classic full iptables-restore (\(classic.rules) rules)"

        // Cold apply: from nothing to host-1k (read-back, both restores, every ipset).
        var engine = Engine(host: doc.host)
        _ = try engine.apply(document: doc)
        let ir = engine.planned!
        var summary = ""
        var coldOnly: [UInt64] = []
        for _ in 0..<slow {
            try backend.converge(to: nil)
            let t0 = monotonicNanos()
            summary = try backend.converge(to: ir).summary
            coldOnly.append(monotonicNanos() - t0)
        }
        let st = try backend.readBack()
        let ourRules = st.v4.chains.values.reduce(0) { $0 + $1.count } + st.v6.chains.values.reduce(0) { $0 + $1.count }
        add(report, "\(tag) cold apply", coldOnly, baseline: base, classicT,
            extra: ["rules": "\(ourRules)", "ipsets": "\(st.sets.count)", "summary": summary])

        // Membership change: a member elsewhere joins and leaves a referenced group, event → kernel.
        let g = "g0"
        let joiner = Instance(host: "hv7", groups: [g], ips: [.v4(IPv4Address(raw: 0x0c00_0001))])
        /// A member joins and leaves, `rounds` times: each change timed from the event to the kernel.
        func joinAndLeave(_ b: IPTablesBackend, rounds: Int) throws -> [UInt64] {
            var times: [UInt64] = []
            for _ in 0..<rounds {
                for plan in [{ try engine.membersChanged(group: g, added: ["joiner": joiner]) },
                             { try engine.membersChanged(group: g, removed: ["joiner"]) }] {
                    let t0 = monotonicNanos()
                    try b.commit(try plan(), result: engine.planned)
                    times.append(monotonicNanos() - t0)
                }
            }
            return times
        }
        let members = try joinAndLeave(backend, rounds: fast)
        let m = median(members), c = median(classicT)
        add(report, "\(tag) membership change", members, baseline: base, classicT,
            extra: ["target": "≤ 2 ms and ≥ 1000× the classic restore",
                    "met": m <= 2_000_000 && c >= 1000 * m ? "yes" : "NO", "processes": "0"])

        // The same through the ipset tool (one process per change), for comparison.
        let viaProcess = IPTablesBackend(variant: v, netns: ns.name, ipset: ProcessIPSetWriter(netns: ns.name))
        _ = try viaProcess.readBack()
        let membersProc = try joinAndLeave(viaProcess, rounds: max(21, fast / 10))
        add(report, "\(tag) membership (ipset process)", membersProc, baseline: "libipset in-process (above)", members)

        // Rules change: a group's rules alternate between two versions.
        let oldRules = engine.document.groups[g]!.rules
        var newRules = oldRules
        newRules[0].ports = 2222...2222
        var rulesT: [UInt64] = []
        var rsum = ""
        for i in 0..<max(11, fast / 10) {
            let t0 = monotonicNanos()
            rsum = try backend.commit(try engine.rulesChanged(group: g, rules: i % 2 == 0 ? newRules : oldRules), result: engine.planned).summary
            rulesT.append(monotonicNanos() - t0)
        }
        add(report, "\(tag) rules change", rulesT, baseline: base, classicT, extra: ["summary": rsum])

        // Instance plug (and unplug): a new instance in two existing groups.
        let vm = Instance(host: doc.host, groups: ["g3", "g4"], ips: [.v4(IPv4Address(raw: 0x0d00_0001))], interface: "tapnew")
        var plug: [UInt64] = [], unplug: [UInt64] = []
        var psum = ""
        for _ in 0..<max(11, fast / 10) {
            var t0 = monotonicNanos()
            psum = try backend.commit(try engine.instancePlugged(id: "new", instance: vm), result: engine.planned).summary
            plug.append(monotonicNanos() - t0)
            t0 = monotonicNanos()
            try backend.commit(try engine.instanceUnplugged(id: "new"), result: engine.planned)
            unplug.append(monotonicNanos() - t0)
        }
        add(report, "\(tag) instance plug", plug, baseline: base, classicT, extra: ["summary": psum])
        add(report, "\(tag) instance unplug", unplug, baseline: base, classicT)

        // Exact: the kernel holds what a full render of the final IR says.
        let want = try IPTRender.state(engine.planned)
        let got = try backend.readBack()
        guard got.v4.canonical == want.v4.canonical, got.v6.canonical == want.v6.canonical, got.sets == want.sets else {
            let bad4 = Set(got.v4.chains.keys).union(want.v4.chains.keys).filter { got.v4.canonical.chains[$0] != want.v4.canonical.chains[$0] }
            let bad6 = Set(got.v6.chains.keys).union(want.v6.chains.keys).filter { got.v6.canonical.chains[$0] != want.v6.canonical.chains[$0] }
            let badSets = Set(got.sets.keys).union(want.sets.keys).filter { got.sets[$0] != want.sets[$0] }
            throw ValidationError("\(tag): kernel state diverged from the full render: v4 \(bad4.sorted().prefix(5)) v6 \(bad6.sorted().prefix(5)) sets \(badSets.sorted().prefix(5))")
        }
        try backend.converge(to: nil)
    }
}
