import ArgumentParser
import Foundation
import Logging
import RampartBackends
import RampartConntrack
import RampartDaemon
import RampartNetlink
import RampartRelay
import RampartSystem
import RampartStore
import ServiceLifecycle

/// `rampartd`: the hypervisor daemon. Loads this host's desired state from the store, brings the
/// kernel to it in one transaction, then serves the refresh API on a Unix socket; SIGTERM stops
/// it and leaves the rules in place.
@main
struct RampartD: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rampartd",
        abstract: "The Rampart hypervisor daemon: keeps inet rampart equal to this host's desired state.")

    @Option(help: "The name of this hypervisor (instances whose host is this name are filtered here).")
    var host: String

    @Option(help: "The store: a SQLite file, or postgres://USER@HOST[:PORT]/DATABASE?sslrootcert=CA.pem (docs/postgres.md; default: $RAMPART_STORE, else /var/lib/rampart/rampart.db). A SQLite file must exist (rampartd never creates one) and, with its directory, be owned by root and not writable by group or others; a PostgreSQL store must have this version's schema, and its change log then delivers this host's refresh calls.")
    var store: String?

    @Option(help: "The API's Unix socket (mode 0600: root only).")
    var socket: String = "/run/rampart/rampartd.sock"

    @Option(help: "The socket's permission bits, in octal (default 600: root only).")
    var socketMode: String = "600"

    @Option(help: "A group whose members may use the socket (with --socket-mode 660).")
    var socketGroup: String?

    @OptionGroup var target: BackendOptions

    @Flag(inversion: .prefixedNo, help: "Keep an index of conntrack entries from conntrack events, so that revocation needs no walk of the kernel's table (about 550 bytes per entry).")
    var conntrackIndex = true

    @Option(help: "Seconds between resyncs (read the table back, repair drift).")
    var resyncInterval: Double = 30

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(help: "After this many failed syncs in a row, /v1/status answers 503 (not ready) until one succeeds.")
    var maxFailedSyncs: Int = 3

    @Flag(help: "Allow the first sync to remove every instance of this host from a kernel table that holds some (refused otherwise).")
    var allowEmpty = false

    @Option(help: "Distinct refreshes waiting for a drain, at most; beyond it the API answers 503 with Retry-After.")
    var maxQueuedRefreshes: Int = 10_000

    @Option(help: "Seconds a connection may stay open without a complete request (from its start or its last answer).")
    var idleTimeout: Double = 10

    @Option(help: "Open API connections, at most; beyond it a new connection is answered 503 and closed.")
    var maxConnections: Int = 128

    @Option(help: "A change-log relay, HOST:PORT (repeatable): this host's rows come from a relay instead of a LISTEN of its own; the document is still read from the PostgreSQL store (docs/relay.md).")
    var relay: [String] = []

    @Option(help: "With --relay: this host's token, a `HOST TOKEN` line in a file of mode 0600.")
    var relayTokenFile: String?

    @Option(help: "With --relay: connect with TLS, verifying the relays' certificates against this CA (PEM).")
    var relayCA: String?

    @Flag(help: "With --relay and no --relay-ca: allow relays at addresses other than loopback over plain TCP (this host's token and rows cross the network in clear).")
    var relayPlaintext = false

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        var logger = Logger(label: "rampartd")
        logger[metadataKey: "host"] = "\(host)"
        guard maxFailedSyncs >= 1, maxQueuedRefreshes >= 1, maxConnections >= 1, idleTimeout > 0 else {
            logger.critical("--max-failed-syncs, --max-queued-refreshes and --max-connections must be at least 1, --idle-timeout positive")
            throw ExitCode(1)
        }
        // Fail closed: never create a store, never trust one that others could have written.
        let address: StoreAddress
        do { address = try StoreAddress(store) } catch {
            logger.critical("--store: \(error)")
            throw ExitCode(1)
        }
        // The relay options are checked before anything is opened (bad input exits 1).
        let session = relay.isEmpty ? nil : try relaySession(logger: logger)
        let st = try await Self.openStore(address, logger: logger)
        guard relay.isEmpty || st is PostgresStore else {
            logger.critical("--relay needs a PostgreSQL store (the relays serve its change log)")
            throw ExitCode(1)
        }
        let config = Daemon.Configuration(host: host, resyncInterval: resyncInterval, maxFailedSyncs: maxFailedSyncs,
                                          allowEmpty: allowEmpty, maxQueuedRefreshes: maxQueuedRefreshes)
        let choice = target.choice
        logger[metadataKey: "backend"] = "\(choice.kind.rawValue)"
        // The conntrack index: revocation then finds the affected entries without walking the
        // kernel's table (docs/conntrack.md). Without it (or while it is stale) the cut dumps.
        var index: ConntrackIndex?
        if conntrackIndex {
            do {
                index = try ConntrackIndex.start(namespace: choice.namespace)
                logger.info("conntrack index started", metadata: ["entries": "\(index!.statistics.entries)"])
            } catch {
                logger.warning("conntrack index unavailable; revocation dumps the table instead", metadata: ["error": "\(error)"])
            }
        }
        defer { index?.stop() }
        let daemon = Daemon(configuration: config, store: st, logger: logger, backend: choice.factory, cutter: choice.cutter(index: index),
                            conntrackIndex: index)
        // PostgreSQL: this host's change log delivers its refresh calls (the socket API stays).
        var follower: ChangeLogFollower?
        if let pg = st as? PostgresStore {
            let f: ChangeLogFollower
            if let session {
                f = ChangeLogFollower(daemon: daemon, log: session, wakeups: session, logger: logger)
            } else {
                f = ChangeLogFollower(daemon: daemon, postgres: pg)
            }
            // Before the first sync: its document is then at least as new as this position.
            do { try f.prime() } catch { logger.warning("change log head unreadable; the follower reloads the document once it can", metadata: ["error": "\(error)"]) }
            follower = f
        }
        // An unknown host, or a first sync that would empty the table: exit before serving, the
        // kernel untouched.
        do { try daemon.preflight() } catch let e as Daemon.Refusal {
            logger.critical("\(e.description)")
            throw ExitCode(1)
        } catch {
            // Anything else (an invalid document, the kernel unreachable) is the first sync's to
            // report: not ready (503), the kernel as it is, retried.
            logger.error("preflight: \(error); the first sync will retry")
        }
        let readyLogger = logger
        daemon.whenReady {
            readyLogger.info("ready")
            SystemdNotify.send("READY=1\nSTATUS=in sync")
        }
        guard let mode = mode_t(socketMode, radix: 8), mode <= 0o777 else {
            logger.critical("--socket-mode \(socketMode) is not octal permission bits")
            throw ExitCode(1)
        }
        var gid: gid_t?
        if let socketGroup {
            if let n = gid_t(socketGroup) { gid = n } else if let g = getgrnam(socketGroup) { gid = g.pointee.gr_gid } else {
                logger.critical("--socket-group: no group \(socketGroup)")
                throw ExitCode(1)
            }
        }
        let server = APIServer(socketPath: socket, router: APIRouter(daemon: daemon),
                               limits: .init(idleTimeout: idleTimeout, maxConnections: maxConnections), logger: logger)
        // The socket is bound before the reconciler starts: a path that cannot be served (taken,
        // unsafe) exits 3 with the kernel untouched.
        do {
            try await server.start(mode: mode, group: gid)
        } catch {
            logger.critical("cannot serve", metadata: ["error": "\(error)"])
            throw ExitCode(3)
        }
        logger.info("serving", metadata: ["socket": "\(server.socketPath)"])
        // Graceful shutdown runs in reverse order: the API stops accepting first, then the
        // reconciler finishes the pass in progress. The rules stay in the kernel.
        var services: [any Service] = [ReconcilerService(daemon: daemon)]
        if let follower { services.append(ChangeLogService(follower: follower)) }
        services.append(APIService(server: server, logger: logger))
        let group = ServiceGroup(
            services: services,
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        try await group.run()
        logger.info("stopped; rules left in place (`rampart flush` removes them)")
    }
}


