import Foundation
import RampartSystem

// A throwaway PostgreSQL cluster for tests and benchmarks: initdb into a fresh temporary
// directory, the server listening on a Unix socket in that directory (TCP only if asked), and
// everything removed by `destroy()` (also on deinit). The machine's own clusters (Debian's
// `main`, if any) are never touched: another directory, another socket, another port.
//
// PostgreSQL refuses to run as root, so as root every server program runs as the `postgres`
// user Debian's package creates (`runuser -u postgres -- ...`), which owns the directory; as
// any other user they run as that user.

/// A private PostgreSQL cluster: `init` makes it (initdb), `start()` runs it, `destroy()`
/// stops it and removes its directory. Clients connect as `user` (trust authentication) to the
/// socket `<socketDirectory>/.s.PGSQL.<port>`, e.g. through `url`.
public final class PostgresCluster: @unchecked Sendable {
    /// The server programs' directory (`initdb`, `pg_ctl`, `psql`): the newest installed.
    public let binDirectory: String
    /// The temporary directory: mode 0700, owned by the server's user; holds the socket, the
    /// data directory (`data`) and the server log (`server.log`).
    public let directory: String
    /// Where the server's socket is: the temporary directory itself.
    public var socketDirectory: String { directory }
    public var dataDirectory: String { directory + "/data" }
    public var logPath: String { directory + "/server.log" }
    /// The port: names the socket (`.s.PGSQL.<port>`) and, with `allowTCP`, the TCP port on
    /// 127.0.0.1. Free when the cluster was made.
    public let port: UInt16
    /// The superuser every client connects as (trust authentication, no password).
    public let user = "postgres"
    /// The database `start()` creates the first time, and the default of `url` and `psql`.
    public let database: String
    /// Whether the server also listens on 127.0.0.1:`port` (trust authentication there too).
    public let allowsTCP: Bool

    /// The system account that runs the server when this process is root.
    public static let serverAccount = "postgres"

    private let firstStart = OnceFlag()
    private let destroyed = OnceFlag()

