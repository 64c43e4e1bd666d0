import ArgumentParser
import Foundation
import RampartConntrack
import RampartCore
import RampartDaemon
import RampartHarness
import RampartStore

/// `rampart-bench ec2`: the EC2 API (`rampart-api`, the release binary beside this one) over
/// SQLite and over PostgreSQL: DescribeSecurityGroups of 1,000 groups and
/// AuthorizeSecurityGroupIngress, one client on a keep-alive connection (p50, p99, requests/s),
/// beside the same store call made in-process in the same run (what the `rampart` verb or the
/// API itself asks of the store, without HTTP, the form and the XML).
struct EC2Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ec2",
        abstract: "rampart-api: DescribeSecurityGroups (1,000 groups) and AuthorizeSecurityGroupIngress over SQLite and PostgreSQL, beside in-process store calls.",
        discussion: "Build the server first: swift build -c release --product rampart-api. Requests are unsigned (--no-auth): SigV4 verification (two HMACs) is not in the figures.")
    @OptionGroup var options: CommonBenchOptions

    @Option(help: "Security groups created before measuring.")
    var groups = 1000

    func run() throws {
        let report = Report(json: options.json)
        let api = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("rampart-api").path
        guard FileManager.default.isExecutableFile(atPath: api) else {
            throw ValidationError("\(api) is missing: swift build -c release --product rampart-api")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rampart-bench-ec2-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try measureStore("SQLite", address: dir + "/rampart.db", api: api, report: report)
        let cluster = try PostgresCluster(database: "rampart")
        defer { cluster.destroy() }
        try cluster.start()
        try measureStore("PostgreSQL", address: cluster.url, api: api, report: report)
        report.finish()
    }

    func measureStore(_ name: String, address: String, api: String, report: Report) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rampart-bench-ec2-hv-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/rampartd.sock"
        let server = try APIProcess(binary: api, store: address, socket: socket)
        defer { server.stop() }
        let client = try HTTPClient(port: server.port)
        let store = try StoreAddress(address).openForWriting()
        let caller = (account: "000000000000", region: "us-east-1")

        var t0 = monotonicNanos()
        var ids: [String] = []
        for i in 0..<groups {
            let xml = try client.call(["Action": "CreateSecurityGroup", "GroupName": "bench-\(i)", "GroupDescription": "bench group \(i)"])
            guard let r = xml.range(of: "<groupId>"), let e = xml.range(of: "</groupId>") else { throw ValidationError("CreateSecurityGroup: \(xml)") }
            ids.append(String(xml[r.upperBound..<e.lowerBound]))
        }
        guard ids.count > Self.clients else { throw ValidationError("--groups must be more than \(Self.clients)") }
        report.note("\(name): \(groups) groups created through the API in \(formatDuration(monotonicNanos() - t0))")

        // The hypervisor: the first group has a member on `hv-ec2`, whose daemon enforces
        // nftables in a namespace of its own (SQLite: served on the socket the API delivers to;
        // PostgreSQL: following the host's change log).
        let target = ids[0]
        _ = try store.addInstance("i-bench-member", Instance(host: Self.host, groups: [target], ips: [IPAddress("10.20.0.5")!], interface: "tapbench"))
        let ns = try TestNamespace(prefix: "ec2")  // removed when released
        let hypervisor = try Hypervisor(address: address, netns: ns.name, socket: socket)
        defer { hypervisor.stop() }

        // Context for the figures below: one statement's round trip to the store.
        let rtt = try measure(repeats: 201) { _ = try store.groupExists(target) }
        report.add(Figure(benchmark: "ec2 \(name): one statement's round trip (in-process)", median_ns: median(rtt), baseline: nil, baseline_median_ns: nil,
                          extra: ["p99": formatDuration(percentile(rtt, 99))]))

        // DescribeSecurityGroups: every group of the account (the default VPC's `default` too).
        let describeRepeats = options.repeats ?? 31
        t0 = monotonicNanos()
        let describe = try measure(repeats: describeRepeats) { _ = try client.call(["Action": "DescribeSecurityGroups"]) }
        let describeWall = monotonicNanos() - t0
        let describeBase = try measure(repeats: describeRepeats) {
            _ = try store.ec2Read { tx in try tx.groups(account: caller.account, region: caller.region) }
        }
        add(report, "ec2 \(name): DescribeSecurityGroups (\(groups + 1) groups), API call → answer", describe, wall: describeWall,
            baseline: "the same groups read in-process (EC2Transaction.groups)", describeBase)

        // AuthorizeSecurityGroupIngress of one rule to the group with a member, until the
        // hypervisor's daemon has committed it; revoked (untimed, also applied) before the next.
        // Baseline: the controller verb (`rampart group authorize`: the store call, then the
        // delivery to the daemon or its change-log row applied), same group and rule.
        let authorizeRepeats = options.repeats ?? 201
        let permission = ["IpPermissions.1.IpProtocol": "tcp", "IpPermissions.1.FromPort": "8080", "IpPermissions.1.ToPort": "8080",
                          "IpPermissions.1.IpRanges.1.CidrIp": "10.9.0.0/16", "GroupId": target]
        var authorize: [UInt64] = []
        let startPosition = hypervisor.position
        for _ in 0..<authorizeRepeats {
            let mark = hypervisor.position
            let t = monotonicNanos()
            _ = try client.call(permission.merging(["Action": "AuthorizeSecurityGroupIngress"]) { $1 })
            try hypervisor.waitPast(mark)
            authorize.append(monotonicNanos() - t)
            let before = hypervisor.position
            _ = try client.call(permission.merging(["Action": "RevokeSecurityGroupIngress"]) { $1 })
            try hypervisor.waitPast(before)
        }
        guard case .ok(let cidr) = IPPrefix.parse("10.9.0.0/16") else { throw ValidationError("prefix") }
        let rule = Rule(id: "bench-rule", proto: .tcp, ports: 8080...8080, remote: .cidr(cidr))
        var authorizeBase: [UInt64] = []
        for _ in 0..<authorizeRepeats {
            let t = monotonicNanos()
            try hypervisor.apply(try store.authorize(group: target, rule: rule))
            authorizeBase.append(monotonicNanos() - t)
            try hypervisor.apply(try store.revoke(group: target, rule: nil, id: "bench-rule"))
        }
        // Every change, through the API and through the verb, was applied on the hypervisor.
        guard hypervisor.position - startPosition >= Int64(4 * authorizeRepeats) else {
            throw ValidationError("the hypervisor applied \(hypervisor.position - startPosition) changes, expected \(4 * authorizeRepeats)")
        }
        add(report, "ec2 \(name): AuthorizeSecurityGroupIngress (one rule, a member on a daemon host), API call → committed on the hypervisor",
            authorize, wall: authorize.reduce(0, +), baseline: "the controller verb: store call + delivery, until committed on the hypervisor", authorizeBase)

        // Eight clients at once, each on its own keep-alive connection: DescribeSecurityGroups of
        // one group by id, and Authorize/Revoke pairs on a group of its own (no members: the
        // API and the store's share). Baseline: the same calls from one client.
        let seconds = Self.seconds
        let one = try concurrent(clients: 1, port: server.port, seconds: seconds) { [ids] k, _ in ["Action": "DescribeSecurityGroups", "GroupId.1": ids[1 + k]] }
        let eight = try concurrent(clients: Self.clients, port: server.port, seconds: seconds) { [ids] k, _ in ["Action": "DescribeSecurityGroups", "GroupId.1": ids[1 + k]] }
        addConcurrent(report, "ec2 \(name): DescribeSecurityGroups of one group, \(Self.clients) clients", eight, one, target: "≥ 2,000 calls/s")
        let pair: @Sendable (Int, Int) -> [String: String] = { [ids] k, n in
            ["Action": n % 2 == 0 ? "AuthorizeSecurityGroupIngress" : "RevokeSecurityGroupIngress",
             "GroupId": ids[1 + k], "IpPermissions.1.IpProtocol": "tcp", "IpPermissions.1.FromPort": "9090", "IpPermissions.1.ToPort": "9090",
             "IpPermissions.1.IpRanges.1.CidrIp": "10.8.0.0/16"]
        }
        let pairOne = try concurrent(clients: 1, port: server.port, seconds: seconds, pairs: true, pair)
        let pairEight = try concurrent(clients: Self.clients, port: server.port, seconds: seconds, pairs: true, pair)
        addConcurrent(report, "ec2 \(name): Authorize/Revoke pairs (one rule, no members), \(Self.clients) clients", pairEight, pairOne, target: nil)
    }

    static let host = "hv-ec2"
    static let clients = 8
    static let seconds = 3.0

    /// What `concurrent` measured: every call's latency and the calls per second of all clients.
    struct Throughput {
        var latencies: [UInt64] = []
        var perSecond: Double = 0
    }

    /// `clients` threads, each with its own connection, call the API for `seconds` with the form
    /// `form(client, n)` (n counts that client's calls). With `pairs`, a client stops only after
    /// an even number of calls (every Authorize revoked).
    func concurrent(clients: Int, port: Int, seconds: Double, pairs: Bool = false,
                    _ form: @escaping @Sendable (Int, Int) -> [String: String]) throws -> Throughput {
        final class Shared: @unchecked Sendable {
            let lock = NSLock()
            var latencies: [UInt64] = []
            var failure: String?
        }
        let shared = Shared()
        let connections = try (0..<clients).map { _ in try HTTPClient(port: port) }
        let group = DispatchGroup()
        let t0 = monotonicNanos()
        let stopAt = t0 + UInt64(seconds * 1e9)
        for (k, connection) in connections.enumerated() {
            group.enter()
            let box = UncheckedBox(connection)
            Thread {
                var mine: [UInt64] = []
                var n = 0
                do {
                    while monotonicNanos() < stopAt || (pairs && n % 2 == 1) {
                        let t = monotonicNanos()
                        _ = try box.value.call(form(k, n))
                        mine.append(monotonicNanos() - t)
                        n += 1
                    }
                } catch {
                    shared.lock.withLock { shared.failure = "client \(k): \(error)" }
                }
                shared.lock.withLock { shared.latencies += mine }
                group.leave()
            }.start()
        }
        group.wait()
        let elapsed = Double(monotonicNanos() - t0) / 1e9
        if let failure = shared.failure { throw ValidationError(failure) }
        return Throughput(latencies: shared.latencies, perSecond: Double(shared.latencies.count) / elapsed)
    }

    func addConcurrent(_ report: Report, _ name: String, _ many: Throughput, _ one: Throughput, target: String?) {
        var extra = ["p99": formatDuration(percentile(many.latencies, 99)), "calls_per_s": String(format: "%.0f", many.perSecond),
                     "one_client_calls_per_s": String(format: "%.0f", one.perSecond), "baseline_p99": formatDuration(percentile(one.latencies, 99)),
                     "samples": "\(many.latencies.count)"]
        if let target { extra["target"] = target }
        report.add(Figure(benchmark: name, median_ns: median(many.latencies), baseline: "the same calls from one client",
                          baseline_median_ns: median(one.latencies), extra: extra))
    }

    /// One figure: median, p99 and requests/s of one client (calls over their wall time).
    func add(_ report: Report, _ name: String, _ samples: [UInt64], wall: UInt64, baseline: String, _ base: [UInt64]) {
        let perSecond = wall > 0 ? Double(samples.count) * 1e9 / Double(wall) : 0
        report.add(Figure(benchmark: name, median_ns: median(samples), baseline: baseline, baseline_median_ns: median(base),
                          extra: ["p99": formatDuration(percentile(samples, 99)), "requests_per_s": String(format: "%.0f", perSecond),
                                  "baseline_p99": formatDuration(percentile(base, 99)), "samples": "\(samples.count)"]))
    }
}