extension RampartD {
    /// The relays of `--relay`, this host's token and the TLS context: bad input exits 1.
    func relaySession(logger: Logger) throws -> RelaySession {
        do {
            let endpoints = try relay.map { (text: String) throws(RelayError) -> RelayEndpoint in try RelayEndpoint(text) }
            guard let relayTokenFile else { throw RelayError("--relay needs --relay-token-file") }
            guard let token = try TokenFile(path: relayTokenFile).tokens[host] else {
                throw RelayError("--relay-token-file \(relayTokenFile) has no line for host \(host)")
            }
            let tls = try relayCA.map { (ca: String) throws(RelayError) in try RelaySession.tlsContext(caFile: ca) }
            // The token in clear on a network lets whoever reads it subscribe as this host (and
            // push this daemon off the relay): only on purpose.
            let exposed = tls == nil ? endpoints.filter { !$0.isLoopback } : []
            if let first = exposed.first {
                guard relayPlaintext else {
                    throw RelayError("--relay \(first) without --relay-ca would send this host's token and rows over the network in clear: give --relay-ca, use a loopback relay, or say --relay-plaintext")
                }
                logger.warning("following relays over plain TCP (--relay-plaintext): the token and rows cross the network in clear",
                               metadata: ["relays": "\(exposed.map(\.description).joined(separator: ","))"])
            }
            return RelaySession(host: host, token: token, relays: endpoints, tls: tls)
        } catch {
            logger.critical("\(error)")
            throw ExitCode(1)
        }
    }

