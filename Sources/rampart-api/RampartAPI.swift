import ArgumentParser
import Foundation
import Logging
import RampartEC2
import RampartStore

/// `rampart-api`: the EC2 Query API (security groups) over the Rampart store. docs/ec2-api.md.
@main
struct RampartAPI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rampart-api",
        abstract: "Serve the EC2 API (security groups) over the Rampart store.",
        discussion: "Each mutating call is one store transaction; its refresh calls are delivered (SQLite: to --socket daemons; PostgreSQL: by the change log) before the answer.")

    @Option(help: "The store: a SQLite file, or postgres://USER@HOST[:PORT]/DATABASE (default: $RAMPART_STORE, else \(StoreAddress.defaultPath)).")
    var store: String?

    @Option(help: "ADDRESS:PORT to listen on (port 0: any free port; the bound one is printed).")
    var listen = "127.0.0.1:8773"

    @Option(help: "The access-key file (mode 0600): lines ACCESS_KEY_ID SECRET_ACCESS_KEY ACCOUNT_ID.")
    var keys: String?

    @Option(help: "The region of requests when --no-auth (signed requests use their signature's region).")
    var region = "us-east-1"

    @Flag(help: "Accept unsigned requests, all as --account in --region. Local development only.")
    var noAuth = false

    @Option(help: "With --no-auth: the account (12 digits) every request acts as.")
    var account = "000000000000"

    @Option(name: .long, help: "A daemon's API socket (repeatable), for deliveries with a SQLite store.")
    var socket: [String] = ["/run/rampart/rampartd.sock"]

    func fail(_ message: String) -> ExitCode {
        FileHandle.standardError.write(Data("rampart-api: \(message)\n".utf8))
        return ExitCode(1)
    }

    func run() throws {
        // SIGTERM and SIGINT end the server, even when the parent started it with them blocked.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGTERM)
        sigaddset(&signals, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &signals, nil)
        signal(SIGTERM, SIG_DFL)
        signal(SIGINT, SIG_DFL)
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        let logger = Logger(label: "rampart-api")
        let auth: EC2Server.Auth
        if noAuth {
            if keys != nil { throw fail("--no-auth and --keys exclude each other") }
            guard account.count == 12, account.allSatisfy({ $0.isASCII && $0.isNumber }) else { throw fail("--account must be 12 digits") }
            auth = .none(Caller(account: account, region: region))
        } else {
            guard let keys else { throw fail("give --keys FILE (or --no-auth for local development)") }
            do { auth = .sigV4(Verifier(keys: try KeyFile.load(keys))) } catch { throw fail(error.message) }
        }
        let colon = listen.lastIndex(of: ":")
        guard let colon, let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else {
            throw fail("--listen must be ADDRESS:PORT")
        }
        let host = String(listen[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        let st: SQLStore
        do { st = try StoreAddress(store).openForWriting() } catch { throw fail("the store: \(error.message)") }
        let delivery = SocketDelivery(sockets: socket)
        let logsDeliver = st is ChangeLog
        let service = EC2Service(store: st) { deliveries in
            guard !logsDeliver else { return }  // PostgreSQL: the change log delivers
            for (d, outcome) in delivery.deliver(deliveries) {
                switch outcome {
                case .sent: logger.debug("delivered to \(d.host): \(d.refresh)")
                case .noDaemon: logger.warning("not delivered to \(d.host): \(d.refresh): no daemon for \(d.host) among --socket")
                case .failed(let status, let body): logger.error("delivery to \(d.host): \(d.refresh) failed (\(status)) \(body)")
                case .error(let e): logger.error("delivery to \(d.host): \(d.refresh) failed: \(e)")
                }
            }
        }
        let server = EC2Server(service: service, auth: auth, logger: logger)
        let bound: Int
        do { bound = try server.start(host: host, port: port) } catch { throw fail("cannot listen on \(listen): \(error)") }
        if noAuth {
            let warning = "WARNING: --no-auth: requests are NOT authenticated; anyone who can connect acts as account \(account). Local development only."
            FileHandle.standardError.write(Data("rampart-api: \(warning)\n".utf8))
        }
        FileHandle.standardOutput.write(Data("rampart-api: listening on \(host):\(bound) (store \(StoreAddress.description(store)))\n".utf8))
        server.wait()
    }
}

extension StoreAddress {
    static func description(_ given: String?) -> String { (try? StoreAddress(given).description) ?? "?" }
}
