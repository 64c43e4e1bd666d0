import Foundation
import RampartHarness
import RampartSystem
import Testing

/// Whether process `pid` exists and is not a zombie.
func processAlive(_ pid: Int32) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return false }
    return !stat[stat.index(after: close)...].hasPrefix(" Z")
}

@Suite("Throwaway PostgreSQL cluster", .tags(.kernel), .rootOnly)
struct PostgresClusterTests {
    /// A test process killed before its exit handler ran leaves its cluster running; the next
    /// cluster made on the machine stops it and removes its directory. A live owner's cluster is
    /// left alone.
    @Test func anAbandonedClusterIsReapedAndALiveOnesIsNot() throws {
        let abandoned = try PostgresCluster()
        try abandoned.start()
        let servers = abandoned.serverProcessIDs()
        #expect(!servers.isEmpty)
        // Its owner is now a process that is gone: pid 1's number with another start time
        // stands for a pid reused since.
        try "1 0\n".write(toFile: abandoned.directory + "/owner", atomically: false, encoding: .utf8)
        let alive = try PostgresCluster()
        try alive.start()
        defer { alive.destroy() }
        let next = try PostgresCluster()
        defer { next.destroy() }
        #expect(!FileManager.default.fileExists(atPath: abandoned.directory))
        #expect(servers.allSatisfy { !processAlive($0) }, "\(servers)")
        #expect(alive.isRunning && FileManager.default.fileExists(atPath: alive.directory))
    }

    /// /tmp is anyone's: a directory named like ours whose pid file names some other process is
    /// never a reason to signal it, and one not owned by the servers' account is left alone.
    @Test func aForgedAbandonedClusterSignalsNobody() throws {
        let victim = try Command(["sleep", "30"]).spawn()
        defer { kill(victim.pid, SIGKILL); _ = try? victim.wait() }
        func forged(owner: String?) throws -> String {
            var template = Array("/tmp/rampart-pg-XXXXXX".utf8CString)
            let dir = String(cString: mkdtemp(&template)!)
            try FileManager.default.createDirectory(atPath: dir + "/data", withIntermediateDirectories: true)
            try "1 0\n".write(toFile: dir + "/owner", atomically: false, encoding: .utf8)
            try "\(victim.pid)\n".write(toFile: dir + "/data/postmaster.pid", atomically: false, encoding: .utf8)
            if let owner, let account = getpwnam(owner) {
                for path in [dir, dir + "/data", dir + "/owner", dir + "/data/postmaster.pid"] {
                    #expect(chown(path, account.pointee.pw_uid, account.pointee.pw_gid) == 0)
                }
            }
            return dir
        }
        let notOurs = try forged(owner: nil)  // root's, not the servers' account
        defer { try? FileManager.default.removeItem(atPath: notOurs) }
        let ours = try forged(owner: PostgresCluster.serverAccount)
        let next = try PostgresCluster()
        defer { next.destroy() }
        #expect(processAlive(victim.pid), "a process named by a forged pid file was signalled")
        #expect(FileManager.default.fileExists(atPath: notOurs), "a directory not owned by the servers' account was removed")
        #expect(!FileManager.default.fileExists(atPath: ours), "an abandoned directory of the servers' account stays")
    }

    @Test("start, query, restart, kill and start again, stop: nothing is left behind")
    func lifecycle() throws {
        let pg = try PostgresCluster()
        defer { pg.destroy() }
        #expect(pg.url == "postgresql://postgres@localhost:\(pg.port)/rampart?host=\(pg.socketDirectory)")
        var info = stat()
        #expect(stat(pg.directory, &info) == 0 && info.st_mode & 0o777 == 0o700)
        #expect(getpwuid(info.st_uid).map { String(cString: $0.pointee.pw_name) } == "postgres")

        try pg.start()
        #expect(pg.isRunning)
        #expect(FileManager.default.fileExists(atPath: "\(pg.socketDirectory)/.s.PGSQL.\(pg.port)"))
        // Test-only settings, and no TCP unless asked.
        #expect(try pg.psql("SHOW fsync") == "off")
        #expect(try pg.psql("SHOW listen_addresses") == "")
        #expect(Int(try pg.psql("SHOW max_connections"))! >= 40)
        #expect(try pg.psql("SELECT current_database()") == "rampart")

        try pg.createDatabase("other")
        try pg.psql("CREATE TABLE t (k int PRIMARY KEY, v text)", database: "other")
        try pg.psql("INSERT INTO t VALUES (1, 'a'), (2, 'b')", database: "other")
        #expect(try pg.psql("SELECT k, v FROM t ORDER BY k", database: "other") == "1|a\n2|b")
        #expect(throws: HarnessError.self) { try pg.psql("SELECT nonsense FROM nowhere") }

        let first = pg.serverProcessIDs()
        #expect(first.count > 1, "postmaster and its children: \(first)")
        try pg.restart()
        #expect(try pg.psql("SELECT count(*) FROM t", database: "other") == "2")
        #expect(!first.contains(where: processAlive), "the old server's processes are gone")

        // Immediate stop: a durably committed row survives the recovery (the cluster commits
        // asynchronously unless asked, see `kill()`).
        let beforeKill = pg.serverProcessIDs()
        try pg.psql("SET synchronous_commit = on; INSERT INTO t VALUES (3, 'c')", database: "other")
        try pg.kill()
        #expect(!pg.isRunning)
        #expect(!beforeKill.contains(where: processAlive))
        try pg.start()
        #expect(try pg.psql("SELECT count(*) FROM t", database: "other") == "3")

        let last = pg.serverProcessIDs()
        try pg.stop()
        #expect(!pg.isRunning && pg.serverProcessIDs().isEmpty)
        #expect(!last.contains(where: processAlive))
        try pg.stop()  // stopping a stopped server does nothing

        let directory = pg.directory
        pg.destroy()
        pg.destroy()  // idempotent
        #expect(!FileManager.default.fileExists(atPath: directory))
    }

    @Test("destroy (and deinit) stops a running server and removes its directory")
    func destroyRunning() throws {
        var directory = ""
        var processes: [Int32] = []
        do {
            let pg = try PostgresCluster(database: "postgres", allowTCP: true)
            try pg.start()
            directory = pg.directory
            processes = pg.serverProcessIDs()
            #expect(try pg.psql("SHOW listen_addresses") == "127.0.0.1")
        }
        #expect(!processes.isEmpty)
        #expect(!processes.contains(where: processAlive), "left behind: \(processes)")
        #expect(!directory.isEmpty && !FileManager.default.fileExists(atPath: directory))
    }

    @Test("serverCPUSeconds grows with work")
    func serverCPU() throws {
        let pg = try PostgresCluster()
        defer { pg.destroy() }
        #expect(pg.serverCPUSeconds() == 0)
        try pg.start()
        let before = pg.serverCPUSeconds()
        // Work in the backend, on a connection that ends (its CPU must still count).
        try pg.psql("SELECT sum(length(md5(i::text))) FROM generate_series(1, 300000) i")
        let after = pg.serverCPUSeconds()
        #expect(after > before + 0.05, "before \(before) s, after \(after) s")
    }

    @Test("the newest installed server is found; none installed is a clear error")
    func binDirectory() throws {
        #expect(try PostgresCluster.serverBinDirectory().hasPrefix("/usr/lib/postgresql/"))
        #expect {
            try PostgresCluster.serverBinDirectory(root: "/nonexistent")
        } throws: { "\($0)".contains("PostgreSQL server not installed: run scripts/setup") }
    }
}