    /// Opens the store for the daemon: never creates one. A SQLite file that is missing or
    /// unsafe exits 3. A PostgreSQL server that does not answer yet is waited for (the kernel
    /// keeps its rules meanwhile), with backoff up to 5 s; a wrong schema exits 3.
    static func openStore(_ address: StoreAddress, logger: Logger) async throws -> SQLStore {
        var backoff = 0.1
        while true {
            do {
                let (opened, warnings) = try address.openExisting(checkFiles: true)
                for w in warnings { logger.warning("\(w)") }
                return opened
            } catch where error.kind == .unavailable {
                logger.error("store unreachable; the kernel keeps its rules; retrying", metadata: ["error": "\(error)", "retry_s": "\(backoff)"])
                try await Task.sleep(for: .seconds(backoff))
                backoff = min(backoff * 2, 5)
            } catch {
                logger.critical("cannot use the store: \(error)")
                throw ExitCode(3)
            }
        }
    }
}

/// The change-log follower as a service: started with the daemon, stopped at graceful shutdown
/// (before the reconciler, which ServiceGroup stops after it).
struct ChangeLogService: Service {
    let follower: ChangeLogFollower

    func run() async throws {
        follower.start()
        try? await gracefulShutdown()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                follower.stop()
                c.resume()
            }
        }
    }
}

/// The API server (already bound and accepting) as a service: it runs until graceful shutdown,
/// then stops accepting and removes its socket.
struct APIService: Service {
    let server: APIServer
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        logger.info("stopping (rules stay in place; `rampart flush` removes them)")
        SystemdNotify.send("STOPPING=1")
        await server.stop()
    }
}

/// sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET.
enum SystemdNotify {
    static func send(_ message: String) {
        guard let path = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !path.isEmpty,
              let address = try? UnixSocketAddress(path) else { return }  // "@name": the abstract namespace
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let payload = Array(message.utf8)
        _ = address.withSockaddr { sa, length in
            payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, length) }
        }
    }
}