    /// Makes the cluster (initdb; not started). `maxConnections` leaves room for ~40 clients
    /// plus psql and PostgreSQL's reserved superuser slots. `settings`: more postgresql.conf
    /// lines (`name = value`), after the harness's own (so they override them).
    public init(database: String = "rampart", allowTCP: Bool = false, maxConnections: Int = 64,
                settings: [String: String] = [:]) throws {
        binDirectory = try Self.serverBinDirectory()
        Self.reapAbandoned()
        self.database = database
        allowsTCP = allowTCP
        port = UInt16(try freeLoopbackPort())
        var template = Array("/tmp/rampart-pg-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw HarnessError("mkdtemp: \(errnoText(errno))") }
        directory = String(cString: made)
        do {
            try Self.recordOwner(directory)
            try Self.giveToServerAccount(directory)
            try runServerProgram(["initdb", "-D", dataDirectory, "-U", user, "-A", "trust", "-E", "UTF8",
                                  "--locale=C", "--no-sync", "--no-instructions"])
            try configure(maxConnections: maxConnections, settings: settings)
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    deinit { destroy() }

    /// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
    public static func serverBinDirectory(root: String = "/usr/lib/postgresql") throws -> String {
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
            .filter { access("\(root)/\($0)/bin/initdb", X_OK) == 0 }
            .map { ($0, $0.split(separator: ".").map { Int($0) ?? -1 }) }
        guard let newest = versions.max(by: { $0.1.lexicographicallyPrecedes($1.1) }) else {
            throw HarnessError("PostgreSQL server not installed: run scripts/setup")
        }
        return "\(root)/\(newest.0)/bin"
    }

    /// `postgresql://postgres@localhost:<port>/<database>?host=<socketDirectory>`: libpq's form,
    /// where a `host` parameter that is a directory means the Unix socket in it (the `localhost`
    /// of the authority is then not used).
    public var url: String { url(database: database) }

    /// `url` for another database of the cluster.
    public func url(database: String) -> String {
        let host = socketDirectory.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed) ?? socketDirectory
        return "postgresql://\(user)@localhost:\(port)/\(database)?host=\(host)"
    }

    /// Starts the server (waiting until it accepts connections); the first time, also creates
    /// `database`.
    public func start() throws {
        try runServerProgram(["pg_ctl", "-D", dataDirectory, "-l", logPath, "-w", "-t", "60", "-s", "start"])
        if firstStart.claim() && database != "postgres" { try createDatabase(database) }
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`: clients are disconnected, a checkpoint
    /// is written). Does nothing when it is not running.
    public func stop() throws {
        guard isRunning else { return }
        try runServerProgram(["pg_ctl", "-D", dataDirectory, "-m", "fast", "-w", "-t", "60", "-s", "stop"])
    }

    /// Stops and starts the server again, e.g. in the middle of a burst of clients.
    public func restart() throws {
        try stop()
        try start()
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: no checkpoint, as after a crash;
    /// the next `start()` recovers from the WAL). Does nothing when it is not running. With the
    /// test-only `synchronous_commit = off`, transactions committed in the last few hundred
    /// milliseconds may be lost, as after a real crash with that setting; a test that needs a
    /// commit to survive sets `synchronous_commit = on` for it.
    public func kill() throws {
        guard isRunning else { return }
        let processes = serverProcessIDs()
        try runServerProgram(["pg_ctl", "-D", dataDirectory, "-m", "immediate", "-w", "-t", "60", "-s", "stop"])
        // pg_ctl returns once the postmaster is gone; a backend it told to quit can still be
        // exiting (seen once in CI: a child alive just after). Wait for all of them (≤ 10 s).
        let deadline = Date(timeIntervalSinceNow: 10)
        while processes.contains(where: isAlive) && Date() < deadline { usleep(5_000) }
    }

    /// Whether the server's postmaster is alive.
    public var isRunning: Bool { postmasterPID().map(isAlive) ?? false }

    /// Creates a database (owned by `user`).
    public func createDatabase(_ name: String) throws {
        _ = try psql("CREATE DATABASE \"\(name.replacingOccurrences(of: "\"", with: "\"\""))\"", database: "postgres")
    }

    /// Runs SQL with `psql -X -A -t` over the socket (the test's oracle) and returns its output:
    /// unaligned rows, `|` between columns, without the last newline. Throws when psql fails.
    @discardableResult
    public func psql(_ sql: String, database: String? = nil) throws -> String {
        let out = try runCommand([binDirectory + "/psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                                  "-h", socketDirectory, "-p", String(port), "-U", user,
                                  "-d", database ?? self.database, "-c", sql], check: true).stdout
        return out.hasSuffix("\n") ? String(out.dropLast()) : out
    }

    /// What the server needs to speak TLS (PEM files): its certificate chain and key, and the
    /// CA that client certificates must chain to (`hostssl … cert` authentication).
    public struct ServerTLS: Sendable {
        public var certificate: String
        public var key: String
        public var clientCA: String?
        public init(certificate: String, key: String, clientCA: String? = nil) {
            self.certificate = certificate
            self.key = key
            self.clientCA = clientCA
        }
    }

    /// How the server authenticates TCP clients, and whether it speaks TLS: `authentication`
    /// replaces the TCP lines of pg_hba.conf (e.g. `hostssl all all 127.0.0.1/32 scram-sha-256`);
    /// `tls` turns TLS on (its files copied into the cluster's directory for the server's
    /// account, mode 0600), nil turns it off. Applied by a reload; returns once new connections
    /// get the new configuration. Needs `allowTCP`.
    public func configureTCP(authentication: [String], tls: ServerTLS?) throws {
        guard allowsTCP else { throw HarnessError("configureTCP: the cluster was made without allowTCP") }
        var settings = ["ssl": tls == nil ? "off" : "on", "ssl_ca_file": ""]
        if let tls {
            let files = [("ssl_cert_file", tls.certificate), ("ssl_key_file", tls.key)] + (tls.clientCA.map { [("ssl_ca_file", $0)] } ?? [])
            for (setting, source) in files {
                let target = directory + "/" + setting
                try? FileManager.default.removeItem(atPath: target)
                try FileManager.default.copyItem(atPath: source, toPath: target)
                try Self.giveToServerAccount(target)
                guard chmod(target, 0o600) == 0 else { throw HarnessError("chmod \(target): \(errnoText(errno))") }
                settings[setting] = target
            }
        }
        try writeHBA(tcp: authentication)
        generation += 1
        settings["rampart.configuration"] = String(generation)
        let text = settings.sorted(by: { $0.key < $1.key }).map { "\($0.key) = '\($0.value)'\n" }.joined()
        try text.write(toFile: tcpSettingsPath, atomically: true, encoding: .utf8)
        try psql("SELECT pg_reload_conf()", database: "postgres")
        // The postmaster reads the files when it gets the signal, after pg_reload_conf returns;
        // a backend started after that shows the marker set with them.
        let deadline = Date(timeIntervalSinceNow: 10)
        while try psql("SHOW rampart.configuration", database: "postgres") != String(generation) {
            guard Date() < deadline else { throw HarnessError("the server did not reload its configuration within 10 s\n\(serverLog().suffix(2000))") }
            usleep(20_000)
        }
    }

    /// The settings `configureTCP` writes, included by postgresql.conf (last, so they win).
    private var tcpSettingsPath: String { directory + "/tcp.conf" }

    /// Counts `configureTCP` calls: the marker a reload is waited for by.
    private var generation = 0

    /// The server's processes: the postmaster (from `postmaster.pid`) and its children. Empty
    /// when it is not running.
    public func serverProcessIDs() -> [Int32] {
        guard let postmaster = postmasterPID(), isAlive(postmaster) else { return [] }
        return [postmaster] + Self.processStats().filter { $0.value.ppid == postmaster }.keys.sorted()
    }

    /// CPU seconds (user + system) the server has used since it was last started: its
    /// processes' own, plus those of the children the postmaster has reaped (a backend's CPU
    /// outlives its connection), read from /proc. Benchmarks take differences ("server CPU per
    /// verb"); 0 when it is not running.
    public func serverCPUSeconds() -> Double {
        guard let postmaster = postmasterPID(), isAlive(postmaster) else { return 0 }
        let stats = Self.processStats()
        var ticks = stats[postmaster].map { $0.cpu + $0.reapedCPU } ?? 0
        for (_, s) in stats where s.ppid == postmaster { ticks += s.cpu }
        return Double(ticks) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// The server log so far, for a failing test's message.
    public func serverLog() -> String {
        (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    }

    /// Stops the server (cleanly if it can, else at once, else SIGKILL to what is left) and
    /// removes the directory (idempotent).
    public func destroy() {
        guard destroyed.claim() else { return }
        let processes = serverProcessIDs()
        if (try? stop()) == nil { try? kill() }
        for pid in processes where isAlive(pid) { Glibc.kill(pid, SIGKILL) }
        try? FileManager.default.removeItem(atPath: directory)
    }

    // MARK: Abandoned clusters

    /// The file naming the process that made a cluster: `<pid> <start time>`.
    static let ownerFile = "owner"

    private static func recordOwner(_ directory: String) throws {
        let me = getpid()
        guard let stat = processStat(me) else { throw HarnessError("cannot read /proc/\(me)/stat") }
        guard FileManager.default.createFile(atPath: directory + "/" + ownerFile, contents: Data("\(me) \(stat.startTime)\n".utf8)) else {
            throw HarnessError("cannot write \(directory)/\(ownerFile)")
        }
    }

    /// Stops and removes the clusters of processes that are gone without destroying theirs (a
    /// test process killed, or crashed, runs no exit handler): each kept a server running and a
    /// directory in /tmp. Only directories with an owner record whose process is gone (a pid
    /// reused by another process has another start time); a running test process's cluster, or a
    /// directory this harness did not make, is never touched.
    ///
    /// /tmp is anyone's: a directory is taken for one of ours only if it is a real directory
    /// (not a link) owned by the account our servers run as, closed to others (0700), and a
    /// process is signalled only if it is a PostgreSQL server whose command line names that
    /// directory's data — never on the word of a pid file alone.
    static func reapAbandoned() {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/tmp") else { return }
        let serverUID: uid_t = getuid() == 0 ? (getpwnam(serverAccount).map { $0.pointee.pw_uid } ?? 0) : getuid()
        for entry in entries where entry.hasPrefix("rampart-pg-") {
            let directory = "/tmp/" + entry
            var info = stat()
            guard lstat(directory, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == serverUID,
                  info.st_mode & 0o077 == 0 else { continue }
            guard let text = try? String(contentsOfFile: directory + "/" + ownerFile, encoding: .utf8) else { continue }
            let fields = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
            guard fields.count == 2, let pid = Int32(fields[0]), let started = UInt64(fields[1]) else { continue }
            if let owner = processStat(pid), owner.state != "Z", owner.startTime == started { continue }
            let data = directory + "/data"
            if let pidText = try? String(contentsOfFile: data + "/postmaster.pid", encoding: .utf8),
               let postmaster = pidText.split(separator: "\n").first.flatMap({ Int32($0.trimmingCharacters(in: .whitespaces)) }),
               let s = processStat(postmaster), s.state != "Z", isServer(postmaster, of: data) {
                // An immediate stop: the data is thrown away.
                Glibc.kill(postmaster, SIGQUIT)
                for _ in 0..<100 where processStat(postmaster).map({ $0.state != "Z" }) ?? false { usleep(20_000) }
                if processStat(postmaster).map({ $0.state != "Z" }) ?? false, isServer(postmaster, of: data) { Glibc.kill(postmaster, SIGKILL) }
            }
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    /// Whether `pid` is a PostgreSQL server started on `data` (`postgres -D <data>`).
    static func isServer(_ pid: Int32, of data: String) -> Bool {
        guard let bytes = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        let args = bytes.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard let program = args.first, program.hasSuffix("/postgres") || program == "postgres" else { return false }
        return zip(args, args.dropFirst()).contains { $0 == "-D" && $1 == data }
    }

    // MARK: Set-up

    /// Test-only settings appended to postgresql.conf, and pg_hba.conf replaced.
    private func configure(maxConnections: Int, settings: [String: String]) throws {
        let conf = """

            # PostgresCluster (Rampart's test harness): a throwaway cluster.
            listen_addresses = '\(allowsTCP ? "127.0.0.1" : "")'
            port = \(port)
            unix_socket_directories = '\(socketDirectory)'
            max_connections = \(maxConnections)
            shared_buffers = 32MB
            # As docs/postgres.md advises for a controller's serializable verbs (default 64).
            max_pred_locks_per_transaction = 256
            # Test-only: trades crash safety for speed. Never for data that matters.
            fsync = off
            synchronous_commit = off
            full_page_writes = off

            """ + settings.sorted { $0.key < $1.key }.map { "\($0.key) = \($0.value)\n" }.joined()
            + "include_if_exists = '\(tcpSettingsPath)'\n"
        try append(conf, to: dataDirectory + "/postgresql.conf")
        try writeHBA(tcp: allowsTCP ? ["host all all 127.0.0.1/32 trust"] : [])
    }

    /// pg_hba.conf: trust on the Unix socket (its directory is private), then `tcp`'s lines.
    private func writeHBA(tcp: [String]) throws {
        let hba = "# PostgresCluster: trust on the Unix socket only (its directory is private).\nlocal all all trust\n"
            + tcp.map { $0 + "\n" }.joined()
        // Written in place (not atomically), so the file keeps its owner and mode.
        try hba.write(toFile: dataDirectory + "/pg_hba.conf", atomically: false, encoding: .utf8)
    }

    private func append(_ text: String, to path: String) throws {
        guard let handle = FileHandle(forWritingAtPath: path) else { throw HarnessError("cannot open \(path)") }
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(text.utf8))
    }

    /// As root: the directory is handed to `serverAccount` (PostgreSQL insists on owning it).
    private static func giveToServerAccount(_ path: String) throws {
        guard getuid() == 0 else { return }
        guard let account = getpwnam(serverAccount) else {
            throw HarnessError("no user \(serverAccount) to run PostgreSQL as: run scripts/setup")
        }
        guard chown(path, account.pointee.pw_uid, account.pointee.pw_gid) == 0 else {
            throw HarnessError("chown \(path): \(errnoText(errno))")
        }
    }

    /// Runs one of the server's programs, as `serverAccount` when this process is root.
    private func runServerProgram(_ arguments: [String]) throws {
        let program = [binDirectory + "/" + arguments[0]] + arguments.dropFirst()
        let command = getuid() == 0 ? ["runuser", "-u", Self.serverAccount, "--"] + program : program
        let r = try runCommand(command)
        guard r.succeeded else {
            throw HarnessError("\(arguments[0]) exited \(r.status): \(r.stderr)\(r.stdout)\n\(serverLog().suffix(2000))")
        }
    }

    // MARK: Processes

    private func postmasterPID() -> Int32? {
        guard let text = try? String(contentsOfFile: dataDirectory + "/postmaster.pid", encoding: .utf8) else { return nil }
        return text.split(separator: "\n").first.flatMap { Int32($0.trimmingCharacters(in: .whitespaces)) }
    }

    /// Alive = it exists and is not a zombie (an exited postmaster whose parent, init in a
    /// container, has not reaped it yet).
    private func isAlive(_ pid: Int32) -> Bool {
        guard let s = Self.processStat(pid) else { return false }
        return s.state != "Z"
    }

    struct ProcessStat {
        var state: Character
        var ppid: Int32
        /// utime + stime, in clock ticks.
        var cpu: Int
        /// cutime + cstime: of the children it has waited for.
        var reapedCPU: Int
        /// When it started, in clock ticks after boot: with the pid, names one process for good
        /// (a pid is reused, a pid and a start time are not).
        var startTime: UInt64
    }

    /// /proc/<pid>/stat: the fields after the command name (which may hold spaces and parens).
    static func processStat(_ pid: Int32) -> ProcessStat? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        let f = text[text.index(after: close)...].split(separator: " ")
        // f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14–17.
        guard f.count > 19, let state = f[0].first, let ppid = Int32(f[1]) else { return nil }
        let n = { (i: Int) in Int(f[i]) ?? 0 }
        return ProcessStat(state: state, ppid: ppid, cpu: n(11) + n(12), reapedCPU: n(13) + n(14), startTime: UInt64(f[19]) ?? 0)
    }

    /// Every process's stat, by pid.
    static func processStats() -> [Int32: ProcessStat] {
        var out: [Int32: ProcessStat] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            if let pid = Int32(entry), let s = processStat(pid) { out[pid] = s }
        }
        return out
    }
}
