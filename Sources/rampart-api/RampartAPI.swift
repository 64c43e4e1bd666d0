import ArgumentParser
import Foundation
import Logging
import RampartCompute
import RampartEC2
import RampartStore
import RampartWiring

/// `rampart-api`: the EC2 Query API (security groups) over the Rampart store. docs/ec2-api.md.
@main
struct RampartAPI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rampart-api",
        abstract: "Serve the EC2 API (security groups) over the Rampart store.",
        discussion: "Each mutating call is one store transaction; its refresh calls are delivered (SQLite: to --socket daemons; PostgreSQL: by the change log) before the answer.")

    @Option(help: "The store: a SQLite file, or postgres://USER@HOST[:PORT]/DATABASE?sslrootcert=CA.pem (docs/postgres.md; default: $RAMPART_STORE, else \(StoreAddress.defaultPath)).")
    var store: String?

    @Option(help: "ADDRESS:PORT to listen on (port 0: any free port; the bound one is printed).")
    var listen = "127.0.0.1:8773"

    @Option(help: "The access-key file (mode 0600): lines ACCESS_KEY_ID SECRET_ACCESS_KEY ACCOUNT_ID.")
    var keys: String?

    @Option(help: "The region of requests when --no-auth (signed requests use their signature's region).")
    var region = "us-east-1"

    @Option(help: "The regions requests may be signed for, comma-separated (default: --region alone); others are refused (SignatureDoesNotMatch).")
    var regions: String?

    @Option(help: "Security groups per instance, 1-16 (AWS's default quota is 5, its ceiling 16).")
    var maxGroupsPerInterface = 5

    @Option(help: "Seconds a terminated instance stays listed by DescribeInstances (AWS: about an hour).")
    var terminatedVisible = 3600

    @Flag(help: "Accept unsigned requests, all as --account in --region. Local development only.")
    var noAuth = false

    @Option(help: "With --no-auth: the account (12 digits) every request acts as.")
    var account = "000000000000"

    @Option(help: "Connections to the store, 1-64: as many transactions run at once (requests beyond wait for one).")
    var connections = 4

    @Option(name: .long, help: "A daemon's API socket (repeatable), for deliveries with a SQLite store.")
    var socket: [String] = ["/run/rampart/rampartd.sock"]

    @Option(help: "What makes launched instances exist: none (records only: the operator's compute makes the devices) or netns (a namespace and veth per instance: demos and tests).")
    var compute = "none"

    @Option(name: .customLong("compute-host"), help: "With --compute netns: HOST=NETNS, the network namespace of hypervisor HOST (repeatable).")
    var computeHosts: [String] = []

    @Option(name: .customLong("compute-fabric"), help: "With --compute netns: the namespace routing between hypervisors (its device towards each is named as the host).")
    var computeFabric: String?

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
        let allowed = Set((regions ?? region).split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        guard !allowed.isEmpty, allowed.allSatisfy(Self.isRegionName) else {
            throw fail("--regions must be region names (like us-east-1), comma-separated")
        }
        if noAuth && !allowed.contains(region) { throw fail("--no-auth: --region \(region) is not among --regions") }
        guard (1...EC2Settings.groupsPerInterfaceCeiling).contains(maxGroupsPerInterface) else {
            throw fail("--max-groups-per-interface must be 1-\(EC2Settings.groupsPerInterfaceCeiling) (AWS's ceiling)")
        }
        guard terminatedVisible >= 0 else { throw fail("--terminated-visible must be 0 or more seconds") }
        let settings = EC2Settings(regions: allowed, maxGroupsPerInterface: maxGroupsPerInterface, terminatedVisibleSeconds: terminatedVisible)
        let driver: (any InstanceCompute)?
        do { driver = try Self.computeDriver(compute, hosts: computeHosts, fabric: computeFabric) } catch { throw fail("\(error)") }
        let colon = listen.lastIndex(of: ":")
        guard let colon, let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else {
            throw fail("--listen must be ADDRESS:PORT")
        }
        let host = String(listen[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        guard (1...64).contains(connections) else { throw fail("--connections must be 1-64") }
        let st: SQLStore
        var pool: [SQLStore] = []
        do {
            // The first connection creates or upgrades the store; the others only open it.
            st = try StoreAddress(store).openForWriting()
            pool = [st]
            for _ in 1..<connections { pool.append(try StoreAddress(store).openExisting(checkFiles: false).store) }
        } catch { throw fail("the store: \(error.message)") }
        let delivery = SocketDelivery(sockets: socket)
        let logsDeliver = st is ChangeLog
        let service = EC2Service(pool: StorePool(pool), settings: settings, compute: driver) { deliveries in
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

extension RampartAPI {
    /// AWS's region names: lowercase letters, digits and dashes, like `us-east-1`.
    static func isRegionName(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 32 && s.allSatisfy { ($0.isASCII && ($0.isLowercase || $0.isNumber)) || $0 == "-" }
            && !s.hasPrefix("-") && !s.hasSuffix("-")
    }
}

extension RampartAPI {
    /// The compute `--compute` names: nil for none; netns with its hosts (and fabric) checked.
    static func computeDriver(_ kind: String, hosts: [String], fabric: String?) throws -> (any InstanceCompute)? {
        switch kind {
        case "none":
            guard hosts.isEmpty, fabric == nil else { throw WiringError("--compute-host and --compute-fabric need --compute netns") }
            return nil
        case "netns":
            guard getuid() == 0 else { throw WiringError("--compute netns needs root (it creates network namespaces)") }
            return try NetnsCompute(NetnsComputeConfiguration(mappings: hosts, fabric: fabric))
        default:
            throw WiringError("--compute must be none or netns, not \(kind)")
        }
    }
}

extension StoreAddress {
    static func description(_ given: String?) -> String { (try? StoreAddress(given).description) ?? "?" }
}
