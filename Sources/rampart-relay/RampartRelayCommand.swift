import ArgumentParser
import Foundation
import Logging
import NIOPosix
import RampartRelay
import RampartStore
import NIOSSL

/// `rampart-relay`: holds one PostgreSQL connection for change-log reads and one LISTEN, and
/// streams each subscribed daemon its own host's rows (docs/relay.md).
@main
struct RampartRelayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rampart-relay",
        abstract: "The change-log relay: one LISTEN and one reader for many rampartd (docs/relay.md).")

    @Option(help: "The PostgreSQL store, postgres://USER@HOST[:PORT]/DATABASE?sslrootcert=CA.pem (docs/postgres.md; default: $RAMPART_STORE). It must have this version's schema; the relay never changes it.")
    var store: String?

    @Option(help: "Where to accept daemons, ADDRESS:PORT.")
    var listen: String = "0.0.0.0:7946"

    @Option(help: "The hosts' tokens: `HOST TOKEN` lines, mode 0600 (a file group or others can read is refused).")
    var tokenFile: String

    @Option(help: "A PEM certificate chain: serve TLS (with --tls-key).")
    var tlsCert: String?

    @Option(help: "The PEM private key of --tls-cert.")
    var tlsKey: String?

    @Flag(help: "Serve plain TCP on an address other than loopback: every host's token and rows cross the network in clear (without it, such a --listen needs --tls-cert).")
    var plaintext = false

    @Option(help: "Subscribers at once; the next is refused and its daemon tries another relay.")
    var maxSubscribers: Int = 20_000

    @Option(help: "Subscribers of one host at once; a hello past it closes the host's oldest connection.")
    var maxSubscribersPerHost: Int = 2

    @Option(help: "Bytes queued for one subscriber before it is cut off and told to reload.")
    var bufferBytes: Int = 1 << 20

    @Option(help: "Rows of each host's log kept in memory.")
    var windowRows: Int = 256

    @Option(help: "Seconds between status lines on stderr (0: none).")
    var statusInterval: Double = 10

    @Option(help: "Serve GET /metrics (Prometheus text) on ADDRESS:PORT (plain HTTP; default: no metrics).")
    var metrics: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "rampart-relay")
        guard maxSubscribers >= 1, maxSubscribersPerHost >= 1, bufferBytes >= 1024, windowRows >= 1, statusInterval >= 0 else {
            logger.critical("--max-subscribers, --max-subscribers-per-host and --window-rows must be at least 1, --buffer-bytes at least 1024, --status-interval 0 or more")
            throw ExitCode(1)
        }
        guard (tlsCert == nil) == (tlsKey == nil) else {
            logger.critical("--tls-cert and --tls-key go together")
            throw ExitCode(1)
        }
        let endpoint: RelayEndpoint
        let metricsEndpoint: RelayEndpoint?
        let tokens: TokenFile
        let location: PostgresLocation
        do {
            endpoint = try RelayEndpoint(listen)
            metricsEndpoint = try metrics.map { m throws(RelayError) in try RelayEndpoint(m) }
            tokens = try TokenFile(path: tokenFile)
            guard let url = store ?? ProcessInfo.processInfo.environment["RAMPART_STORE"] else { throw RelayError("--store (or RAMPART_STORE) is required") }
            location = try PostgresLocation(url: url)
        } catch {
            logger.critical("\(error)")
            throw ExitCode(1)
        }
        // Tokens in clear on a network let anyone who reads them subscribe as that host (and,
        // with the per-host limit, push its daemon off): only on purpose.
        if tlsCert == nil && !endpoint.isLoopback {
            guard plaintext else {
                logger.critical("--listen \(endpoint) without TLS would send every host's token and rows over the network in clear: give --tls-cert and --tls-key, listen on loopback, or say --plaintext")
                throw ExitCode(1)
            }
            logger.warning("serving plain TCP on a network address (--plaintext): tokens and rows cross it in clear", metadata: ["listen": "\(endpoint)"])
        }
        let tls = try tlsCert.map { cert throws -> NIOSSLContextBox in
            do { return NIOSSLContextBox(try RelayServer.tlsContext(certificate: cert, key: tlsKey!)) } catch {
                logger.critical("\(error)")
                throw ExitCode(1)
            }
        }
        // The store is waited for (the daemons keep their rules meanwhile); a wrong schema exits.
        var backoff = 0.1
        var opened: PostgresStore?
        while opened == nil {
            do { opened = try PostgresStore(location: location, migrate: false) } catch where error.kind == .unavailable {
                logger.error("store unreachable; retrying", metadata: ["error": "\(error)", "retry_s": "\(backoff)"])
                Thread.sleep(forTimeInterval: backoff)
                backoff = min(backoff * 2, 5)
            } catch {
                logger.critical("cannot use the store: \(error)")
                throw ExitCode(3)
            }
        }
        var settings = RelayHub.Settings()
        settings.maxSubscribers = maxSubscribers
        settings.maxSubscribersPerHost = maxSubscribersPerHost
        settings.maxBufferedBytes = bufferBytes
        settings.windowRows = windowRows
        let hub = RelayHub(log: opened!, wakeups: PostgresWakeups(location: location), tokens: tokens, settings: settings, logger: logger)
        let server = RelayServer(hub: hub, host: endpoint.host, port: endpoint.port, tls: tls?.context, group: MultiThreadedEventLoopGroup.singleton)
        hub.start()
        let port: Int
        do { port = try server.start() } catch {
            logger.critical("\(error)")
            throw ExitCode(3)
        }
        logger.info("relaying", metadata: ["listen": "\(endpoint.host):\(port)", "tls": "\(tls != nil)", "hosts": "\(tokens.tokens.count)"])
        let metricsServer = metricsEndpoint.map { RelayMetricsServer(hub: hub, host: $0.host, port: $0.port, group: MultiThreadedEventLoopGroup.singleton) }
        if let metricsServer {
            do {
                let bound = try metricsServer.start()
                logger.info("metrics", metadata: ["listen": "\(metricsEndpoint!.host):\(bound)", "path": "/metrics"])
            } catch {
                logger.critical("cannot serve metrics: \(error)")
                server.stop()
                hub.stop()
                throw ExitCode(3)
            }
        }
        let stopped = DispatchSemaphore(value: 0)
        let signals = [SIGTERM, SIGINT].map { sig -> any DispatchSourceSignal in
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig)
            s.setEventHandler { stopped.signal() }
            s.resume()
            return s
        }
        let reporter = statusInterval > 0 ? StatusLine(hub: hub, interval: statusInterval, logger: logger) : nil
        reporter?.start()
        stopped.wait()
        _ = signals
        reporter?.stop()
        logger.info("stopping")
        metricsServer?.stop()
        server.stop()
        hub.stop()
    }
}

