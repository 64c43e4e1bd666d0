import Foundation
import RampartSystem

/// A cloud you can touch (scripts/demo-cloud, and the EC2 API's compute tests): hypervisors in
/// namespaces joined by a fabric (`CloudTopology`, no instances yet), a fresh SQLite store that
/// knows them (guarded prefix `tap`), one `rampartd` per hypervisor namespace on its own socket,
/// and `rampart-api` on 127.0.0.1 with `--compute netns` over them, signed with a key file it
/// writes (0600). Instances come from `aws ec2 run-instances`; each is a namespace named as its
/// id. `destroy()` (also on deinit) stops the processes and removes the namespaces of the
/// store's instances, the cloud and the directory.
public final class ComputeCloud: @unchecked Sendable {
    /// An access key of the API's key file.
    public struct Key: Sendable {
        public var id: String
        public var secret: String
        public var account: String
    }

    public let cloud: CloudTopology
    /// The store, key file, sockets and logs.
    public let directory: String
    public let storePath: String
    public let keyPath: String
    public let key: Key
    public let region = "us-east-1"
    /// The hypervisors' host names (also their `CloudTopology` names).
    public let hosts: [String]
    /// rampart-api's port on 127.0.0.1.
    public private(set) var port = 0
    public var endpoint: String { "http://127.0.0.1:\(port)" }

    private let binaries: String
    private let lock = NSLock()
    private var processes: [(name: String, process: ChildProcess)] = []
    private let destroyed = OnceFlag()

    /// Builds the cloud and starts everything, with the executables found in `binaries`
    /// (`rampart`, `rampartd`, `rampart-api`); `port` 0 lets rampart-api pick one. On failure
    /// everything made so far is removed.
    public init(binaries: String, hosts: [String] = ["hv1", "hv2"], port: Int = 0) throws {
        self.binaries = binaries
        self.hosts = hosts
        let dir = try Self.makeDirectory()
        directory = dir
        storePath = dir + "/rampart.db"
        keyPath = dir + "/ec2-keys"
        key = Key(id: "AKIA" + Self.randomText(16, from: "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"),
                  secret: Self.randomText(40, from: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"),
                  account: "123456789012")
        do {
            cloud = try CloudTopology(hypervisors: hosts.map { CloudHypervisorSpec(name: $0, instances: []) })
        } catch {
            try? FileManager.default.removeItem(atPath: dir)
            throw error
        }
        do {
            try start(port: port)
        } catch {
            destroy()
            throw error
        }
    }

    deinit { destroy() }

    /// The hypervisor namespace of `host`.
    public func namespace(ofHost host: String) -> String { cloud.namespace(ofHypervisor: host) }

    /// The API socket of `host`'s rampartd.
    public func socket(ofHost host: String) -> String { directory + "/\(host).sock" }

    /// The log file of a process this fixture started ("rampart-api", "rampartd-hv1").
    public func log(_ name: String) -> String { directory + "/\(name).log" }

    /// The environment for the aws CLI (and boto3) as this cloud's key, in its region, with no
    /// configuration file and no retries.
    public var environment: [String: String] {
        ["AWS_ACCESS_KEY_ID": key.id, "AWS_SECRET_ACCESS_KEY": key.secret, "AWS_DEFAULT_REGION": region,
         "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_PAGER": "",
         "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"]
    }

    /// `aws ec2 ARGS --endpoint-url … --output json`, as this cloud's key.
    public func aws(_ arguments: [String]) throws -> CommandResult {
        try Command(["aws", "ec2"] + arguments + ["--endpoint-url", endpoint, "--output", "json"],
                    environment: environment, timeout: 60).run()
    }

    /// `aws ec2 ARGS` that must succeed: its JSON output (an empty object for none).
    public func awsJSON(_ arguments: [String]) throws -> [String: Any] {
        let r = try aws(arguments)
        guard r.succeeded else { throw HarnessError("aws ec2 \(arguments.joined(separator: " ")): \(r.stderr)") }
        if r.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { return [:] }
        guard let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            throw HarnessError("aws ec2 \(arguments.joined(separator: " ")): not a JSON object: \(r.stdout)")
        }
        return json
    }

    /// `aws ec2 run-instances` of one instance on `host` in `groups`: its id and address.
    public func launch(on host: String, groups: [String]) throws -> (id: String, address: String) {
        let json = try awsJSON(["run-instances", "--image-id", "ami-00000001", "--count", "1", "--placement", "HostId=\(host)"]
                               + (groups.isEmpty ? [] : ["--security-group-ids"] + groups))
        guard let i = (json["Instances"] as? [[String: Any]])?.first, let id = i["InstanceId"] as? String,
              let address = i["PrivateIpAddress"] as? String else {
            throw HarnessError("run-instances answered no instance: \(json)")
        }
        return (id, address)
    }

