import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import RampartCore
import RampartHarness
import RampartRelay
import RampartStore
import RampartSystem

/// `rampart-bench fleet`: a fleet of lightweight subscribers (in this process: each acks every
/// row it is sent, applies nothing) over 2 relays (real `rampart-relay` processes, built next
/// to this one), verbs through the controller on PostgreSQL. For each fleet size:
/// - **COMMIT** of a rules change (one group: ~10 notified hosts), one verb at a time;
/// - **verb → acked**: from the verb's call until every notified host's subscriber has received
///   its row and sent its ack (the relay writes acks to the store in batches, not included);
/// - **sustained**: 8 controller threads for `--seconds`: verbs/s, COMMIT p50/p99, PostgreSQL
///   server CPU per verb (all server processes, /proc);
/// - **direct**: beside it, a smaller fleet (`--direct-hosts`) of LISTEN connections, one per
///   host, as direct mode holds: COMMIT, verb → woken (NOTIFY received; the log read that
///   follows in direct mode is not included), server CPU per verb.
struct FleetBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "Relays: a fleet of subscribers over 2 relays; COMMIT, verb → acked, verbs/s, server CPU; direct LISTEN beside it.")
    @OptionGroup var options: CommonBenchOptions

    @Option(help: "Fleet sizes, comma-separated.")
    var hosts: String = "2500,10000"
    @Option(help: "Hosts of the direct-mode fleet (one LISTEN connection each).")
    var directHosts: Int = 300
    @Option(help: "Seconds of each sustained run.")
    var seconds: Double = 5

    func run() throws {
        let report = Report(json: options.json)
        let sizes = hosts.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !sizes.isEmpty, sizes.allSatisfy({ $0 >= 20 }), directHosts >= 0 else { throw ValidationError("--hosts: sizes of at least 20, comma-separated") }
        let repeats = options.repeats ?? 201
        // A descriptor per subscriber (the relays' ends are in their processes).
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        let needed = rlim_t(sizes.max()! + 4 * directHosts + 1000)
        if limit.rlim_cur < needed {
            limit.rlim_cur = min(max(needed, limit.rlim_cur), limit.rlim_max)
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        guard limit.rlim_cur >= needed else { throw ValidationError("needs \(needed) open files; the hard limit is \(limit.rlim_max)") }
        lineCodec(report: report)
        let cluster = try PostgresCluster(database: "postgres", maxConnections: max(100, directHosts + 50))
        defer { cluster.destroy() }
        try cluster.start()
        for size in sizes { try fleet(size, cluster: cluster, repeats: repeats, report: report) }
        if directHosts > 0 { try direct(directHosts, cluster: cluster, repeats: repeats, report: report) }
        report.finish()
    }

    /// The lines every verb makes, written and read: a `rows` message of two rows (what a
    /// relay writes per notified subscriber and a daemon reads) and an `ack` (the reverse),
    /// through the relay's line codec, beside Foundation's JSON coders (what it replaced).
    func lineCodec(report: Report) {
        let rows = RelayMessage(op: .rows, after: 48_211, head: 48_213, through: 48_213,
                                rows: [.init(seq: 48_212, refresh: "rules:web-tier"), .init(seq: 48_213, refresh: "members:db-primary")])
        let ack = RelayMessage.ack(48_213)
        let allocator = ByteBufferAllocator()
        var direct: [UInt64] = [], foundation: [UInt64] = []
        for _ in 0..<2_001 {
            var t = monotonicNanos()
            for m in [rows, ack] {
                var line = m.line(allocator: allocator)
                line.moveWriterIndex(to: line.writerIndex - 1)
                guard (try? RelayMessage.parse(line)) == m else { fatalError("relay line codec: \(m) did not read back") }
            }
            direct.append(monotonicNanos() - t)
            t = monotonicNanos()
            for m in [rows, ack] {
                let data = try! JSONEncoder().encode(m)
                guard (try? JSONDecoder().decode(RelayMessage.self, from: data)) == m else { fatalError("JSON coders: \(m) did not read back") }
            }
            foundation.append(monotonicNanos() - t)
        }
        report.add(Figure(benchmark: "relay lines of one notified host (rows of 2 + ack, written and read)", median_ns: percentile(direct, 50),
                          baseline: "JSONEncoder + JSONDecoder", baseline_median_ns: percentile(foundation, 50),
                          extra: ["p99": formatDuration(percentile(direct, 99)), "baseline_p99": formatDuration(percentile(foundation, 99))]))
    }

    /// A database holding `hosts` hosts, `hosts` groups and 5 × `hosts` instances (each in 2
    /// groups): a group's rules change notifies ~10 hosts.
    func load(_ hosts: Int, cluster: PostgresCluster) throws -> (url: String, store: PostgresStore) {
        let name = "fleet_\(hosts)_\(getpid())"
        try cluster.createDatabase(name)
        let url = cluster.url(database: name)
        let ctl = try PostgresStore(url: url, migrate: true)
        _ = try cluster.psql(CloudLoad.sql(groups: hosts - hosts % 10, instances: 1000 + 5 * hosts, hosts: hosts), database: name)
        _ = try cluster.psql("ANALYZE", database: name)
        return (url, ctl)
    }

    func fleet(_ n: Int, cluster: PostgresCluster, repeats: Int, report: Report) throws {
        report.note("fleet of \(n) hosts: loading")
        let (url, ctl) = try load(n, cluster: cluster)
        let names = (0..<n).map { "hv\($0)" }
        let tokens = try TokenFile(text: names.map { "\($0) bench-token-\($0)-0123456789" }.joined(separator: "\n"))
        let location = try PostgresLocation(url: url)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rampart-fleet-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tokenPath = dir + "/tokens"
        let tokenText = names.map { "\($0) \(tokens.tokens[$0]!)" }.joined(separator: "\n") + "\n"
        guard FileManager.default.createFile(atPath: tokenPath, contents: Data(tokenText.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw ValidationError("cannot write \(tokenPath)")
        }
        // Baseline: the same verbs with nobody reading the log (no relay, no LISTEN).
        var baseline: [UInt64] = []
        for k in 0..<repeats {
            let start = monotonicNanos()
            _ = try ctl.authorize(group: "g\((k * 7919) % (n - n % 10))", rule: Rule(id: "z\(k)", proto: .tcp, ports: UInt16(30_000 + k)...UInt16(30_000 + k), remote: .cidr(CloudLoad.prefix("0.0.0.0/0"))))
            baseline.append(monotonicNanos() - start)
        }
        // Baseline: the sustained run (below) with nobody reading the log: what the relays'
        // reads and acks add to the server's CPU per verb.
        let (quietRate, quietCPU): (Int, String) = try {
            let quiet = try (0..<8).map { _ in try PostgresStore(location: location, migrate: false) }
            defer { for c in quiet { c.disconnect() } }
            let (b, w, c) = sustained(quiet, groupCount: n - n % 10, cluster: cluster, tag: "q", remote: "172.16.0.0/12")
            return (Int(Double(b.commits.count) / w), String(format: "%.2f ms", c * 1000 / Double(max(b.commits.count, 1))))
        }()
        let relayPath = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("rampart-relay").path
        var relays: [(ChildProcess, Int)] = []
        defer { for (p, _) in relays { p.signal(SIGTERM); _ = try? p.wait(timeout: 10) } }
        for _ in 0..<2 {
            let port = try freeLoopbackPort()
            let p = try Command([relayPath, "--store", url, "--token-file", tokenPath, "--listen", "127.0.0.1:\(port)",
                                 "--max-subscribers", "\(n)", "--status-interval", "0", "--log-level", "warning"], output: .inherit).spawn()
            relays.append((p, port))
        }
        for (_, port) in relays {
            let deadline = Date(timeIntervalSinceNow: 20)
            while relayStatus(port: port)?.connected != true {
                guard Date() < deadline else { throw ValidationError("rampart-relay on port \(port) did not start (is it built? swift build -c release)") }
                Thread.sleep(forTimeInterval: 0.1)
            }
        }
        let endpoints = relays.map { RelayEndpoint(host: "127.0.0.1", port: $0.1) }
        let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? clientGroup.syncShutdownGracefully() }
        let fleet = AckFleet(hosts: names)
        let t0 = monotonicNanos()
        try fleet.connect(tokens: tokens, relays: endpoints, group: clientGroup)
        report.note("fleet of \(n): \(n) subscribers connected and subscribed in \(formatDuration(monotonicNanos() - t0))")

        var rng = SystemRandomNumberGenerator()
        let groupCount = n - n % 10
        var port = 10_000
        func verb(_ store: PostgresStore) throws -> [Delivery] {
            port += 1
            let g = "g\(Int.random(in: 0..<groupCount, using: &rng))"
            return try store.authorize(group: g, rule: Rule(id: "b\(port)", proto: .tcp, ports: UInt16(port % 60000 + 1)...UInt16(port % 60000 + 1), remote: .cidr(CloudLoad.prefix("0.0.0.0/0"))))
        }
        let relayCPU0 = relays.map { processCPUSeconds($0.0.pid) }
        var commits: [UInt64] = [], applied: [UInt64] = [], notified: [Int] = []
        for _ in 0..<repeats {
            let start = monotonicNanos()
            let deliveries = try verb(ctl)
            commits.append(monotonicNanos() - start)
            notified.append(Set(deliveries.map(\.host)).count)
            guard fleet.waitAcked(deliveries, timeout: 10) else { throw ValidationError("fleet of \(n): a verb's rows were not acked within 10 s") }
            applied.append(monotonicNanos() - start)
        }
        let median = notified.sorted()[notified.count / 2]
        report.add(Figure(benchmark: "fleet \(n) via 2 relays: rules change COMMIT", median_ns: percentile(commits, 50),
                          baseline: "the same verbs, nobody reading the log", baseline_median_ns: percentile(baseline, 50),
                          extra: ["p99": formatDuration(percentile(commits, 99)), "target_p50": "2 ms"]))
        report.add(Figure(benchmark: "fleet \(n) via 2 relays: verb → acked on every notified host", median_ns: percentile(applied, 50), baseline: nil, baseline_median_ns: nil,
                          extra: ["p99": formatDuration(percentile(applied, 99)), "notified_hosts_median": "\(median)", "target_p99": "25 ms"]))

        // Sustained: 8 controllers, each its own connection.
        let controllers = try (0..<8).map { _ in try PostgresStore(location: location, migrate: false) }
        let (box, wall, cpu) = sustained(controllers, groupCount: groupCount, cluster: cluster, tag: "s", remote: "10.0.0.0/8")
        let ended = monotonicNanos()
        let drained = fleet.waitAcked(box.lasts, timeout: 30)
        let drainTime = Double(monotonicNanos() - ended) / 1e9
        let verbs = box.commits.count
        report.add(Figure(benchmark: "fleet \(n) via 2 relays: sustained, 8 controllers", median_ns: percentile(box.commits, 50), baseline: nil, baseline_median_ns: nil,
                          extra: ["verbs_per_s": "\(Int(Double(verbs) / wall))", "commit_p99": formatDuration(percentile(box.commits, 99)),
                                  "server_cpu_per_verb": String(format: "%.2f ms", cpu * 1000 / Double(max(verbs, 1))),
                                  "all_acked_after_end": drained ? String(format: "%.2f s", drainTime) : "no (30 s)",
                                  "errors": "\(box.errors.count)", "target": "≥ 1000 verbs/s"]))
        if let first = box.errors.first { report.note("fleet of \(n): \(box.errors.count) verbs failed in the sustained run; the first: \(first)") }
        report.note("fleet of \(n): the same sustained run with nobody reading the log (before the relays started): \(quietRate) verbs/s, \(quietCPU) of server CPU per verb")
        let stats = relays.compactMap { relayStatus(port: $0.1) }
        report.note("fleet of \(n): relays: " + stats.map { "\($0.subscribers) subscribers, \($0.rowsRead) rows read in \($0.storeReads) reads, \($0.rowsSent) sent, \($0.acksWritten) acks in \($0.ackWrites) writes, \($0.reloadsOverflow) overflow reloads" }.joined(separator: "; "))
        let relayCPU = relays.enumerated().map { i, r in String(format: "%.2f", (processCPUSeconds(r.0.pid) - relayCPU0[i]) * 1000 / Double(max(verbs + repeats, 1))) }
        report.note("fleet of \(n): relay CPU per verb (each relay, while verbs ran): \(relayCPU.joined(separator: ", ")) ms")
        fleet.close()
        for c in controllers { c.disconnect() }
        ctl.disconnect()
    }

    /// `seconds` of authorize verbs on random groups from one thread per controller, each on
    /// its own connection (rules from `remote`: each run its own, so none repeats another's).
    /// Returns what they did, the wall time and the server's CPU seconds.
    func sustained(_ controllers: [PostgresStore], groupCount: Int, cluster: PostgresCluster, tag: String,
                   remote: String) -> (SustainedBox, Double, Double) {
        let cpu0 = cluster.serverCPUSeconds()
        let box = SustainedBox()
        let end = Date(timeIntervalSinceNow: seconds)
        let wall0 = monotonicNanos()
        DispatchQueue.concurrentPerform(iterations: controllers.count) { t in
            var local: [UInt64] = [], last: [Delivery] = []
            var k = 0
            while Date() < end {
                k += 1
                let g = "g\((t * 7919 + k * 104_729) % groupCount)"
                let s = monotonicNanos()
                do {
                    last = try controllers[t].authorize(group: g, rule: Rule(id: "\(tag)\(t)-\(k)", proto: .udp, ports: UInt16(k % 60000 + 1)...UInt16(k % 60000 + 1), remote: .cidr(CloudLoad.prefix(remote))))
                    local.append(monotonicNanos() - s)
                } catch { box.fail("\(error)") }
            }
            box.add(local, last)
        }
        return (box, Double(monotonicNanos() - wall0) / 1e9, cluster.serverCPUSeconds() - cpu0)
    }

    /// Direct mode's cost at a smaller fleet: one LISTEN connection per host.
    func direct(_ n: Int, cluster: PostgresCluster, repeats: Int, report: Report) throws {
        report.note("direct mode: \(n) LISTEN connections")
        let (url, ctl) = try load(n, cluster: cluster)
        let location = try PostgresLocation(url: url)
        let fleet = AckFleet(hosts: (0..<n).map { "hv\($0)" })
        var listeners: [PostgresWakeups] = []
        for (i, host) in fleet.hosts.enumerated() {
            let w = PostgresWakeups(location: location)
            try w.start { [fleet] wake in
                // Woken: the host's rows are there to read (the read is not measured).
                if case .appended(let hosts) = wake, hosts?.contains(host) ?? true { fleet.woken(i) }
            }
            listeners.append(w)
        }
        defer { for w in listeners { w.stop() } }
        let groupCount = n - n % 10
        var commits: [UInt64] = [], woken: [UInt64] = []
        var rng = SystemRandomNumberGenerator()
        let cpu0 = cluster.serverCPUSeconds()
        for k in 0..<repeats {
            let before = fleet.snapshot()
            let start = monotonicNanos()
            let deliveries = try ctl.authorize(group: "g\(Int.random(in: 0..<groupCount, using: &rng))",
                                               rule: Rule(id: "d\(k)", proto: .tcp, ports: UInt16(20_000 + k)...UInt16(20_000 + k), remote: .cidr(CloudLoad.prefix("0.0.0.0/0"))))
            commits.append(monotonicNanos() - start)
            guard fleet.waitWoken(Set(deliveries.map(\.host)), after: before, timeout: 10) else { throw ValidationError("direct: not woken within 10 s") }
            woken.append(monotonicNanos() - start)
        }
        let cpu = cluster.serverCPUSeconds() - cpu0
        report.add(Figure(benchmark: "direct \(n) LISTEN: rules change COMMIT", median_ns: percentile(commits, 50), baseline: nil, baseline_median_ns: nil,
                          extra: ["p99": formatDuration(percentile(commits, 99)), "server_cpu_per_verb": String(format: "%.2f ms", cpu * 1000 / Double(repeats))]))
        report.add(Figure(benchmark: "direct \(n) LISTEN: verb → woken on every notified host (reads not included)", median_ns: percentile(woken, 50), baseline: nil, baseline_median_ns: nil,
                          extra: ["p99": formatDuration(percentile(woken, 99))]))
        ctl.disconnect()
    }
}