/// The TLS context, carried out of a throwing closure.
struct NIOSSLContextBox {
    let context: NIOSSLContext
    init(_ c: NIOSSLContext) { context = c }
}

/// Logs the hub's counters every `interval` seconds, with rates since the last line.
final class StatusLine: @unchecked Sendable {
    let hub: RelayHub
    let interval: Double
    let logger: Logger
    private let timer: any DispatchSourceTimer

    init(hub: RelayHub, interval: Double, logger: Logger) {
        self.hub = hub
        self.interval = interval
        self.logger = logger
        timer = DispatchSource.makeTimerSource()
    }

    func start() {
        var last = hub.statistics()
        var at = Date()
        timer.schedule(deadline: .now() + interval, repeating: interval)
        timer.setEventHandler { [hub, logger] in
            let s = hub.statistics(), now = Date()
            let dt = max(now.timeIntervalSince(at), 0.001)
            logger.info("status", metadata: [
                "subscribers": "\(s.subscribers)", "connected": "\(s.connected)",
                "rows_read_per_s": "\(Int(Double(s.rowsRead - last.rowsRead) / dt))",
                "rows_sent_per_s": "\(Int(Double(s.rowsSent - last.rowsSent) / dt))",
                "behind": "\(s.behind)", "max_unacked_rows": "\(s.maxUnackedRows)",
                "reloads_trimmed": "\(s.reloadsTrimmed)", "reloads_overflow": "\(s.reloadsOverflow)", "refused": "\(s.refused)",
            ])
            last = s
            at = now
        }
        timer.resume()
    }

    func stop() { timer.cancel() }
}