    /// The namespaces that exist of the instances the store knows, live or terminated (its
    /// `ec2_instances` and `ec2_terminated` tables, docs/ec2-api.md): a terminated instance's
    /// namespace is left only if the driver failed to remove it.
    public func instanceNamespaces() -> [String] {
        let query = "SELECT id FROM ec2_instances UNION SELECT id FROM ec2_terminated"
        guard let r = try? runCommand(["sqlite3", "-readonly", storePath, query]), r.succeeded else { return [] }
        return r.stdout.split(separator: "\n").map(String.init)
            .filter { $0.hasPrefix("i-") && !$0.contains("/") && FileManager.default.fileExists(atPath: "/run/netns/\($0)") }.sorted()
    }

    /// Stops rampart-api and every rampartd, removes the instance namespaces of the store's
    /// instances, the cloud's namespaces and the directory (idempotent).
    public func destroy() {
        guard destroyed.claim() else { return }
        let running = lock.withLock { defer { processes = [] }; return processes }
        // rampart-api first: nothing creates an instance any more.
        for p in running { p.process.signal(SIGTERM) }
        for p in running where (try? p.process.wait(timeout: 10)) == nil {
            p.process.signal(SIGKILL)
            _ = try? p.process.wait()
        }
        for ns in instanceNamespaces() { removeNamespace(ns) }
        cloud.destroy()
        try? FileManager.default.removeItem(atPath: directory)
    }

    // MARK: start-up

    private func start(port: Int) throws {
        for host in hosts {
            try runCommand([binaries + "/rampart", "host", "guard", host, "--prefix", "tap", "--store", storePath, "--no-deliver"], check: true)
        }
        for host in hosts {
            try spawn("rampartd-\(host)", [binaries + "/rampartd", "--host", host, "--store", storePath, "--socket", socket(ofHost: host),
                                           "--netns", namespace(ofHost: host), "--log-level", "warning"])
            try waitFor("rampartd for \(host)") { Self.answers(socket: socket(ofHost: host)) }
        }
        let keys = "# rampart demo cloud: ACCESS_KEY_ID SECRET_ACCESS_KEY ACCOUNT_ID\n\(key.id) \(key.secret) \(key.account)\n"
        guard FileManager.default.createFile(atPath: keyPath, contents: Data(keys.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw HarnessError("cannot write \(keyPath)")
        }
        try spawn("rampart-api", [binaries + "/rampart-api", "--store", storePath, "--keys", keyPath, "--listen", "127.0.0.1:\(port)",
                                  "--region", region, "--compute", "netns", "--compute-fabric", cloud.fabric.name]
                  + hosts.flatMap { ["--socket", socket(ofHost: $0), "--compute-host", "\($0)=\(namespace(ofHost: $0))"] })
        // Its first line names the port bound.
        try waitFor("rampart-api") {
            let text = (try? String(contentsOfFile: log("rampart-api"), encoding: .utf8)) ?? ""
            guard let r = text.range(of: #"listening on 127\.0\.0\.1:\d+"#, options: .regularExpression) else { return false }
            self.port = Int(text[r].split(separator: ":").last!) ?? 0
            return true
        }
    }

    /// Starts a process with its output appended to `log(name)`.
    private func spawn(_ name: String, _ arguments: [String]) throws {
        // The shell only redirects: exec replaces it, so the process is the one we signal.
        let command = ["/bin/sh", "-c", "exec \"$0\" \"$@\" >>'\(log(name))' 2>&1"] + arguments
        let child = try Command(command, output: .discard).spawn()
        lock.withLock { processes.insert((name, child), at: 0) }
    }

    /// Polls `ready` for up to 20 s; throws with the logs if it never holds or a process died.
    private func waitFor(_ what: String, _ ready: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if ready() { return }
            let exited = lock.withLock { processes.filter { (try? $0.process.poll()) ?? nil != nil }.map(\.name) }
            if !exited.isEmpty { break }
            usleep(50_000)
        }
        let logs = lock.withLock { processes.map(\.name) }.map { "== \($0)\n" + ((try? String(contentsOfFile: log($0), encoding: .utf8)) ?? "") }
        throw HarnessError("\(what) did not start:\n" + logs.joined(separator: "\n"))
    }

    /// Whether a daemon answers `GET /v1/status` with 200 on `socket` (ready: first sync done).
    static func answers(socket path: String) -> Bool {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        guard let address = try? UnixSocketAddress(path), (try? address.connect(fd)) != nil,
              sendAll(fd, "GET /v1/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n") else { return false }
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = recv(fd, &buffer, buffer.count, 0)
        return n > 0 && String(decoding: buffer[0..<n], as: UTF8.self).hasPrefix("HTTP/1.1 200")
    }

    /// A directory of root's, 0700.
    private static func makeDirectory() throws -> String {
        var template = Array((FileManager.default.temporaryDirectory.path + "/rampart-cloud-XXXXXX").utf8CString)
        guard let p = mkdtemp(&template) else { throw HarnessError("mkdtemp: \(errnoText(errno))") }
        return String(cString: p)
    }

    private static func randomText(_ count: Int, from alphabet: String) -> String {
        let letters = Array(alphabet)
        var g = SystemRandomNumberGenerator()
        return String((0..<count).map { _ in letters[Int.random(in: 0..<letters.count, using: &g)] })
    }
}
