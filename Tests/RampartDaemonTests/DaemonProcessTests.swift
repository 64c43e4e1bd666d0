import RampartBackends
import Foundation
import RampartCore
import RampartDaemon
import RampartHarness
import RampartNetlink
import RampartNFTables
import RampartStore
import RampartSystem
import Testing

/// The real `rampartd` executable: kill -9 in the middle of a burst, restart, convergence, and
/// no probe that the policy denies ever passes; sd_notify READY; SIGTERM leaves the rules.
@Suite("rampartd executable: crash and restart", .serialized, .tags(.kernel), .rootOnly) struct DaemonProcessTests {
    /// A `rampartd` process, returned once its status answers 200 (ready: the first sync is done).
    final class DaemonProcess: @unchecked Sendable {
        let process: ChildProcess
        /// `rampartd` for `host` on `store`, serving `socket`, programming namespace `netns`.
        init(host: String, store: String, socket: String, netns: String, environment: [String: String] = [:], extra: [String] = []) throws {
            let arguments = [executable("rampartd"), "--host", host, "--store", store, "--socket", socket,
                             "--netns", netns, "--resync-interval", "3600", "--log-level", "warning"] + extra
            process = try Command(arguments, output: .inherit, environment: environment).spawn()
            let deadline = Date().addingTimeInterval(15)
            while Date() < deadline {
                if let r = try? DaemonClient(socketPath: socket, timeout: 2).request("GET", "/v1/status"), r.status == 200 { return }
                if (try? process.poll()) ?? nil != nil { break }  // it exited
                Thread.sleep(forTimeInterval: 0.05)
            }
            kill9()
            throw HarnessError("rampartd --host \(host) did not become ready")
        }
        convenience init(_ h: DaemonHypervisor, notify: String? = nil, extra: [String] = []) throws {
            try self.init(host: "hv1", store: h.storePath, socket: h.socketPath, netns: h.topo.hypervisor.name,
                          environment: notify.map { ["NOTIFY_SOCKET": $0] } ?? [:], extra: extra)
        }
        func kill9() {
            process.signal(SIGKILL)
            _ = try? process.wait()
        }
        /// SIGTERM, and its exit status; -1 if it had not exited after 20 s (then it was killed).
        func terminate() -> Int32 {
            process.signal(SIGTERM)
            return (try? process.wait(timeout: 20)) ?? -1
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

    /// `rampartd --backend iptables` (legacy and nft): the first sync programs the kernel, a
    /// controller verb is delivered and changes what passes, revocation runs, SIGTERM leaves the rules.
    @Test(arguments: [KernelBackend.iptablesLegacy, .iptablesNFT])
    func rampartdOnIptables(backend: KernelBackend) async throws {
        let h = try await DaemonHypervisor(backend, inProcess: false)
        let d = try DaemonProcess(h, extra: backend.options)
        try h.expect([
            (.tcp(from: "internet", to: "10.0.1.11", port: 80), true),
            (.tcp(from: "bastion", to: "10.0.1.11", port: 22), false),
        ])
        let add = try h.cli(["instance", "add", "bastion", "--host", "hv2", "--ip", "10.0.9.5", "--interface", "tapb", "--group", "admin"])
        #expect(add.status == 0 && add.stdout.contains(#"sent to hv1: refresh_security_group_members(admin): {"generation":"#) && add.stdout.contains(#""status":"committed""#), "\(add.stdout) \(add.stderr)")
        try h.expect([(.tcp(from: "bastion", to: "10.0.1.11", port: 22), true)])
        let ssh = try h.topo.openTCPSession(from: "bastion", to: "10.0.1.11", port: 22)
        #expect(ssh.exchange())
        #expect(try h.cli(["instance", "set-groups", "bastion"]).status == 0)
        #expect(!ssh.exchange(timeout: 1.5), "\(ssh) still passes")  // cut by the daemon
        #expect(try h.kernelMatchesStore())
        #expect(d.terminate() == 0)
        // the rules stay, and nothing was written to an nftables table of Rampart's
        try h.expect([
            (.tcp(from: "internet", to: "10.0.1.11", port: 80), true),
            (.tcp(from: "bastion", to: "10.0.1.11", port: 22), false),
        ])
        #expect(try !h.topo.hypervisor.nft("list", "tables").stdout.contains("inet rampart"))
        await h.stop()
    }

    @Test func killDashNineMidBurstThenRestartNeverOpensAnything() async throws {
        let h = try await DaemonHypervisor(inProcess: false)
        let notify = NotifySocket(path: h.dir + "/notify")
        var d = try DaemonProcessTests.DaemonProcess(h, notify: notify.path)
        #expect(notify.messages().contains { $0.contains("READY=1") })
        // The conntrack index (on by default) shows in the status and the metrics.
        let status = try DaemonClient(socketPath: h.socketPath).request("GET", "/v1/status").body
        #expect(status.contains(#""conntrack_index":{"#) && status.contains(#""fresh":true"#), "\(status)")
        #expect(try DaemonClient(socketPath: h.socketPath).request("GET", "/metrics").body.contains("rampart_conntrack_index_fresh 1"))
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
        // (web's port rules are elements of the shapes' sets: `"web" . tcp . 80`)
        #expect(try h.topo.hypervisor.nft("list", "table", "inet", "rampart").stdout.contains(#""web" . tcp . 80"#))
        try h.expect([(.tcp(from: "internet", to: "10.0.1.11", port: 22), false)])
    }
}

@Suite("rampartd socket permissions", .tags(.kernel), .rootOnly) struct SocketPermissionTests {
    @Test func aGroupCanBeLetIn() async throws {
        let dir = tempDir("perm")
        let store = try SQLiteStore(path: dir + "/rampart.db")
        try register("hv1", in: store)
        let fake = FakeKernel()
        let d = Daemon(configuration: .init(host: "hv1"), store: store, backend: { NFTablesBackend(client: fake.nft) })
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
@Suite("rampart CLI with two daemons", .tags(.kernel), .rootOnly) struct TwoDaemonsTests {
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
            let target = BackendChoice(.nftables, netns: ns.name)
            let d = Daemon(configuration: .init(host: h, resyncInterval: 3600), store: store, backend: target.factory, cutter: target.cutter())
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
@Suite("rampartd executable: refusals and limits", .serialized, .tags(.kernel), .rootOnly) struct DaemonRefusalTests {
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
        // The idle timeout leaves the fifth client ample time to arrive while the four are
        // held: with 0.5 s a loaded machine (other tests blocking the cooperative pool) let
        // them lapse first, and the fifth was served instead of refused.
        let d = try DaemonProcessTests.DaemonProcess(h, extra: ["--idle-timeout", "1.5", "--max-connections", "4"])
        // 4 clients hold connections without a word; a fifth is answered 503 at once
        let idle = (0..<4).map { _ in rawConnect(h.socketPath) }
        usleep(100_000)  // not Task.sleep: its wake-up waits for a free cooperative thread
        let over = try DaemonClient(socketPath: h.socketPath, timeout: 2).request("GET", "/v1/status")
        #expect(over.status == 503 && over.retryAfter != nil, "\(over.status) \(over.body)")
        // they are closed after the idle timeout, and the controller's delivery gets through
        for fd in idle {
            #expect(waitForClose(fd, timeout: 3))
            close(fd)
        }
        let held = (0..<4).map { _ in rawConnect(h.socketPath) }
        let r = try h.cli(["instance", "add", "bastion", "--host", "hv2", "--ip", "10.0.9.5", "--interface", "tapb", "--group", "admin"])
        #expect(r.status == 0 && r.stdout.contains("sent to hv1: refresh_security_group_members(admin): {\"generation\":") && r.stdout.contains("\"status\":\"committed\""), "\(r.stdout) \(r.stderr)")
        for fd in held { close(fd) }
        try h.expect([(.tcp(from: "bastion", to: "10.0.1.11", port: 22), true)])
        #expect(try DaemonClient(socketPath: h.socketPath).request("GET", "/v1/status").status == 200)
        #expect(d.terminate() == 0)
        await h.stop()
    }
}
