import Foundation
import RampartCore
import RampartDaemon
import RampartHarness
import RampartNetlink
import RampartNFTables
import RampartStore
import RampartSystem
import Testing

/// The executables built beside the test bundle.
func executable(_ name: String) -> String {
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    var candidate = dir.appendingPathComponent(name).path
    if !FileManager.default.fileExists(atPath: candidate) {
        candidate = dir.deletingLastPathComponent().appendingPathComponent(name).path
    }
    return candidate
}

/// A hypervisor in namespaces with a daemon programming it (in this process), a store and the
/// daemon's socket in a temp directory, and the `rampart` CLI's controller verbs aimed at both.
final class DaemonHypervisor: @unchecked Sendable {
    static let spec = TopologySpec(
        instances: [
            InstanceSpec(name: "web-1", interface: "tapweb1", addresses: ["10.0.1.11", "fd00::11"]),
            InstanceSpec(name: "db-1", interface: "tapdb1", addresses: ["10.0.2.21", "fd00::21"]),
        ],
        outside: [
            OutsideHostSpec(name: "bastion", addresses: ["10.0.9.5"]),
            OutsideHostSpec(name: "internet", addresses: ["192.0.2.10"]),
        ])

    let topo: HypervisorTopology
    let dir: String
    let storePath: String
    let socketPath: String
    let store: SQLiteStore
    var daemon: Daemon?
    var server: APIServer?

    init(resync: Double = 3600, inProcess: Bool = true) async throws {
        topo = try HypervisorTopology(Self.spec)
        dir = tempDir("kd")
        storePath = dir + "/rampart.db"
        socketPath = dir + "/rampartd.sock"
        store = try SQLiteStore(path: storePath)
        try Self.policy(store)
        if inProcess {
            let d = Daemon(configuration: .init(host: "hv1", namespace: .named(topo.hypervisor.name), resyncInterval: resync), store: store)
            let s = APIServer(socketPath: socketPath, router: APIRouter(daemon: d))
            d.start()
            try await s.start()
            await d.waitUntilReady()
            daemon = d
            server = s
        }
    }

    func stop() async {
        await server?.stop()
        daemon?.stop()
    }

