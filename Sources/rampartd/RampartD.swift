import ArgumentParser
import Foundation
import Logging
import RampartDaemon
import RampartNetlink
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

    @Option(help: "The store (SQLite file).")
    var store: String = "/var/lib/rampart/rampart.db"

    @Option(help: "The API's Unix socket (mode 0600: root only).")
    var socket: String = "/run/rampart/rampartd.sock"

    @Option(help: "The socket's permission bits, in octal (default 600: root only).")
    var socketMode: String = "600"

    @Option(help: "A group whose members may use the socket (with --socket-mode 660).")
    var socketGroup: String?

    @Option(help: "Program this network namespace (as made by `ip netns add`) instead of the current one.")
    var netns: String?

    @Option(help: "Seconds between resyncs (read the table back, repair drift).")
    var resyncInterval: Double = 30

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        var logger = Logger(label: "rampartd")
        logger[metadataKey: "host"] = "\(host)"
        let st: SQLiteStore
        do { st = try SQLiteStore(path: store) } catch {
            logger.critical("cannot open the store: \(error)")
            throw ExitCode(3)
        }
        let config = Daemon.Configuration(host: host, namespace: netns.map { .named($0) } ?? .current, resyncInterval: resyncInterval)
        let daemon = Daemon(configuration: config, store: st, logger: logger)
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
        let server = APIServer(socketPath: socket, router: APIRouter(daemon: daemon), logger: logger)
        let group = ServiceGroup(
            services: [DaemonService(daemon: daemon, server: server, logger: logger, socketMode: mode, socketGroup: gid)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        try await group.run()
    }
}

/// The worker and the API as one service: start both, run until graceful shutdown, then stop
/// accepting, let the drain in progress finish, and leave the kernel's rules in place.
struct DaemonService: Service {
    let daemon: Daemon
    let server: APIServer
    let logger: Logger
    let socketMode: mode_t
    let socketGroup: gid_t?

    func run() async throws {
        do {
            try await server.start(mode: socketMode, group: socketGroup)
        } catch {
            logger.critical("cannot serve: \(error)")
            throw ExitCode(3)
        }
        daemon.start()
        logger.info("serving", metadata: ["socket": "\(server.socketPath)"])
        try? await gracefulShutdown()
        logger.info("stopping (rules stay in place; `rampart flush` removes them)")
        SystemdNotify.send("STOPPING=1")
        await server.stop()
        await Task.detached { daemon.stop() }.value
    }
}

/// sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET.
enum SystemdNotify {
    static func send(_ message: String) {
        guard let path = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !path.isEmpty else { return }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }  // abstract namespace
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let payload = Array(message.utf8)
        _ = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, len) }
            }
        }
    }
}