/// The sustained run's figures, gathered from its threads.
final class SustainedBox: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var commits: [UInt64] = []
    private(set) var lasts: [Delivery] = []
    private(set) var errors: [String] = []
    func add(_ c: [UInt64], _ l: [Delivery]) { lock.withLock { commits += c; lasts += l } }
    func fail(_ e: String) { lock.withLock { errors.append(e) } }
}

/// The bench's subscribers: one raw relay connection per host, acking every row at once.
final class AckFleet: @unchecked Sendable {
    let hosts: [String]
    let index: [String: Int]
    private let condition = NSCondition()
    private var through: [Int64]
    private var wakes: [Int]
    private var channels: [any Channel] = []

    init(hosts: [String]) {
        self.hosts = hosts
        index = Dictionary(uniqueKeysWithValues: hosts.enumerated().map { ($1, $0) })
        through = Array(repeating: -1, count: hosts.count)
        wakes = Array(repeating: 0, count: hosts.count)
    }

    /// Connects every host to its relay (hash-spread, as daemons do), says hello, subscribes
    /// from the host's head, and waits until each is subscribed.
    func connect(tokens: TokenFile, relays: [RelayEndpoint], group: any EventLoopGroup) throws {
        for (i, host) in hosts.enumerated() {
            let relay = RelaySession(host: host, token: "", relays: relays).relays[0]
            let fleet = self
            let ch = try ClientBootstrap(group: group)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineFrameDecoder()))
                        try channel.pipeline.syncOperations.addHandler(AckHandler(fleet: fleet, index: i))
                    }
                }
                .connect(host: relay.host, port: relay.port).wait()
            ch.writeAndFlush(RelayMessage.hello(host: host, token: tokens.tokens[host]!).line(allocator: ch.allocator), promise: nil)
            channels.append(ch)
        }
        let deadline = Date(timeIntervalSinceNow: 120)
        condition.withLock {
            while through.contains(-1) && condition.wait(until: deadline) {}
        }
        guard condition.withLock({ !through.contains(-1) }) else { throw ValidationError("not every subscriber was answered within 120 s") }
    }

    /// A `welcome` (subscribe from its head) or `rows`/`reload` for subscriber `i`.
    fileprivate func received(_ m: RelayMessage, _ i: Int, _ channel: any Channel) {
        switch m.op {
        case .welcome:
            channel.writeAndFlush(RelayMessage.subscribe(host: hosts[i], after: m.head ?? 0).line(allocator: channel.allocator), promise: nil)
        case .rows, .reload:
            guard let t = m.through else { return }
            if !(m.rows ?? []).isEmpty || m.op == .reload {
                channel.writeAndFlush(RelayMessage.ack(t).line(allocator: channel.allocator), promise: nil)
            }
            condition.withLock {
                through[i] = max(through[i], t)
                condition.broadcast()
            }
        default:
            break
        }
    }

    /// Waits until every delivery's host has been sent (and acked) its row.
    func waitAcked(_ deliveries: [Delivery], timeout: Double) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        return condition.withLock {
            func done() -> Bool { deliveries.allSatisfy { d in index[d.host].map { through[$0] >= (d.sequence ?? 0) } ?? true } }
            while !done() { if !condition.wait(until: deadline) { return done() } }
            return true
        }
    }

    // Direct mode: wake-up counts per host.
    func woken(_ i: Int) { condition.withLock { wakes[i] += 1; condition.broadcast() } }
    func snapshot() -> [Int] { condition.withLock { wakes } }
    func waitWoken(_ hosts: Set<String>, after before: [Int], timeout: Double) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        return condition.withLock {
            func done() -> Bool { hosts.allSatisfy { h in index[h].map { wakes[$0] > before[$0] } ?? true } }
            while !done() { if !condition.wait(until: deadline) { return done() } }
            return true
        }
    }

    func close() { for c in channels { c.close(promise: nil) } }
}

private final class AckHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let fleet: AckFleet
    let index: Int
    init(fleet: AckFleet, index: Int) {
        self.fleet = fleet
        self.index = index
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let m = try? RelayMessage.parse(unwrapInboundIn(data)) else { return }
        fleet.received(m, index, context.channel)
    }
}

/// A relay's counters (`{"op":"status"}`), or nil if it does not answer.
func relayStatus(port: Int) -> RelayStatistics? {
    guard let client = try? LoopbackLineClient(port: port, timeout: 2) else { return nil }
    client.send(#"{"op":"status"}"#)
    guard let line = client.receiveLine() else { return nil }
    var buffer = ByteBufferAllocator().buffer(capacity: line.count)
    buffer.writeBytes(line)
    return (try? RelayMessage.parse(buffer))?.statistics
}

/// A process's user + system CPU seconds, from /proc/PID/stat.
func processCPUSeconds(_ pid: pid_t) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = text.lastIndex(of: ")") else { return 0 }
    let fields = text[text.index(after: close)...].split(separator: " ")
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    guard fields.count > 12, let u = Double(fields[11]), let st = Double(fields[12]) else { return 0 }
    return (u + st) / Double(sysconf(Int32(_SC_CLK_TCK)))
}
