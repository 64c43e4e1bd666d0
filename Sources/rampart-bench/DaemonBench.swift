import RampartBackends
import ArgumentParser
import Foundation
import RampartCore
import RampartDaemon
import RampartHarness
import RampartNetlink
import RampartStore

/// `rampart-bench daemon`: the daemon at host-1k, in a throwaway namespace, through its API on a
/// Unix socket: API call → committed for a membership refresh and a rules refresh, beside a whole
/// reload of the host (the classic way: rebuild the host's state) in the same run; and a burst of
/// refresh calls from 8 clients, with how many kernel commits it took.
struct DaemonBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "rampartd at host-1k: API call → committed (members, rules refresh), burst throughput and commits.")
    @OptionGroup var options: CommonBenchOptions

    @Option(help: "Refresh calls in the burst.")
    var burst: Int = 1000

    func run() throws {
        let report = Report(json: options.json)
        let repeats = options.repeats ?? 201
        let ns = try TestNamespace(prefix: "bd")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rampart-bench-\(getpid())").path
        try? FileManager.default.removeItem(atPath: dir)
        let store = try SQLiteStore(path: dir + "/rampart.db")
        // host-1k from the engine bench, every instance with an interface on its own host.
        var doc = Scenarios.hostDocument(instances: 1_000)
        for (id, inst) in doc.instances where inst.host != doc.host { doc.instances[id]!.interface = "t" + id }
        var t0 = monotonicNanos()
        _ = try store.importDocument(doc)
        report.note("store: host-1k imported in \(formatDuration(monotonicNanos() - t0)) (\(doc.instances.count) instances, \(doc.groups.count) groups)")

        let target = BackendChoice(.nftables, netns: ns.name)
        let (daemon, index) = try target.benchDaemon(host: doc.host, store: store)
        let socket = dir + "/rampartd.sock"
        let server = APIServer(socketPath: socket, router: APIRouter(daemon: daemon))
        t0 = monotonicNanos()
        daemon.start()
        let started = DispatchSemaphore(value: 0)
        Task { try? await server.start(); started.signal() }
        started.wait()
        while !daemon.currentStatus.ready {
            if let e = daemon.currentStatus.lastError { throw ValidationError(e) }
            Thread.sleep(forTimeInterval: 0.005)
        }
        let first = monotonicNanos() - t0
        report.add(Figure(benchmark: "daemon host-1k first sync (store → kernel, one transaction)", median_ns: first, baseline: nil, baseline_median_ns: nil,
                          extra: ["chains": "\(daemon.currentStatus.chains)", "sets": "\(daemon.currentStatus.sets)"]))
        let client = DaemonClient(socketPath: socket)

        func call(_ r: Refresh) throws -> UInt64 {
            let t = monotonicNanos()
            let resp = try client.deliver(r, wait: true)
            let ns = monotonicNanos() - t
            guard resp.status == 200 else { throw ValidationError("\(r): \(resp.status) \(resp.body)") }
            return ns
        }

        // A group that local rules reference: a member elsewhere joins and leaves it.
        guard case .group(let referenced) = doc.groups["g0"]!.rules[0].remote else { throw ValidationError("scenario") }
        func toggleMember() throws {
            if try store.instance("bench-m") == nil {
                _ = try store.addInstance("bench-m", Instance(host: "hv-bench", groups: [referenced], ips: [IPAddress("10.250.0.1")!], interface: "tbench"))
            } else {
                _ = try store.removeInstance("bench-m")
            }
        }
        var members: [UInt64] = []
        for i in 0..<repeats {
            _ = i
            try toggleMember()
            members.append(try call(.members(referenced)))
        }
        // The rules of a local group: a rule comes and goes.
        let extraRule = try RulesCodec.parseRule(#"{"protocol":"tcp","ports":"8080","cidr":"10.1.0.0/16"}"#, group: "g0", references: [])
        var rules: [UInt64] = []
        for i in 0..<repeats {
            if i % 2 == 0 { _ = try store.authorize(group: "g0", rule: extraRule) } else { _ = try store.revoke(group: "g0", rule: extraRule, id: nil) }
            rules.append(try call(.rules("g0")))
        }
        // Baseline: the same membership change applied by reloading the whole host.
        var reload: [UInt64] = []
        for i in 0..<max(3, repeats / 10) {
            _ = i
            try toggleMember()
            reload.append(try call(.host))
        }
        func add(_ name: String, _ s: [UInt64], baseline: String?, _ b: [UInt64]?, target: (UInt64, UInt64)? = nil) {
            var e = ["p99": formatDuration(percentile(s, 99)), "samples": "\(s.count)"]
            if let (p50, p99) = target {
                e["target"] = "p50 ≤ \(formatDuration(p50)), p99 ≤ \(formatDuration(p99))"
                e["met"] = median(s) <= p50 && percentile(s, 99) <= p99 ? "yes" : "NO"
            }
            report.add(Figure(benchmark: name, median_ns: median(s), baseline: baseline, baseline_median_ns: b.map(median), extra: e))
        }
        add("daemon host-1k membership refresh: API call → committed", members, baseline: "whole-host reload through the API", reload,
            target: (2_000_000, 10_000_000))
        add("daemon host-1k rules refresh: API call → committed", rules, baseline: "whole-host reload through the API", reload)

        // Burst: 100 membership changes in the store, then `burst` refresh calls from 8 clients
        // (no waiting), then one call that waits for everything.
        for i in 0..<100 {
            _ = try store.addInstance("burst-\(i)", Instance(host: "hv-burst", groups: ["g\(i % Scenarios.groupCount)"],
                                                           ips: [IPAddress("10.251.0.\(i + 1)")!], interface: "tb\(i)"))
        }
        let commitsBefore = daemon.currentStatus.commits
        let perClient = burst / 8
        t0 = monotonicNanos()
        let group = DispatchGroup()
        for c in 0..<8 {
            group.enter()
            Thread {
                for i in 0..<perClient { _ = try? client.deliver(.members("g\((c * perClient + i) % Scenarios.groupCount)"), wait: false) }
                group.leave()
            }.start()
        }
        group.wait()
        let sent = monotonicNanos() - t0
        _ = try call(.members("g0"))
        let done = monotonicNanos() - t0
        let commits = daemon.currentStatus.commits - commitsBefore
        let calls = perClient * 8
        report.add(Figure(benchmark: "daemon host-1k burst of \(calls) refresh calls (8 clients) → all committed", median_ns: done,
                          baseline: nil, baseline_median_ns: nil,
                          extra: ["calls_per_second": String(format: "%.0f", Double(calls) / (Double(sent) / 1e9)),
                                  "kernel_commits": "\(commits)", "calls": "\(calls)"]))
        let stopped = DispatchSemaphore(value: 0)
        Task { await server.stop(); stopped.signal() }
        stopped.wait()
        daemon.stop()
        index.stop()
        try? FileManager.default.removeItem(atPath: dir)
        report.finish()
    }
}