/// `rampart-api --no-auth` on a free port, over `store`.
final class APIProcess {
    let process = Process()
    let port: Int

    /// `socket`: the daemon the API delivers to with a SQLite store (it may start later).
    init(binary: String, store: String, socket: String) throws {
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--store", store, "--listen", "127.0.0.1:0", "--no-auth", "--account", "000000000000",
                             "--socket", socket]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let d = out.fileHandleForReading.availableData
            if d.isEmpty { break }
            line += d
        }
        let text = String(decoding: line, as: UTF8.self)
        guard let r = text.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression), let p = Int(text[r].split(separator: ":").last!) else {
            process.terminate()
            throw ValidationError("rampart-api did not start: \(text)")
        }
        port = p
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
    }
}

/// A minimal HTTP/1.1 client on one keep-alive TCP connection: POSTs a form, reads the answer
/// by its Content-Length.
final class HTTPClient {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ValidationError("socket: errno \(errno)") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw ValidationError("connect 127.0.0.1:\(port): errno \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit { close(fd) }

    /// The answer's body; a status other than 200 is an error.
    func call(_ form: [String: String]) throws -> String {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))
        let body = form.sorted { $0.key < $1.key }
            .map { "\($0.key.addingPercentEncoding(withAllowedCharacters: allowed)!)=\($0.value.addingPercentEncoding(withAllowedCharacters: allowed)!)" }
            .joined(separator: "&")
        let request = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body
        var bytes = Array(request.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeMutableBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw ValidationError("send: errno \(errno)") }
            sent += n
        }
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        func fill() throws {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            guard n > 0 else { throw ValidationError("recv: connection closed (errno \(errno))") }
            buffer += chunk[0..<n]
        }
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        var headerEnd: Int?
        while headerEnd == nil {
            try fill()
            headerEnd = buffer.indices.dropLast(3).first { buffer[$0..<$0 + 4].elementsEqual(separator) }
        }
        let head = String(decoding: buffer[..<headerEnd!], as: UTF8.self)
        let lines = head.split(separator: "\r\n")
        guard let status = lines.first?.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { throw ValidationError("bad answer: \(head)") }
        let length = lines.dropFirst().compactMap { line -> Int? in
            let kv = line.split(separator: ":", maxSplits: 1)
            return kv.count == 2 && kv[0].lowercased() == "content-length" ? Int(kv[1].trimmingCharacters(in: .whitespaces)) : nil
        }.first ?? 0
        let start = headerEnd! + 4
        while buffer.count < start + length { try fill() }
        let answer = String(decoding: buffer[start..<start + length], as: UTF8.self)
        guard status == 200 else { throw ValidationError("HTTP \(status): \(answer)") }
        return answer
    }
}