    /// web allows http from anywhere, ssh from admin, all egress; db allows pg from web.
    static func policy(_ st: SQLiteStore) throws {
        for g in ["web", "db", "admin"] { _ = try st.createGroup(g, description: nil) }
        _ = try st.authorize(group: "web", rule: try rule(#"{"id":"http","protocol":"tcp","ports":"80","cidr":"0.0.0.0/0"}"#, "web"))
        _ = try st.authorize(group: "web", rule: try rule(#"{"id":"ssh","protocol":"tcp","ports":"22","group":"admin"}"#, "web", refs: ["admin"]))
        _ = try st.authorize(group: "web", rule: try rule(#"{"direction":"egress","protocol":"any","cidr":"0.0.0.0/0"}"#, "web"))
        _ = try st.authorize(group: "db", rule: try rule(#"{"protocol":"tcp","ports":"5432","group":"web"}"#, "db", refs: ["web"]))
        _ = try st.addInstance("web-1", Instance(host: "hv1", groups: ["web"], ips: [ip("10.0.1.11"), ip("fd00::11")], interface: "tapweb1"))
        _ = try st.addInstance("db-1", Instance(host: "hv1", groups: ["db"], ips: [ip("10.0.2.21"), ip("fd00::21")], interface: "tapdb1"))
    }

    @discardableResult
    func cli(_ args: [String]) throws -> CommandResult {
        try runCommand([executable("rampart")] + args + ["--store", storePath, "--socket", socketPath])
    }

    func expect(_ cases: [(Probe, Bool)], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let results = try topo.probe(cases.map(\.0))
        let wrong = zip(results, cases).filter { $0.passed != $1.1 }
        #expect(wrong.isEmpty, "unexpected: \(wrong.map { "\($0.0.probe) \($0.0.passed ? "passed" : "was dropped")" })", sourceLocation: sourceLocation)
    }

    /// What the kernel holds equals what the store says.
    func kernelMatchesStore() throws -> Bool {
        let expected = Compiler.compile(try store.document(forHost: "hv1"))
        let nl = try NFTablesConnection(namespace: .named(topo.hypervisor.name))
        return try NFTablesBackend(client: nl).readBack(reference: expected) == expected
    }
}

@Suite("rampartd against the kernel, with real traffic", .serialized) struct KernelDaemonTests {
    @Test func controllerVerbsChangeWhatPassesThroughTheDaemon() async throws {
        let h = try await DaemonHypervisor()
        try h.expect([
            (.tcp(from: "internet", to: "10.0.1.11", port: 80), true),
            (.tcp(from: "bastion", to: "10.0.1.11", port: 22), false),  // not an admin member yet
            (.tcp(from: "web-1", to: "10.0.2.21", port: 5432), true),
        ])
        // bastion joins admin: hv1 references admin (web's ssh rule) and gets the members refresh.
        let add = try h.cli(["instance", "add", "bastion", "--host", "hv2", "--ip", "10.0.9.5", "--interface", "tapb", "--group", "admin"])
        #expect(add.status == 0, "\(add.stderr)")
        #expect(add.stdout.contains("sent to hv1: refresh_security_group_members(admin)"), "\(add.stdout)")
        #expect(add.stdout.contains("to hv2: refresh_instance(bastion) (not delivered"), "\(add.stdout)")
        // http is revoked: the rules refresh goes to hv1.
        let revoke = try h.cli(["group", "revoke", "web", "--id", "http"])
        #expect(revoke.status == 0, "\(revoke.stderr)")
        #expect(revoke.stdout.contains("sent to hv1: refresh_security_group_rules(web)"), "\(revoke.stdout)")
        try h.expect([
            (.tcp(from: "internet", to: "10.0.1.11", port: 80), false),
            (.tcp(from: "bastion", to: "10.0.1.11", port: 22), true),
        ])
        // web-1 leaves web: an instance refresh; then a rule to a group new to the host.
        let sg = try h.cli(["instance", "set-groups", "web-1"])
        #expect(sg.status == 0, "\(sg.stderr)")
        let auth = try h.cli(["group", "authorize", "db", "--protocol", "tcp", "--ports", "22", "--group", "admin"])
        #expect(auth.status == 0, "\(auth.stderr)")
        try h.expect([
            (.tcp(from: "bastion", to: "10.0.1.11", port: 22), false),
            (.tcp(from: "web-1", to: "10.0.2.21", port: 5432), false),  // web-1 has no egress now
            (.tcp(from: "bastion", to: "10.0.2.21", port: 22), true),
        ])
        // bad input changes nothing
        let bad = try h.cli(["group", "authorize", "db", "--protocol", "tcp", "--ports", "70000", "--cidr", "0.0.0.0/0"])
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("70000"), "\(bad.stderr)")
        let exported = try h.cli(["export", "--host", "hv1"])
        #expect(try Document.parse(json: exported.stdout) == h.store.exportDocument(forHost: "hv1"))
        #expect(Compiler.compile(try Document.parse(json: exported.stdout)) == Compiler.compile(try h.store.document(forHost: "hv1")))
        #expect(try h.kernelMatchesStore())
        await h.stop()
    }

    @Test func aHandEditIsNoticedAtTheNextRefreshThroughTheGeneration() async throws {
        let h = try await DaemonHypervisor()  // no periodic resync during the test
        // someone opens ssh to web by hand, and someone else commits in another table
        try h.topo.hypervisor.nft("add", "rule", "inet", "rampart", "gin-web", "tcp", "dport", "22", "accept")
        try h.topo.hypervisor.nft("add", "table", "inet", "someone-else")
        try h.expect([(.tcp(from: "internet", to: "10.0.1.11", port: 22), true)])
        // the next refresh's batch is refused (generation moved), the table is read back and repaired
        let r = try DaemonClient(socketPath: h.socketPath).deliver(.members("admin"))
        #expect(r.status == 200, "\(r.body)")
        try h.expect([(.tcp(from: "internet", to: "10.0.1.11", port: 22), false)])
        #expect(try h.kernelMatchesStore())
        #expect(try h.topo.hypervisor.nft("list", "table", "inet", "someone-else").succeeded)  // not ours: untouched
        await h.stop()
    }

    /// Rule 9 through the store, the verb and the daemon: db-1 is removed from the store while
    /// its device stays plugged; without guarded prefixes that device is none of Rampart's
    /// business, with `rampart host guard hv1 --prefix tap` it passes nothing, either way.
    @Test func guardedPrefixesCloseDevicesOfNoInstance() async throws {
        let h = try await DaemonHypervisor()
        #expect(try h.cli(["instance", "remove", "db-1"]).status == 0)
        try h.expect([
            (.tcp(from: "internet", to: "10.0.2.21", port: 5432), true),   // untouched: no instance's device
            (.tcp(from: "internet", to: "10.0.1.11", port: 80), true),
        ])
        let r = try h.cli(["host", "guard", "hv1", "--prefix", "tap"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("sent to hv1: refresh_host"), "\(r.stdout)")
        try h.expect([
            (.tcp(from: "internet", to: "10.0.2.21", port: 5432, timeout: 0.5), false),
            (.udp(from: "db-1", to: "192.0.2.10", port: 7000, timeout: 0.5), false),
            (.tcp(from: "internet", to: "10.0.1.11", port: 80), true),      // instances unaffected
            (.tcp(from: "internet", to: "10.0.1.11", port: 22, timeout: 0.5), false),
        ])
        #expect(try h.topo.hypervisor.nft("list", "chain", "inet", "rampart", "ingress").stdout.contains(#"oifname "tap*" drop"#))
        #expect(try h.kernelMatchesStore())
        #expect(try h.cli(["host", "guard", "hv1", "--prefix", "tap+"]).status == 1)
        await h.stop()
    }

    @Test func importAndExportThroughTheCLI() async throws {
        let h = try await DaemonHypervisor()
        // a document for hv1 that lets the internet in on 22 and adds an instance elsewhere
        let doc = """
            {"version":1,"host":"hv1","groups":{
              "web":{"rules":[{"protocol":"tcp","ports":"22","cidr":"0.0.0.0/0"},{"direction":"egress","protocol":"any","cidr":"0.0.0.0/0"}]}},
             "instances":{
              "web-1":{"host":"hv1","interface":"tapweb1","ips":["10.0.1.11","fd00::11"],"groups":["web"]},
              "far":{"host":"hv9","interface":"tapfar","ips":["10.9.9.9"],"groups":["web"]}}}
            """
        let file = h.dir + "/doc.json"
        try doc.write(toFile: file, atomically: true, encoding: .utf8)
        let r = try h.cli(["import", file])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("sent to hv1: refresh_host"), "\(r.stdout)")
        try h.expect([
            (.tcp(from: "internet", to: "10.0.1.11", port: 22), true),
            (.tcp(from: "internet", to: "10.0.1.11", port: 80), false),  // web's rules were replaced
        ])
        let exported = try h.cli(["export", "--host", "hv1"])
        let back = try Document.parse(json: exported.stdout)
        #expect(back.instances["far"]?.host == "hv9")
        #expect(back.groups["web"]?.rules.count == 2)
        // an invalid document changes nothing
        try #"{"version":1,"host":"hv1","groups":{},"instances":{"x":{"host":"hv1","ips":["10.0.0.1"],"groups":["nope"]}}}"#
            .write(toFile: file, atomically: true, encoding: .utf8)
        let bad = try h.cli(["import", file])
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("nope"), "\(bad.stderr)")
        #expect(try h.cli(["export", "--host", "hv1"]).stdout == exported.stdout)
        // an unknown host is not an empty document
        let typo = try h.cli(["export", "--host", "hv-typo"])
        #expect(typo.status == 1 && typo.stdout.isEmpty && typo.stderr.contains("does not know host hv-typo"), "\(typo.stderr)")
        #expect(try h.kernelMatchesStore())
        await h.stop()
    }

    @Test func aBurstOfAThousandRefreshCallsEndsRightInFewCommits() async throws {
        let h = try await DaemonHypervisor()
        // 50 admin members elsewhere and bastion join in the store; then 1,000 calls from 8 clients
        for i in 0..<50 {
            _ = try h.store.addInstance("adm\(i)", Instance(host: "hv\(2 + i % 3)", groups: ["admin"], ips: [ip("10.6.0.\(i + 1)")], interface: "tapa\(i)"))
        }
        _ = try h.store.addInstance("bastion", Instance(host: "hv2", groups: ["admin"], ips: [ip("10.0.9.5")], interface: "tapb"))
        let commitsBefore = h.daemon!.currentStatus.commits
        let path = h.socketPath
        let statuses = runOnThreads(8) { c in
            (0..<125).map { i in
                (try? DaemonClient(socketPath: path).deliver(i % 3 == 0 ? .rules("web") : .members(c % 2 == 0 ? "admin" : "web"), wait: false))?.status ?? -1
            }
        }.flatMap { $0 }
        #expect(statuses.count == 1000 && statuses.allSatisfy { $0 == 202 }, "\(Set(statuses))")
        let last = try DaemonClient(socketPath: path).deliver(.members("admin"))
        #expect(last.status == 200)
        let commits = h.daemon!.currentStatus.commits - commitsBefore
        #expect(commits >= 1 && commits <= 10, "\(commits) commits")
        #expect(h.daemon!.currentStatus.refreshesReceived >= 1001)
        #expect(try h.kernelMatchesStore())
        try h.expect([(.tcp(from: "bastion", to: "10.0.1.11", port: 22), true)])
        await h.stop()
    }

    @Test func aRuleDeletedByHandIsRepairedWithinTheResyncInterval() async throws {
        let h = try await DaemonHypervisor(resync: 0.5)
        try h.topo.hypervisor.nft("flush", "chain", "inet", "rampart", "gin-web")
        try h.expect([(.tcp(from: "internet", to: "10.0.1.11", port: 80), false)])  // our own drift: web has no rules
        let deadline = Date().addingTimeInterval(3)
        while h.daemon!.currentStatus.driftRepaired == 0 && Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        #expect(h.daemon!.currentStatus.driftRepaired > 0)
        try h.expect([(.tcp(from: "internet", to: "10.0.1.11", port: 80), true)])
        #expect(try h.kernelMatchesStore())
        await h.stop()
    }

    @Test func concurrentClientsOversizedBodiesAndTheSocketMode() async throws {
        let h = try await DaemonHypervisor()
        let path = h.socketPath
        var st = stat()
        #expect(stat(path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        #expect(st.st_uid == 0)
        // 8 clients × 25 refreshes, each waiting for its commit
        // (blocking clients on threads of their own, not on the tasks' pool)
        let statuses = runOnThreads(8) { c in
            (0..<25).map { i in
                let r = try? DaemonClient(socketPath: path).deliver(i % 2 == 0 ? .members(c % 2 == 0 ? "admin" : "web") : .rules("web"))
                return r?.status ?? -1
            }
        }.flatMap { $0 }
        #expect(statuses.count == 200)
        #expect(statuses.allSatisfy { $0 == 200 }, "\(Set(statuses))")
        // an oversized body: 413, and the daemon keeps serving
        let big = try DaemonClient(socketPath: path).request("POST", "/v1/refresh/members/web", body: String(repeating: " ", count: 200_000))
        #expect(big.status == 413)
        #expect(big.body.contains("error"))
        let ok = try DaemonClient(socketPath: path).request("GET", "/v1/status")
        #expect(ok.status == 200 && ok.body.contains("\"ready\":true"))
        // a second server on the same socket refuses to start, and the first keeps serving
        let second = APIServer(socketPath: path, router: h.server!.router)
        await #expect(throws: ServerError.self) { try await second.start() }
        #expect(try DaemonClient(socketPath: path).request("GET", "/v1/status").status == 200)
        // a client that is not root cannot even connect
        let other = try runCommand(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "socat", "-", "UNIX-CONNECT:\(path)"],
                                   input: "GET /v1/status HTTP/1.0\r\n\r\n")
        #expect(other.status != 0)
        #expect(other.stderr.lowercased().contains("permission denied"), "\(other.stderr)")
        await h.stop()
    }
}

/// The real `rampartd` executable: kill -9 in the middle of a burst, restart, convergence, and
/// no probe that the policy denies ever passes; sd_notify READY; SIGTERM leaves the rules.
@Suite("rampartd executable: crash and restart", .serialized) struct DaemonProcessTests {
    final class DaemonProcess: @unchecked Sendable {
        let process: ChildProcess
        init(_ h: DaemonHypervisor, notify: String? = nil, extra: [String] = []) throws {
            let arguments = [executable("rampartd"), "--host", "hv1", "--store", h.storePath, "--socket", h.socketPath,
                             "--netns", h.topo.hypervisor.name, "--resync-interval", "3600", "--log-level", "warning"] + extra
            process = try Command(arguments, output: .inherit, environment: notify.map { ["NOTIFY_SOCKET": $0] } ?? [:]).spawn()
            let deadline = Date().addingTimeInterval(15)
            while Date() < deadline {
                if let r = try? DaemonClient(socketPath: h.socketPath, timeout: 2).request("GET", "/v1/status"), r.status == 200 { return }
                Thread.sleep(forTimeInterval: 0.05)
            }
            throw HarnessError("rampartd did not become ready")
        }
        func kill9() {
            process.signal(SIGKILL)
            _ = try? process.wait()
        }
        func terminate() -> Int32 {
            process.signal(SIGTERM)
            return (try? process.wait()) ?? -1
        }
    }

    /// A datagram socket standing in for systemd's notify socket.
    final class NotifySocket: @unchecked Sendable {
        let fd: Int32
        let path: String
        init(path: String) {
            self.path = path
            fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            try? UnixSocketAddress(path).bind(fd)
            var tv = timeval(tv_sec: 0, tv_usec: 200_000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
        func messages() -> [String] {
            var out: [String] = []
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n <= 0 { break }
                out.append(String(decoding: buf[0..<n], as: UTF8.self))
            }
            return out
        }
        deinit { close(fd); unlink(path) }
    }

    @Test func killDashNineMidBurstThenRestartNeverOpensAnything() async throws {
        let h = try await DaemonHypervisor(inProcess: false)
        let notify = NotifySocket(path: h.dir + "/notify")
        var d = try DaemonProcessTests.DaemonProcess(h, notify: notify.path)
        #expect(notify.messages().contains { $0.contains("READY=1") })
        try h.expect([
            (.tcp(from: "internet", to: "10.0.1.11", port: 80), true),
            (.tcp(from: "internet", to: "10.0.1.11", port: 22), false),
        ])
        let denied: [Probe] = [
            .tcp(from: "internet", to: "10.0.1.11", port: 22, timeout: 0.3),
            .tcp(from: "internet", to: "10.0.2.21", port: 5432, timeout: 0.3),
        ]
        final class Flags: @unchecked Sendable {
            var stop = false; var passed: [String] = []; var probes = 0; var sent = 0; let lock = NSLock()
            var sentCount: Int { lock.withLock { sent } }
            func requestStop() { lock.withLock { stop = true } }
        }
        let flags = Flags()
        let store = h.store
        let socketPath = h.socketPath
        let topo = h.topo
        // the burst: admin members elsewhere come and go; each change is a members refresh
        let burst = Thread {
            for i in 0..<1000 {
                let id = "adm\(i % 20)"
                if (try? store.instance(id)) ?? nil != nil { _ = try? store.removeInstance(id) } else {
                    _ = try? store.addInstance(id, Instance(host: "hv2", groups: ["admin"], ips: [IPAddress("10.7.0.\(i % 20 + 1)")!], interface: "tapa\(i % 20)"))
                }
                _ = try? DaemonClient(socketPath: socketPath, timeout: 1).deliver(.members("admin"), wait: false)
                flags.lock.lock(); flags.sent += 1; flags.lock.unlock()
            }
        }
        // the prober: denied traffic, over and over, until told to stop
        let prober = Thread {
            while true {
                flags.lock.lock(); let stop = flags.stop; flags.lock.unlock()
                if stop { break }
                let results = (try? topo.probe(denied)) ?? []
                flags.lock.lock()
                flags.probes += results.count
                flags.passed += results.filter(\.passed).map { "\($0.probe)" }
                flags.lock.unlock()
            }
        }
        burst.start()
        prober.start()
        while true {
            if flags.sentCount >= 300 { break }
            try await Task.sleep(for: .milliseconds(5))
        }
        d.kill9()
        // the table outlives the daemon
        #expect(try h.topo.hypervisor.nft("list", "table", "inet", "rampart").succeeded)
        try await Task.sleep(for: .milliseconds(500))
        d = try DaemonProcessTests.DaemonProcess(h)
        while !burst.isFinished { try await Task.sleep(for: .milliseconds(20)) }
        // one more refresh after the burst, waited for: everything is in
        let last = try DaemonClient(socketPath: h.socketPath).deliver(.members("admin"))
        #expect(last.status == 200, "\(last.body)")
        flags.requestStop()
        while !prober.isFinished { try await Task.sleep(for: .milliseconds(20)) }
        #expect(flags.probes > 0)
        #expect(flags.passed.isEmpty, "denied probes passed: \(flags.passed)")
        #expect(try h.kernelMatchesStore())
        try h.expect([(.tcp(from: "internet", to: "10.0.1.11", port: 80), true)])
        // SIGTERM: a clean exit, and the rules stay
        #expect(d.terminate() == 0)
        #expect(try h.topo.hypervisor.nft("list", "chain", "inet", "rampart", "gin-web").stdout.contains("dport 80"))
        try h.expect([(.tcp(from: "internet", to: "10.0.1.11", port: 22), false)])
    }
}

@Suite("rampartd socket permissions") struct SocketPermissionTests {
    @Test func aGroupCanBeLetIn() async throws {
        let dir = tempDir("perm")
        let store = try SQLiteStore(path: dir + "/rampart.db")
        try register("hv1", in: store)
        let fake = FakeKernel()
        let d = Daemon(configuration: .init(host: "hv1"), store: store, client: { fake.nft })
        let path = dir + "/s.sock"
        let s = APIServer(socketPath: path, router: APIRouter(daemon: d))
        d.start()
        try await s.start(mode: 0o660, group: 65534)
        await d.waitUntilReady()
        chmod(dir, 0o755)
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o660 && st.st_gid == 65534)
        let member = try runCommand(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "socat", "-", "UNIX-CONNECT:\(path)"],
                                    input: "GET /v1/status HTTP/1.0\r\n\r\n")
        #expect(member.stdout.contains("200 OK"), "\(member.stdout) \(member.stderr)")
        let other = try runCommand(["setpriv", "--reuid=65533", "--regid=65533", "--clear-groups", "socat", "-", "UNIX-CONNECT:\(path)"],
                                   input: "GET /v1/status HTTP/1.0\r\n\r\n")
        #expect(other.status != 0)
        await s.stop()
        d.stop()
    }
}

/// Two hypervisors (two namespaces, two daemons, one store): the CLI delivers each host its own
/// refresh calls and both kernels end equal to their documents.
@Suite("rampart CLI with two daemons") struct TwoDaemonsTests {
    @Test func eachHostGetsItsOwnCalls() async throws {
        let dir = tempDir("two")
        let storePath = dir + "/rampart.db"
        let store = try SQLiteStore(path: storePath)
        for g in ["web", "admin"] { _ = try store.createGroup(g, description: nil) }
        _ = try store.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"22","group":"admin"}"#, "web", refs: ["admin"]))
        _ = try store.addInstance("w1", Instance(host: "hv1", groups: ["web"], ips: [ip("10.0.1.1")], interface: "tapw1"))
        _ = try store.addInstance("w2", Instance(host: "hv2", groups: ["web"], ips: [ip("10.0.1.2")], interface: "tapw2"))
        var namespaces: [TestNamespace] = []
        var daemons: [(Daemon, APIServer, String)] = []
        for h in ["hv1", "hv2"] {
            let ns = try TestNamespace(prefix: "two")
            namespaces.append(ns)
            let d = Daemon(configuration: .init(host: h, namespace: .named(ns.name), resyncInterval: 3600), store: store)
            let sock = dir + "/\(h).sock"
            let s = APIServer(socketPath: sock, router: APIRouter(daemon: d))
            d.start()
            try await s.start()
            await d.waitUntilReady()
            daemons.append((d, s, sock))
        }
        let r = try runCommand([executable("rampart"), "instance", "add", "adm", "--host", "hv3", "--ip", "10.0.9.1",
                                "--interface", "tapadm", "--group", "admin", "--store", storePath,
                                "--socket", daemons[0].2, "--socket", daemons[1].2])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("sent to hv1: refresh_security_group_members(admin)"), "\(r.stdout)")
        #expect(r.stdout.contains("sent to hv2: refresh_security_group_members(admin)"), "\(r.stdout)")
        #expect(r.stdout.contains("to hv3: refresh_instance(adm) (not delivered"), "\(r.stdout)")
        for (i, h) in ["hv1", "hv2"].enumerated() {
            let expected = Compiler.compile(try store.document(forHost: h))
            let nl = try NFTablesConnection(namespace: .named(namespaces[i].name))
            #expect(try NFTablesBackend(client: nl).readBack(reference: expected) == expected, "\(h)")
            #expect(expected.sets["m4-admin"]?.elements.count == 1)
        }
        for (d, s, _) in daemons {
            await s.stop()
            d.stop()
        }
    }
}

/// The real `rampartd` refuses to start, with a clear error, an exit status and the kernel
/// untouched, whenever its store, host or socket is wrong; and its API limits hold.
@Suite("rampartd executable: refusals and limits", .serialized) struct DaemonRefusalTests {
    /// rampartd with these arguments (completing the defaults), run to its exit.
    static func rampartd(_ h: DaemonHypervisor, _ args: [String: String], flags: [String] = []) throws -> CommandResult {
        var a = ["--host": "hv1", "--store": h.storePath, "--socket": h.socketPath, "--netns": h.topo.hypervisor.name]
        a.merge(args) { _, new in new }
        return try runCommand(["timeout", "20", executable("rampartd")] + a.sorted { $0.key < $1.key }.flatMap { [$0.key, $0.value] } + flags)
    }

    static func table(_ h: DaemonHypervisor) throws -> String {
        try h.topo.hypervisor.nft("-s", "list", "table", "inet", "rampart").stdout
    }

    @Test func wrongStoresHostsAndSocketsAreRefusedAndTheKernelIsUntouched() async throws {
        let h = try await DaemonHypervisor(inProcess: false)
        // a first run programs the kernel; SIGTERM leaves the rules
        #expect(try DaemonProcessTests.DaemonProcess(h).terminate() == 0)
        let table = try Self.table(h)
        #expect(table.contains("tapweb1"))
        // (what is wrong, the arguments, the exit status, what the error says)
        let missing = h.dir + "/typo/rampart.db"
        let file = h.dir + "/precious.txt"
        try "keep me".write(toFile: file, atomically: true, encoding: .utf8)
        let cases: [(String, [String: String], Int32, String)] = [
            ("a store that does not exist", ["--store": missing], 3, "no store at \(missing)"),
            ("a host the store does not know", ["--host": "hv-typo"], 1, "does not know host"),
            ("a regular file at the socket path", ["--socket": file], 3, "\(file) exists and is a regular file"),
        ]
        for (what, args, status, message) in cases {
            let r = try Self.rampartd(h, args)
            #expect(r.status == status, "\(what): \(r.status) \(r.stderr)")
            #expect(r.stderr.contains(message), "\(what): \(r.stderr)")
            #expect(try Self.table(h) == table, "\(what): the kernel changed")
        }
        #expect(!FileManager.default.fileExists(atPath: missing))
        #expect(!FileManager.default.fileExists(atPath: (missing as NSString).deletingLastPathComponent))
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep me")
        // a store others could have written: its mode, its owner, its directory's mode
        let unsafe: [(String, () -> Void, () -> Void, String)] = [
            ("group-writable store", { chmod(h.storePath, 0o660) }, { chmod(h.storePath, 0o600) }, "mode 0660"),
            ("store owned by nobody", { chown(h.storePath, 65534, 65534) }, { chown(h.storePath, 0, 0) }, "owned by uid 65534"),
            ("world-writable directory", { chmod(h.dir, 0o777) }, { chmod(h.dir, 0o755) }, "\(h.dir) has mode 0777"),
        ]
        for (what, breakIt, fix, message) in unsafe {
            breakIt()
            let r = try Self.rampartd(h, [:])
            fix()
            #expect(r.status == 3, "\(what): \(r.status) \(r.stderr)")
            #expect(r.stderr.contains(message) && r.stderr.contains(h.storePath.hasPrefix(h.dir) ? h.dir : h.storePath), "\(what): \(r.stderr)")
            #expect(try Self.table(h) == table, "\(what): the kernel changed")
        }
        // the store now says hv1 has no instance: refused, unless --allow-empty
        _ = try h.store.removeInstance("web-1")
        _ = try h.store.removeInstance("db-1")
        let empty = try Self.rampartd(h, [:])
        #expect(empty.status == 1 && empty.stderr.contains("--allow-empty"), "\(empty.stderr)")
        #expect(try Self.table(h) == table)
        let allowed = try DaemonProcessTests.DaemonProcess(h, extra: ["--allow-empty"])
        #expect(try !Self.table(h).contains("tapweb1"))
        #expect(allowed.terminate() == 0)
        await h.stop()
    }

    @Test func idleConnectionsAreClosedAndClientsAreStillServed() async throws {
        let h = try await DaemonHypervisor(inProcess: false)
        let d = try DaemonProcessTests.DaemonProcess(h, extra: ["--idle-timeout", "0.5", "--max-connections", "4"])
        // 4 clients hold connections without a word; a fifth is answered 503 at once
        let idle = (0..<4).map { _ in rawConnect(h.socketPath) }
        try await Task.sleep(for: .milliseconds(100))
        let over = try DaemonClient(socketPath: h.socketPath, timeout: 2).request("GET", "/v1/status")
        #expect(over.status == 503 && over.retryAfter != nil, "\(over.status) \(over.body)")
        // they are closed after the idle timeout, and the controller's delivery gets through
        for fd in idle {
            #expect(waitForClose(fd, timeout: 3))
            close(fd)
        }
        let held = (0..<4).map { _ in rawConnect(h.socketPath) }
        let r = try h.cli(["instance", "add", "bastion", "--host", "hv2", "--ip", "10.0.9.5", "--interface", "tapb", "--group", "admin"])
        #expect(r.status == 0 && r.stdout.contains("sent to hv1: refresh_security_group_members(admin): {\"status\":\"committed\""), "\(r.stdout) \(r.stderr)")
        for fd in held { close(fd) }
        try h.expect([(.tcp(from: "bastion", to: "10.0.1.11", port: 22), true)])
        #expect(try DaemonClient(socketPath: h.socketPath).request("GET", "/v1/status").status == 200)
        #expect(d.terminate() == 0)
        await h.stop()
    }
}
