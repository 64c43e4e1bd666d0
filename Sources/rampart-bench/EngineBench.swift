import ArgumentParser
import Foundation
import RampartCore
import RampartCoreTestSupport

/// `rampart-bench engine`: the in-memory core. Every incremental event is measured beside the
/// naive way of doing the same thing (edit the document, compile everything, diff), in the same
/// run, so the ratio shows how incremental it is; the fan-out query beside a scan of the cloud.
struct EngineBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "engine",
        abstract: "Core engine: compile, incremental events vs recompile+diff, fan-out at a million groups.")
    @OptionGroup var options: CommonBenchOptions

    @Option(name: .customLong("scenario"), help: "Run only these scenarios (host-1k, host-5k, cloud-1M); default all.")
    var scenarios: [String] = []

    func run() throws {
        let known = ["host-1k", "host-5k", "cloud-1M"]
        for s in scenarios where !known.contains(s) { throw ValidationError("unknown scenario \(s); expected one of \(known.joined(separator: ", "))") }
        let selected = scenarios.isEmpty ? known : scenarios
        let report = Report(json: options.json)
        let fast = options.repeats ?? 301
        let slow = max(3, (options.repeats ?? 301) / 30)
        for (name, n) in [("host-1k", 1_000), ("host-5k", 5_000)] where selected.contains(name) {
            try hostScenario(instances: n, report: report, fast: fast, slow: slow)
        }
        if selected.contains("cloud-1M") { cloudScenario(report: report, queries: max(fast, 1_001), slow: 3) }
        report.finish()
    }

    // MARK: host-N

    func add(_ report: Report, _ name: String, _ samples: [UInt64], baseline: String? = nil, _ base: [UInt64]? = nil,
             target: UInt64? = nil, extra: [String: String] = [:]) {
        var e = extra
        let m = median(samples)
        e["p99"] = formatDuration(percentile(samples, 99))
        if let target {
            e["target"] = "≤ " + formatDuration(target)
            e["met"] = m <= target ? "yes" : "NO"
        }
        report.add(Figure(benchmark: name, median_ns: m, baseline: baseline, baseline_median_ns: base.map(median), extra: e))
    }

    func hostScenario(instances n: Int, report: Report, fast: Int, slow: Int) throws {
        let tag = "host-\(n / 1000)k"
        report.note("\(tag): generating (\(n) instances here, \(Scenarios.groupCount) groups, \(Scenarios.groupCount * Scenarios.remoteMembersPerGroup) members elsewhere)")
        let doc = Scenarios.hostDocument(instances: n)
        try doc.validate()
        var engine = Engine(host: doc.host)
        _ = try engine.apply(document: doc)
        let ir = engine.planned!
        let rules = ir.chains.values.reduce(0) { $0 + $1.rules.count }
        let naiveName = "recompile all + diff"

        // Full compile, beside the classic driver's expansion of the same policy (one rule per
        // instance × rule × remote member, as iptables-restore text).
        let compile = measure(repeats: slow * 3) { _ = Compiler.compile(doc) }
        var classicRules = 0
        let classic = measure(repeats: slow) { classicRules = Scenarios.classicExpansion(doc) }
        let firstPlan = measure(repeats: slow * 3) { _ = diff(from: nil, to: ir) }
        add(report, "\(tag) full compile", compile, baseline: "classic per-member expansion", classic, target: n == 1_000 ? 20_000_000 : nil,
            extra: ["chains": "\(ir.chains.count)", "rules": "\(rules)", "sets": "\(ir.sets.count)", "classic_rules": "\(classicRules)"])
        add(report, "\(tag) first plan (diff from empty)", firstPlan)

        func naive(_ edit: (inout Document) -> Void) -> [UInt64] {
            let committed = engine.planned
            var d = engine.document
            edit(&d)
            return measure(repeats: slow) { _ = diff(from: committed, to: Compiler.compile(d)) }
        }

        // Membership change: one member elsewhere joins (and, alternately, leaves) a referenced group.
        let g = "g0"
        let joiner = Instance(host: "hv7", groups: [g], ips: [.v4(IPv4Address(raw: 0x0c00_0001))])
        var members: [UInt64] = []
        var ops = 0
        for _ in 0..<fast {
            var t0 = monotonicNanos()
            let p = try engine.membersChanged(group: g, added: ["joiner": joiner])
            members.append(monotonicNanos() - t0)
            ops = p.ops.count
            t0 = monotonicNanos()
            _ = try engine.membersChanged(group: g, removed: ["joiner"])
            members.append(monotonicNanos() - t0)
        }
        let naiveMembers = naive { $0.instances["joiner"] = joiner }
        add(report, "\(tag) membership change → plan", members, baseline: naiveName, naiveMembers, target: 20_000, extra: ["ops": "\(ops)"])

        // Rules change: a group's rules alternate between two versions (one rule's port differs).
        let oldRules = engine.document.groups[g]!.rules
        var newRules = oldRules
        newRules[0].ports = 2222...2222
        var rulesT: [UInt64] = []
        for i in 0..<fast {
            let t0 = monotonicNanos()
            let p = try engine.rulesChanged(group: g, rules: i % 2 == 0 ? newRules : oldRules)
            rulesT.append(monotonicNanos() - t0)
            ops = p.ops.count
        }
        let naiveRules = naive { $0.groups[g]!.rules = newRules }
        add(report, "\(tag) rules change → plan", rulesT, baseline: naiveName, naiveRules, target: 100_000, extra: ["ops": "\(ops)"])

        // Instance plug (and unplug, measured separately): a new instance in two existing groups.
        let vm = Instance(host: doc.host, groups: ["g3", "g4"], ips: [.v4(IPv4Address(raw: 0x0d00_0001))], interface: "tapnew")
        var plug: [UInt64] = [], unplug: [UInt64] = []
        for _ in 0..<fast {
            var t0 = monotonicNanos()
            let p = try engine.instancePlugged(id: "new", instance: vm)
            plug.append(monotonicNanos() - t0)
            ops = p.ops.count
            t0 = monotonicNanos()
            _ = try engine.instanceUnplugged(id: "new")
            unplug.append(monotonicNanos() - t0)
        }
        let naivePlug = naive { $0.instances["new"] = vm }
        add(report, "\(tag) instance plug → plan", plug, baseline: naiveName, naivePlug, target: 50_000, extra: ["ops": "\(ops)"])
        add(report, "\(tag) instance unplug → plan", unplug, baseline: naiveName, naivePlug)

        // Groups of an instance change.
        var regroup: [UInt64] = []
        let orig = engine.document.instances["vm1"]!.groups
        for i in 0..<fast {
            let t0 = monotonicNanos()
            _ = try engine.instanceGroupsChanged(id: "vm1", groups: i % 2 == 0 ? [orig[0], "g9"] : orig)
            regroup.append(monotonicNanos() - t0)
        }
        let naiveRegroup = naive { $0.instances["vm1"]!.groups = [orig[0], "g9"] }
        add(report, "\(tag) instance groups change → plan", regroup, baseline: naiveName, naiveRegroup)

        // The engine must have stayed exact through all of it.
        guard engine.planned == Compiler.compile(engine.document) else {
            throw ValidationError("\(tag): incremental IR diverged from the full compile")
        }
    }

    // MARK: cloud-1M

    static func maxRSSBytes() -> UInt64 {
        var u = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
        return UInt64(u.ru_maxrss) * 1024
    }

    func cloudScenario(report: Report, queries: Int, slow: Int) {
        let groups = 1_000_000, instances = 1_000_000, hosts = 10_000
        report.note("cloud-1M: generating \(groups) groups, \(instances) instances on \(hosts) hosts")
        var rng = Scenarios.RNG(state: 7)
        let groupNames = (0..<groups).map { "g\($0)" }
        let hostNames = (0..<hosts).map { "h\($0)" }
        // Each group: 5 rules, 2 of which reference a group; each instance in 2 groups.
        let refs: [(Int32, Int32)] = (0..<groups).map { _ in
            (Int32.random(in: 0..<Int32(groups), using: &rng), Int32.random(in: 0..<Int32(groups), using: &rng))
        }
        let memberships: [(Int32, Int32)] = (0..<instances).map { _ in
            (Int32.random(in: 0..<Int32(groups), using: &rng), Int32.random(in: 0..<Int32(groups), using: &rng))
        }
        let instanceNames = (0..<instances).map { "i\($0)" }
        let rssBefore = Self.maxRSSBytes()

        let t0 = monotonicNanos()
        var index = CloudIndex()
        index.reserve(groups: groups, instances: instances, hosts: hosts)
        for g in 0..<groups {
            index.setReferences(of: groupNames[g], to: [groupNames[Int(refs[g].0)], groupNames[Int(refs[g].1)]])
        }
        for i in 0..<instances {
            let m = memberships[i]
            index.setInstance(instanceNames[i], host: hostNames[i % hosts], groups: [groupNames[Int(m.0)], groupNames[Int(m.1)]])
        }
        let build = monotonicNanos() - t0
        let rssAfter = Self.maxRSSBytes()
        report.add(Figure(benchmark: "cloud-1M build indexes", median_ns: build, baseline: nil, baseline_median_ns: nil, extra: [
            "target": "≤ 10 s, ≤ 4 GiB", "met": build <= 10_000_000_000 && rssAfter <= 4 << 30 ? "yes" : "NO",
            "peak_rss": String(format: "%.0f MiB", Double(rssAfter) / 1_048_576),
            "rss_growth": String(format: "%.0f MiB", Double(rssAfter - rssBefore) / 1_048_576),
        ]))

        var total = 0
        var probe = Scenarios.RNG(state: 99)
        let probes = (0..<queries).map { _ in groupNames[Int.random(in: 0..<groups, using: &probe)] }
        var k = 0
        let members = measure(repeats: queries) {
            total += index.hostsForMembersRefresh(probes[k]).count
            k += 1
        }
        k = 0
        let rules = measure(repeats: queries) {
            total += index.hostsForRulesRefresh(probes[k]).count
            k += 1
        }
        let scanMembers = measure(repeats: slow) { total += index.scanHostsForMembersRefresh(probes[0]).count }
        let scanRules = measure(repeats: slow) { total += index.scanHostsForRulesRefresh(probes[0]).count }
        add(report, "cloud-1M fan-out members refresh", members, baseline: "scan of the cloud", scanMembers, target: 10_000,
            extra: ["mean_answer": String(format: "%.1f hosts", Double(total) / Double(2 * queries))])
        add(report, "cloud-1M fan-out rules refresh", rules, baseline: "scan of the cloud", scanRules, target: 10_000)

        // An incremental index update (an instance moves host), for scale.
        var moves = 0
        let move = measure(repeats: queries) {
            let i = moves % instances
            let m = memberships[i]
            index.setInstance(instanceNames[i], host: hostNames[(i + 1 + moves) % hosts], groups: [groupNames[Int(m.0)], groupNames[Int(m.1)]])
            moves += 1
        }
        add(report, "cloud-1M index update (instance moves)", move)
        if total < 0 { print(total) }
    }
}
