import Foundation
import RampartCore
import RampartDaemon
import RampartHarness
import RampartNetlink
import RampartNFTables
import RampartStore
import RampartSystem
import Testing

/// The daemon fails closed (fake kernel, real SQLite files, the real API server on a Unix socket):
/// health reports what the syncs did, every refresh gets its own drain's answer, corrupted rows
/// leave the kernel alone, and the API's limits keep it serving.
@Suite("rampartd fails closed (fake kernel)", .serialized) struct FailClosedTests {
    final class Fixture: @unchecked Sendable {
        let dir: String
        let store: SQLiteStore
        let kernel = FakeKernel()
        let client: ControlledClient
        /// Retries and resyncs happen when the test moves this clock (a refresh still wakes a
        /// retry at once).
        let clock = ManualClock()
        let daemon: Daemon
        var server: APIServer?
        var socketPath: String { dir + "/rampartd.sock" }

        init(maxFailedSyncs: Int = 3, maxQueued: Int = 10_000, allowEmpty: Bool = false) throws {
            dir = tempDir("fc")
            store = try SQLiteStore(path: dir + "/rampart.db")
            try DaemonTests.base(store)
            client = ControlledClient(kernel.nft)
            let c = client
            daemon = Daemon(configuration: .init(host: "hv1", resyncInterval: 3600, maxFailedSyncs: maxFailedSyncs,
                                                 allowEmpty: allowEmpty, maxQueuedRefreshes: maxQueued),
                            store: store, clock: clock, backend: { NFTablesBackend(client: c) })
        }
        func start(limits: APIServer.Limits = .init()) async throws {
            daemon.start()
            await daemon.waitUntilReady()
            let s = APIServer(socketPath: socketPath, router: APIRouter(daemon: daemon), limits: limits)
            try await s.start()
            server = s
        }
        func stop() async {
            client.openGate()
            await server?.stop()
            daemon.stop()
        }
        func status() throws -> DaemonClient.Response { try DaemonClient(socketPath: socketPath).request("GET", "/v1/status") }
        func kernelIR(reference: RulesetIR? = nil) throws -> RulesetIR? {
            try NFTablesBackend(client: kernel.nft).readBack(reference: try reference ?? Compiler.compile(try store.document(forHost: "hv1")))
        }
    }

    /// Raw SQL on the store file (a second connection), to corrupt rows as a bad disk or a bad
    /// hand edit would.
    static func sql(_ path: String, _ statement: String) throws {
        let r = try runCommand(["sqlite3", path, statement])
        if r.status != 0 { throw Fixture.Failure(description: "sqlite3: \(r.stderr)") }
    }

    @Test func statusIs503AfterConsecutiveFailedSyncsAndRecovers() async throws {
        let f = try Fixture(maxFailedSyncs: 3)
        try await f.start()
        #expect(try f.status().status == 200)
        f.client.failAll = true
        // one failed sync: still ready (below the threshold; the repair is retried 0.2 s later,
        // then 0.4 s after that, on the daemon's clock)
        let r1 = try DaemonClient(socketPath: f.socketPath).request("POST", "/v1/resync")
        #expect(r1.status == 500 && r1.body.contains("injected"), "\(r1.body)")
        #expect(try f.status().status == 200)
        // three in a row (the retries of the repair count): not ready, with the last error
        var t = 0.0
        for delay in [0.2, 0.4] {
            t += delay
            #expect(f.clock.waitForSleeper(at: t))
            #expect(try f.status().status == 200)
            f.clock.advance(to: t)
        }
        #expect(f.clock.waitForSleeper(at: t + 0.8))
        #expect(try f.status().status == 503)
        let st = try f.status()
        #expect(st.body.contains("\"ready\":false") && st.body.contains("injected") && !st.body.contains("\"consecutive_failed_syncs\":0"), "\(st.body)")
        #expect(f.daemon.metricsText().contains("rampart_ready 0"))
        // the kernel recovers: so does the status (the failed repair is retried on its own)
        f.client.failAll = false
        f.clock.advance(to: t + 0.8)
        let recovered = try eventually { try f.status().status == 200 }
        #expect(recovered)
        #expect(try f.status().body.contains("\"last_error\":null"))
        await f.stop()
    }

    @Test func aCommittedRefreshIsAnsweredWithItsOwnDrainNotAFailedResync() async throws {
        let f = try Fixture()
        try await f.start()
        // hold the worker in a drain, so that the next refresh and a resync meet in one pass
        f.client.closeGate()
        let first = f.daemon.enqueue(.members("admin"))
        #expect(eventually { f.client.blocked > 0 })
        _ = try f.store.addInstance("adm2", Instance(host: "hv3", groups: ["admin"], ips: [ip("10.0.9.6")], interface: "tapz"))
        let box = ResultBox<SyncOutcome>(2)
        let done = DispatchGroup()
        done.enter(); done.enter()
        _ = f.daemon.offer(.members("admin")) { o in box.lock.withLock { box.results[0] = o }; done.leave() }
        _ = f.daemon.requestResync { o in box.lock.withLock { box.results[1] = o }; done.leave() }
        f.client.failReads = true  // the resync reads the table back: it fails; the drain does not read
        f.client.openGate()
        _ = await f.daemon.wait(for: first)
        done.wait()
        let (refresh, resync) = box.lock.withLock { (box.results[0]!, box.results[1]!) }
        guard case .committed = refresh else { Issue.record("refresh answered \(refresh)"); return }
        guard case .failed = resync else { Issue.record("resync answered \(resync)"); return }
        f.client.failReads = false
        // the refresh's change is in the kernel
        #expect(try f.kernelIR()?.sets["m4-admin"]?.elements.count == 2)
        await f.stop()
    }

    @Test func corruptedRowsLeaveTheKernelAsItIsAndAreReported() async throws {
        let f = try Fixture(maxFailedSyncs: 2)
        try await f.start()
        let before = try f.kernelIR()
        let commits = f.kernel.nft.committed.count
        // (the corruption, what the error names, the refreshes that read the row)
        let cases: [(String, String, String, [Refresh])] = [
            ("UPDATE instances SET mac = 'zz:00:00:00:00:01' WHERE id = 'db-1'", "instances.db-1.mac", "zz:00", [.instance("db-1"), .host]),
            ("UPDATE instances SET ips = '10.0.2.21,10.0.2.999' WHERE id = 'db-1'", "instances.db-1.ips", "10.0.2.999", [.instance("db-1"), .host]),
            ("UPDATE instances SET interface = 'tap/db' WHERE id = 'db-1'", "instances.db-1.interface", "tap/db", [.instance("db-1"), .host]),
            ("UPDATE instance_groups SET group_id = 'gone' WHERE instance = 'db-1'", "instances.db-1.groups", "gone", [.instance("db-1"), .host]),
            ("UPDATE groups SET rules = '[{\"protocol\":\"tcpx\",\"cidr\":\"0.0.0.0/0\"}]' WHERE id = 'db'", "protocol", "tcpx", [.rules("db"), .host]),
        ]
        for (corrupt, path, value, refreshes) in cases {
            try Self.sql(f.store.path, "PRAGMA foreign_keys=OFF; BEGIN; \(corrupt); COMMIT;")
            for refresh in refreshes {
                let r = try DaemonClient(socketPath: f.socketPath).deliver(refresh)
                #expect(r.status == 500, "\(corrupt) \(refresh): \(r.status) \(r.body)")
                #expect(r.body.contains(path) || r.body.contains(value), "\(r.body)")
            }
            #expect(f.kernel.nft.committed.count == commits, "\(corrupt): the kernel was changed")
            #expect(try f.kernelIR(reference: before) == before)
            let st = try f.status()
            #expect(st.status == 503 && st.body.contains(value), "\(st.body)")
            // repaired in the store: back to ready
            try Self.sql(f.store.path, """
                UPDATE instances SET mac = NULL, ips = '10.0.2.21', interface = 'tapdb1' WHERE id = 'db-1';
                UPDATE instance_groups SET group_id = 'db' WHERE instance = 'db-1';
                UPDATE groups SET rules = '[{"protocol":"tcp","ports":"5432","group":"web"}]' WHERE id = 'db';
                """)
            #expect(try DaemonClient(socketPath: f.socketPath).request("POST", "/v1/resync").status == 200)
            #expect(try f.status().status == 200)
        }
        await f.stop()
    }

    @Test func aBurstOverTheQueueCapGets503AndTheDaemonStaysHealthy() async throws {
        let f = try Fixture(maxQueued: 4)
        try await f.start()
        f.client.closeGate()
        let path = f.socketPath
        // one drain in progress, held at the kernel
        #expect(try DaemonClient(socketPath: path).deliver(.instance("i0"), wait: false).status == 202)
        #expect(eventually { f.client.blocked > 0 })
        // 8 clients × 10 distinct refreshes while it is held: 4 fit, the rest are refused
        let answers = runOnThreads(8) { c in
            (0..<10).map { i -> (Int, Double?) in
                let r = try? DaemonClient(socketPath: path).deliver(.instance("i\(c)-\(i)"), wait: false, attempts: 1)
                return (r?.status ?? -1, r?.retryAfter)
            }
        }.flatMap { $0 }
        #expect(answers.filter { $0.0 == 202 }.count == 4, "\(answers.map(\.0))")
        #expect(answers.filter { $0.0 == 503 }.count == 76)
        #expect(answers.filter { $0.0 == 503 }.allSatisfy { $0.1 == 1 })
        // a refresh already queued still coalesces; the status answers meanwhile
        let queued = answers.firstIndex { $0.0 == 202 }!
        #expect(try DaemonClient(socketPath: path).deliver(.instance("i\(queued / 10)-\(queued % 10)"), wait: false, attempts: 1).status == 202)
        #expect(try f.status().body.contains("\"refreshes_refused\":76"))
        f.client.openGate()
        // healthy: a waited refresh commits, status is ready
        #expect(try DaemonClient(socketPath: path).deliver(.members("admin")).status == 200)
        #expect(try f.status().status == 200)
        await f.stop()
    }

    @Test func idleConnectionsAreClosedAndTheCapDoesNotLockClientsOut() async throws {
        let f = try Fixture()
        try await f.start(limits: .init(idleTimeout: 0.5, maxConnections: 3))
        let server = f.server!
        // three clients connect and send nothing
        let idle = (0..<3).map { _ in rawConnect(f.socketPath) }
        #expect(idle.allSatisfy { $0 >= 0 })
        #expect(eventually { server.openConnections == 3 })
        // over the cap: answered 503 at once (not left hanging)
        let t0 = Date()
        let refused = try DaemonClient(socketPath: f.socketPath, timeout: 2).request("GET", "/v1/status")
        #expect(refused.status == 503 && refused.retryAfter == 1, "\(refused.status) \(refused.body)")
        #expect(Date().timeIntervalSince(t0) < 0.4)
        // the idle ones are closed after the timeout (recv sees the end)
        for fd in idle {
            let start = Date()
            let closed = waitForClose(fd, timeout: 3)
            #expect(closed, "an idle connection was not closed")
            #expect(Date().timeIntervalSince(start) < 2)
            close(fd)
        }
        // a well-behaved client is served again; a delivery retries past a full cap
        #expect(try f.status().status == 200)
        let again = (0..<3).map { _ in rawConnect(f.socketPath) }
        #expect(eventually { server.openConnections == 3 })
        let delivered = try DaemonClient(socketPath: f.socketPath).deliver(.members("admin"))
        #expect(delivered.status == 200, "\(delivered.body)")
        for fd in again { close(fd) }
        // a client trickling a request byte by byte is closed at the deadline too
        let slow = rawConnect(f.socketPath)
        let start = Date()
        var cut = false
        for b in Array("GET /v1/status HTTP/1.1\r\nHost: x\r\n".utf8) {
            var byte = b
            if send(slow, &byte, 1, Int32(MSG_NOSIGNAL)) != 1 { cut = true; break }
            // Not Task.sleep: its wake-up waits for a free cooperative thread, which other tests'
            // blocking calls can hold for seconds; the deadline under test is the server's.
            usleep(100_000)
        }
        #expect(cut || waitForClose(slow, timeout: 1))
        #expect(Date().timeIntervalSince(start) < 3)
        close(slow)
        #expect(eventually { server.openConnections == 0 })
        await f.stop()
    }

    @Test func theFirstSyncRefusesToEmptyTheKernelUnlessAllowed() async throws {
        for allow in [false, true] {
            let f = try Fixture(allowEmpty: allow)
            // the kernel holds hv1's instances (a previous run)
            let full = Compiler.compile(try f.store.document(forHost: "hv1"))
            _ = try NFTablesBackend(client: f.kernel.nft).converge(to: full)
            let held = try f.kernelIR(reference: full)
            #expect(held?.chains.keys.contains { $0.hasPrefix("out-") } == true)
            // … and the store says hv1 has none now
            _ = try f.store.removeInstance("web-1")
            _ = try f.store.removeInstance("db-1")
            if allow {
                try f.daemon.preflight()
            } else {
                #expect(throws: Daemon.Refusal.self) { try f.daemon.preflight() }
            }
            f.daemon.start()
            if allow {
                await f.daemon.waitUntilReady()
                #expect(try f.kernelIR()?.chains.keys.contains { $0.hasPrefix("out-") } == false)
            } else {
                try await Task.sleep(for: .milliseconds(300))
                let st = f.daemon.currentStatus
                #expect(!st.ready && st.lastError?.contains("--allow-empty") == true, "\(st.lastError ?? "")")
                #expect(try f.kernelIR(reference: full) == held)
            }
            f.daemon.stop()
        }
    }

    @Test func anUnknownHostIsRefused() async throws {
        let f = try Fixture()
        let d = Daemon(configuration: .init(host: "hv-typo"), store: f.store, backend: { NFTablesBackend(client: f.kernel.nft) })
        #expect(throws: Daemon.Refusal.self) { try d.preflight() }
        d.start()
        try await Task.sleep(for: .milliseconds(300))
        #expect(d.currentStatus.lastError?.contains("does not know host") == true)
        #expect(f.kernel.nft.committed.isEmpty)
        d.stop()
        // removing a host's last instance does not make it unknown
        _ = try f.store.removeInstance("bastion")
        #expect(try f.store.knowsHost("hv2"))
    }

    @Test(.tags(.kernel), .rootOnly) func theSocketPathIsReplacedOnlyIfItIsASocket() async throws {
        let dir = tempDir("sock")
        let store = try SQLiteStore(path: dir + "/rampart.db")
        try register("hv1", in: store)
        let fake = FakeKernel()
        let d = Daemon(configuration: .init(host: "hv1"), store: store, backend: { NFTablesBackend(client: fake.nft) })
        let router = APIRouter(daemon: d)
        // a regular file, a directory, a symbolic link (to a file, and dangling): refused, untouched
        let file = dir + "/precious"
        try "keep me".write(toFile: file, atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: dir + "/adir", withIntermediateDirectories: false)
        symlink(file, dir + "/link")
        symlink(dir + "/nowhere", dir + "/dangling")
        for (name, kind) in [("precious", "regular file"), ("adir", "directory"), ("link", "symbolic link"), ("dangling", "symbolic link")] {
            let s = APIServer(socketPath: dir + "/" + name, router: router)
            do {
                try await s.start()
                Issue.record("\(name) was replaced")
                await s.stop()
            } catch {
                #expect("\(error)".contains(kind) && "\(error)".contains(dir + "/" + name), "\(error)")
            }
        }
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep me")
        var st = stat()
        #expect(lstat(dir + "/link", &st) == 0 && st.st_mode & S_IFMT == S_IFLNK)
        #expect(lstat(dir + "/dangling", &st) == 0 && st.st_mode & S_IFMT == S_IFLNK)
        #expect(lstat(dir + "/nowhere", &st) != 0)  // nothing was created through the link
        #expect(lstat(dir + "/adir", &st) == 0 && st.st_mode & S_IFMT == S_IFDIR)
        // a stale socket is replaced
        let stale = dir + "/stale.sock"
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        try UnixSocketAddress(stale).bind(fd)
        close(fd)  // bound, never listened: stale
        let s = APIServer(socketPath: stale, router: router)
        d.start()
        await d.waitUntilReady()
        try await s.start(mode: 0o660, group: 65534)
        #expect(lstat(stale, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK && st.st_mode & 0o777 == 0o660 && st.st_gid == 65534)
        #expect(try DaemonClient(socketPath: stale).request("GET", "/v1/status").status == 200)
        await s.stop()
        #expect(lstat(stale, &st) != 0)  // our own socket is removed on stop
        // a directory others can write is refused (they could swap the entry under us)
        let open = dir + "/open"
        mkdir(open, 0o777)
        chmod(open, 0o777)
        let s2 = APIServer(socketPath: open + "/s.sock", router: router)
        await #expect(throws: ServerError.self) { try await s2.start() }
        #expect(lstat(open + "/s.sock", &st) != 0)
        d.stop()
    }

    @Test(.tags(.kernel), .rootOnly) func storeFilesArePrivateWhateverTheUmask() throws {
        let dir = tempDir("umask") + "/a/b"
        let db = dir + "/rampart.db"
        // the CLI creates the store; with umask 000 nothing may come out group/world accessible
        let r = try runCommand(["sh", "-c", "umask 000; exec \"$0\" group create web --store \"$1\" --no-deliver", executable("rampart"), db])
        #expect(r.status == 0, "\(r.stderr)")
        _ = try runCommand(["sh", "-c", "umask 000; exec \"$0\" instance add w1 --host hv1 --ip 10.0.0.1 --interface tapw1 --group web --store \"$1\" --no-deliver",
                            executable("rampart"), db])
        var st = stat()
        for d in [dir, (dir as NSString).deletingLastPathComponent] {
            #expect(stat(d, &st) == 0 && st.st_mode & 0o777 == 0o700, "\(d): \(String(st.st_mode & 0o777, radix: 8))")
        }
        let store = try SQLiteStore(path: db)  // holds the WAL open
        _ = try store.document(forHost: "hv1")
        for p in [db, db + "-wal", db + "-shm"] {
            #expect(stat(p, &st) == 0 && st.st_mode & 0o777 == 0o600, "\(p): \(String(st.st_mode & 0o777, radix: 8))")
        }
        // and the daemon accepts it
        #expect(try SQLiteStore.openExisting(path: db).warnings.isEmpty)
    }
}

extension FailClosedTests.Fixture {
    struct Failure: Error, CustomStringConvertible { var description: String }
}

/// Connects to a Unix socket and returns the descriptor (-1 on failure).
func rawConnect(_ path: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard (try? UnixSocketAddress(path).connect(fd)) != nil else { close(fd); return -1 }
    return fd
}

/// Whether the peer closes `fd` within `timeout` seconds (recv returns 0 or an error).
func waitForClose(_ fd: Int32, timeout: Double) -> Bool {
    var tv = timeval(tv_sec: Int(timeout), tv_usec: Int(timeout.truncatingRemainder(dividingBy: 1) * 1e6))
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n == 0 { return true }
        if n < 0 { return errno != EAGAIN && errno != EWOULDBLOCK }
    }
}
