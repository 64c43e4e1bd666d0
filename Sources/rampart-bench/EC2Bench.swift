import ArgumentParser
import Foundation
import RampartCore
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
        let server = try APIProcess(binary: api, store: address)
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
        report.note("\(name): \(groups) groups created through the API in \(formatDuration(monotonicNanos() - t0))")

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

        // AuthorizeSecurityGroupIngress of one rule, revoked (untimed) before the next.
        let target = ids[0]
        let authorizeRepeats = options.repeats ?? 201
        var authorize: [UInt64] = []
        t0 = monotonicNanos()
        var untimed: UInt64 = 0
        for _ in 0..<authorizeRepeats {
            let permission = ["IpPermissions.1.IpProtocol": "tcp", "IpPermissions.1.FromPort": "8080", "IpPermissions.1.ToPort": "8080",
                              "IpPermissions.1.IpRanges.1.CidrIp": "10.9.0.0/16", "GroupId": target]
            let t = monotonicNanos()
            _ = try client.call(permission.merging(["Action": "AuthorizeSecurityGroupIngress"]) { $1 })
            authorize.append(monotonicNanos() - t)
            let u = monotonicNanos()
            _ = try client.call(permission.merging(["Action": "RevokeSecurityGroupIngress"]) { $1 })
            untimed += monotonicNanos() - u
        }
        let authorizeWall = monotonicNanos() - t0 - untimed
        // Baseline: the controller verb's store call (`rampart group authorize`), same group and rule.
        guard case .ok(let cidr) = IPPrefix.parse("10.9.0.0/16") else { throw ValidationError("prefix") }
        let rule = Rule(id: "bench-rule", proto: .tcp, ports: 8080...8080, remote: .cidr(cidr))
        var authorizeBase: [UInt64] = []
        for _ in 0..<authorizeRepeats {
            let t = monotonicNanos()
            _ = try store.authorize(group: target, rule: rule)
            authorizeBase.append(monotonicNanos() - t)
            _ = try store.revoke(group: target, rule: nil, id: "bench-rule")
        }
        add(report, "ec2 \(name): AuthorizeSecurityGroupIngress (one rule), API call → committed", authorize, wall: authorizeWall,
            baseline: "the rampart verb's store call in-process (SQLStore.authorize)", authorizeBase)
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

    init(binary: String, store: String) throws {
        process.executableURL = URL(fileURLWithPath: binary)
        // No daemon listens at --socket: the measured groups have no members, so nothing is delivered.
        process.arguments = ["--store", store, "--listen", "127.0.0.1:0", "--no-auth", "--account", "000000000000",
                             "--socket", "/nonexistent/rampartd.sock"]
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
