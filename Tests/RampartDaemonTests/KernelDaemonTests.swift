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

    let backend: KernelBackend

    init(_ backend: KernelBackend = .nftables, resync: Double = 3600, inProcess: Bool = true, clock: any DaemonClock = SystemClock()) async throws {
        self.backend = backend
        topo = try HypervisorTopology(Self.spec)
        dir = tempDir("kd")
        storePath = dir + "/rampart.db"
        socketPath = dir + "/rampartd.sock"
        store = try SQLiteStore(path: storePath)
        try Self.policy(store)
        if inProcess {
            let target = backend.target(netns: topo.hypervisor.name)
            let d = Daemon(configuration: .init(host: "hv1", resyncInterval: resync), store: store, clock: clock, backend: target.factory,
                           cutter: target.cutter())
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
        try expectProbes(topo, cases, sourceLocation: sourceLocation)
    }

    /// What the kernel holds equals what the store says.
    func kernelMatchesStore() throws -> Bool {
        try kernelMatches(try store.document(forHost: "hv1"), netns: topo.hypervisor.name, backend: backend)
    }
}

@Suite("rampartd against the kernel, with real traffic", .serialized, .tags(.kernel), .rootOnly) struct KernelDaemonTests {
    @Test(arguments: KernelBackend.allCases)
    func controllerVerbsChangeWhatPassesThroughTheDaemon(backend: KernelBackend) async throws {
        let h = try await DaemonHypervisor(backend)
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

    /// nftables only: iptables has no generation to notice another writer by (its periodic
    /// resync repairs such edits: `aRuleDeletedByHandIsRepairedWithinTheResyncInterval`).
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
    @Test(arguments: KernelBackend.allCases)
    func guardedPrefixesCloseDevicesOfNoInstance(backend: KernelBackend) async throws {
        let h = try await DaemonHypervisor(backend)
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
        if backend == .nftables {
            #expect(try h.topo.hypervisor.nft("list", "chain", "inet", "rampart", "ingress").stdout.contains(#"oifname "tap*" drop"#))
        }
        #expect(try h.kernelMatchesStore())
        #expect(try h.cli(["host", "guard", "hv1", "--prefix", "tap+"]).status == 1)
        await h.stop()
    }

    @Test(arguments: KernelBackend.allCases)
    func importAndExportThroughTheCLI(backend: KernelBackend) async throws {
        let h = try await DaemonHypervisor(backend)
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

    @Test(arguments: KernelBackend.allCases)
    func aBurstOfAThousandRefreshCallsEndsRightInFewCommits(backend: KernelBackend) async throws {
        let h = try await DaemonHypervisor(backend)
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

    @Test(arguments: KernelBackend.allCases)
    func aRuleDeletedByHandIsRepairedWithinTheResyncInterval(backend: KernelBackend) async throws {
        let clock = ManualClock()
        let h = try await DaemonHypervisor(backend, resync: 30, clock: clock)
        try backend.flushWebIngress(h.topo.hypervisor)
        try h.expect([(.tcp(from: "internet", to: "10.0.1.11", port: 80), false)])  // our own drift: web has no rules
        // the resync interval passes on the daemon's clock: one resync, the next due at 60 s
        #expect(clock.waitForSleeper(at: 30))
        clock.advance(to: 30)
        #expect(clock.waitForSleeper(at: 60))
        #expect(h.daemon!.currentStatus.driftRepaired > 0 && h.daemon!.currentStatus.resyncs == 1)
        try h.expect([(.tcp(from: "internet", to: "10.0.1.11", port: 80), true)])
        #expect(try h.kernelMatchesStore())
        await h.stop()
    }

    @Test(arguments: KernelBackend.allCases)
    func concurrentClientsOversizedBodiesAndTheSocketMode(backend: KernelBackend) async throws {
        let h = try await DaemonHypervisor(backend)
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