/// A value handed to one thread that alone uses it.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// The bench's hypervisor `EC2Bench.host`: a real daemon enforcing nftables in a namespace.
/// SQLite: served on the Unix socket the API (and the verb's delivery) reach; PostgreSQL:
/// following its host's change log. `position` tells how far it has applied.
final class Hypervisor {
    private var socketDaemon: (Daemon, APIServer, DaemonClient, ConntrackIndex)?
    private var logDaemon: LiveDaemon?

    init(address: String, netns: String, socket: String) throws {
        if address.hasPrefix("postgres") {
            let d = try LiveDaemon(url: address, host: EC2Bench.host, netns: netns)
            try d.waitReady()
            logDaemon = d
        } else {
            socketDaemon = try SQLiteBaseline.startDaemon(host: EC2Bench.host, store: address, netns: netns, socket: socket)
        }
    }

    private var daemon: Daemon { socketDaemon?.0 ?? logDaemon!.daemon }

    /// How far the daemon has applied: the change-log position (PostgreSQL), or its commits
    /// (SQLite: the API returns only after the daemon has committed what it delivered).
    var position: Int64 { logDaemon.map(\.applied) ?? Int64(daemon.currentStatus.commits) }

    /// Waits until the daemon has applied past `mark` (30 s at most).
    func waitPast(_ mark: Int64) throws {
        if let logDaemon {
            // Woken when the position moves, not polled (`Daemon.waitForChangeLog`).
            guard logDaemon.daemon.waitForChangeLog(appliedThrough: mark + 1, deadline: Date(timeIntervalSinceNow: 30)) else {
                throw ValidationError("\(EC2Bench.host) did not apply a change within 30 s")
            }
            return
        }
        let deadline = monotonicNanos() + 30_000_000_000
        while position <= mark {
            if monotonicNanos() > deadline { throw ValidationError("\(EC2Bench.host) did not apply a change within 30 s") }
            usleep(50)
        }
    }

    /// What the controller verb does after its store call: SQLite, deliver each refresh and
    /// wait for its commit (as `rampart` does); PostgreSQL, wait until the host's row is applied.
    func apply(_ deliveries: [Delivery]) throws {
        guard deliveries.contains(where: { $0.host == EC2Bench.host }) else { throw ValidationError("the verb did not reach \(EC2Bench.host)") }
        if let (_, _, client, _) = socketDaemon {
            for d in deliveries where d.host == EC2Bench.host {
                let r = try client.deliver(d.refresh, wait: true)
                guard r.status == 200 else { throw ValidationError("\(d): \(r.status) \(r.body)") }
            }
        } else {
            let target = deliveries.filter { $0.host == EC2Bench.host }.compactMap(\.sequence).max() ?? 0
            try waitPast(target - 1)
        }
    }

    func stop() {
        if let d = socketDaemon { SQLiteBaseline.stopDaemon(d) }
        logDaemon?.stop()
    }
}
