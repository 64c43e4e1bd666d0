import ArgumentParser
import Foundation
import RampartCore
import RampartStore

// The controller verbs: each is one transaction on the store, then the fan-out (which hosts must
// receive which refresh call), delivered to the daemons given with --socket and printed.

/// Where the store is, where the daemons listen, and whether to wait for them.
struct ControllerOptions: ParsableArguments {
    @Option(help: "The store: a SQLite file, or postgres://USER@HOST[:PORT]/DATABASE?sslrootcert=CA.pem (docs/postgres.md; default: $RAMPART_STORE, else \(StoreAddress.defaultPath)).")
    var store: String?

    @Option(name: .long, help: "A daemon's API socket (repeat for several daemons; each serves the host its status names). SQLite store only: with PostgreSQL the change log delivers.")
    var socket: [String] = ["/run/rampart/rampartd.sock"]

    @Flag(help: "Change the store only; print the refresh calls without delivering them.")
    var noDeliver = false

    @Flag(help: "PostgreSQL store: after COMMIT, wait until every notified host has applied its rows (see --timeout).")
    var wait = false

    @Option(help: "Seconds --wait waits at most; then exit 4 naming the hosts still behind.")
    var timeout: Double = 30

    var address: StoreAddress {
        get throws {
            do { return try StoreAddress(store) } catch {
                FileHandle.standardError.write(Data("rampart: \(error.message)\n".utf8))
                throw ExitCode(1)
            }
        }
    }

    func open() throws -> SQLStore {
        let a = try address
        do { return try a.openForWriting() } catch {
            FileHandle.standardError.write(Data("rampart: \(error.message)\n".utf8))
            throw ExitCode(3)
        }
    }

    /// Runs a store change, then delivers and prints its fan-out. Exit 1 refused, 3 the store
    /// failed or is unreachable (nothing changed), 4 a delivery failed or --wait timed out.
    func change(_ body: (SQLStore) throws(StoreError) -> [Delivery]) throws {
        let st = try open()
        // SQLite: the WAL checkpoint a COMMIT may run is taken after the deliveries instead, off
        // the path from the verb to the daemons' commits (SQLiteStore.deferCheckpoints).
        let sqlite = st as? SQLiteStore
        sqlite?.deferCheckpoints()
        defer {
            do { try sqlite?.checkpointIfDue() } catch {
                FileHandle.standardError.write(Data("rampart: warning: the store's WAL checkpoint failed (the next verb tries again): \(error.message)\n".utf8))
            }
        }
        let deliveries: [Delivery]
        do { deliveries = try body(st) } catch {
            let code: Int32 = switch error.kind { case .invalid, .notFound, .conflict: 1; case .database, .unavailable, .missing, .unsafe: 3 }
            FileHandle.standardError.write(Data("rampart: \(error.message)\n".utf8))
            throw ExitCode(code)
        }
        if deliveries.isEmpty { print("no refresh calls needed") }
        if let log = st as? ChangeLog {
            // The change log delivers: the rows were committed with the change.
            for d in deliveries { print("logged for \(d.host): \(d.refresh) (#\(d.sequence.map(String.init) ?? "?"))") }
            if wait && !deliveries.isEmpty { try FleetWait(log: log, deliveries: deliveries, timeout: timeout).run() }
            return
        }
        if wait {
            FileHandle.standardError.write(Data("rampart: --wait needs a PostgreSQL store (with SQLite, deliveries to --socket wait for the commit)\n".utf8))
        }
        if noDeliver {
            for d in deliveries { print("to \(d.host): \(d.refresh) (not delivered: --no-deliver)") }
            return
        }
        var failed = false
        for (d, outcome) in SocketDelivery(sockets: socket).deliver(deliveries) {
            switch outcome {
            case .noDaemon: print("to \(d.host): \(d.refresh) (not delivered: no daemon for \(d.host) among --socket)")
            case .sent(let body): print("sent to \(d.host): \(d.refresh): \(body)")
            case .failed(let status, let body): print("sent to \(d.host): \(d.refresh): failed (\(status)) \(body)")
            case .error(let e): print("to \(d.host): \(d.refresh): not delivered: \(e)")
            }
            failed = failed || outcome.isFailure
        }
        if failed { throw ExitCode(4) }
    }
}

/// `--wait`: polls the hosts' applied positions until each reaches the last row this verb
/// wrote for it, printing per host what it waited for and how long.
struct FleetWait {
    let log: ChangeLog
    let deliveries: [Delivery]
    let timeout: Double

    func run() throws {
        var targets: [String: Int64] = [:]
        for d in deliveries { if let s = d.sequence { targets[d.host] = max(targets[d.host] ?? 0, s) } }
        let start = DispatchTime.now().uptimeNanoseconds
        func elapsed() -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        var pending = targets
        var pause = 0.0005
        while !pending.isEmpty {
            let progress: [LogProgress]
            do { progress = try log.progress(hosts: pending.keys.sorted()) } catch {
                FileHandle.standardError.write(Data("rampart: waiting: \(error.message)\n".utf8))
                throw ExitCode(3)
            }
            for p in progress where p.applied >= (pending[p.host] ?? .max) {
                print(String(format: "applied on %@: #%lld after %.1f ms", p.host, pending[p.host]!, elapsed() * 1000))
                pending[p.host] = nil
            }
            if pending.isEmpty { break }
            if elapsed() > timeout {
                for (h, s) in pending.sorted(by: { $0.key < $1.key }) {
                    let at = progress.first { $0.host == h }?.applied ?? 0
                    print("not applied on \(h) within \(timeout) s: waiting for #\(s), applied #\(at)")
                }
                throw ExitCode(4)
            }
            // From half a millisecond up to 20 ms: quick for a daemon that is there, light for one that is not.
            usleep(UInt32(pause * 1e6))
            pause = min(pause * 1.5, 0.02)
        }
    }
}

struct GroupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "group", abstract: "Create, delete, authorize and revoke security groups (controller verbs).",
        subcommands: [Create.self, Delete.self, Authorize.self, Revoke.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a group with no rules.")
        @Argument var group: String
        @Option var description: String?
        @OptionGroup var controller: ControllerOptions
        func run() throws { try controller.change { st throws(StoreError) in try st.createGroup(group, description: description) } }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a group that has no member and that no rule references.")
        @Argument var group: String
        @OptionGroup var controller: ControllerOptions
        func run() throws { try controller.change { st throws(StoreError) in try st.deleteGroup(group) } }
    }

    /// A rule given as options.
    struct RuleOptions: ParsableArguments {
        @Option(help: "tcp, udp, sctp, icmp, icmpv6, any, or a number 1-255.") var `protocol`: String?
        @Option(help: "N or N-M (tcp, udp, sctp).") var ports: String?
        @Option(name: .customLong("icmp-type")) var icmpType: Int?
        @Option(name: .customLong("icmp-code")) var icmpCode: Int?
        @Option(help: "Remote prefix.") var cidr: String?
        @Option(name: .customLong("group"), help: "Remote group.") var remoteGroup: String?
        @Option(help: "ingress (default) or egress.") var direction: String?
        @Option(help: "ipv4 or ipv6.") var ethertype: String?
        @Option(help: "The rule's id.") var id: String?

        var isEmpty: Bool { `protocol` == nil && ports == nil && icmpType == nil && icmpCode == nil && cidr == nil && remoteGroup == nil && direction == nil && ethertype == nil }

        /// The rule, built and validated from the options directly; an error names the options.
        func rule() throws -> Rule {
            let fields = RuleFields(id: id, direction: direction, protocol: `protocol`, ports: ports, icmpType: icmpType,
                                    icmpCode: icmpCode, cidr: cidr, group: remoteGroup, ethertype: ethertype)
            switch fields.rule() {
            case .success(let r): return r
            case .failure(let e):
                throw Failure.document("rampart: invalid rule: " + optionIssues(e.issues, options: Self.options, whole: "the rule"))
            }
        }

        /// The option that gives each field of the rule (document key → option).
        static let options = ["id": "--id", "direction": "--direction", "protocol": "--protocol", "ports": "--ports",
                              "icmp_type": "--icmp-type", "icmp_code": "--icmp-code", "cidr": "--cidr", "group": "--group",
                              "ethertype": "--ethertype"]
    }

    struct Authorize: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a rule to a group; its members' hosts get refresh_security_group_rules.")
        @Argument var group: String
        @OptionGroup var rule: RuleOptions
        @OptionGroup var controller: ControllerOptions
        func run() throws {
            try reportingFailures {
                let r = try rule.rule()
                try controller.change { st throws(StoreError) in try st.authorize(group: group, rule: r) }
            }
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a rule (by content, or by --id alone) from a group.")
        @Argument var group: String
        @OptionGroup var rule: RuleOptions
        @OptionGroup var controller: ControllerOptions
        func run() throws {
            try reportingFailures {
                let r: Rule? = rule.isEmpty ? nil : try rule.rule()
                let id = rule.isEmpty ? rule.id : nil
                guard r != nil || id != nil else { throw Failure.document("rampart: give the rule's options, or --id alone") }
                try controller.change { st throws(StoreError) in try st.revoke(group: group, rule: r, id: id) }
            }
        }
    }
}

struct InstanceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "instance", abstract: "Add, remove and regroup instances (controller verbs).",
        subcommands: [Add.self, Remove.self, SetGroups.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add an instance; its host gets an instance refresh, referrers of its groups a members refresh.")
        @Argument var id: String
        @Option var host: String
        @Option(name: .customLong("ip")) var ips: [String] = []
        @Option var interface: String?
        @Option var mac: String?
        @Option(name: .customLong("group")) var groups: [String] = []
        @OptionGroup var controller: ControllerOptions

        /// The option that gives each field of the instance (document key → option).
        static let options = ["host": "--host", "ips": "--ip", "interface": "--interface", "mac": "--mac", "groups": "--group"]

        func run() throws {
            try reportingFailures {
                var issues: [ValidationIssue] = []
                func take<T>(_ r: Result<T, ValidationIssue>) -> T? {
                    switch r {
                    case .success(let v): return v
                    case .failure(let i): issues.append(i); return nil
                    }
                }
                let addrs = ips.compactMap { take(Validate.parseInstanceAddress($0, at: "ips")) }
                let m = mac.flatMap { take(Validate.parseMAC($0, at: "mac")) }
                let inst = Instance(host: host, groups: groups, ips: addrs, interface: interface, mac: m)
                // An --ip that did not parse is reported once, not again as "needs at least one".
                issues += Validate.instance(inst, id: id, at: "", thisHost: nil).filter { ips.isEmpty || $0.path != "ips" }
                if !issues.isEmpty {
                    throw Failure.document("rampart: invalid instance: " + optionIssues(issues, options: Self.options, whole: "the instance id"))
                }
                try controller.change { st throws(StoreError) in try st.addInstance(id, inst) }
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove an instance.")
        @Argument var id: String
        @OptionGroup var controller: ControllerOptions
        func run() throws { try controller.change { st throws(StoreError) in try st.removeInstance(id) } }
    }

    struct SetGroups: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "set-groups", abstract: "Replace an instance's groups.")
        @Argument var id: String
        @Argument var groups: [String] = []
        @OptionGroup var controller: ControllerOptions
        func run() throws { try controller.change { st throws(StoreError) in try st.setGroups(instance: id, groups: groups) } }
    }
}

struct HostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "host", abstract: "Hypervisors: register one and set its guarded interface prefixes.",
        subcommands: [Guard.self])

    struct Guard: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set a host's guarded interface-name prefixes (registering the host if new): a device with such a name that belongs to no instance passes nothing. No --prefix clears them.")
        @Argument(help: "The host (hypervisor) name.") var host: String
        @Option(name: .customLong("prefix"), help: "An interface-name prefix of instance devices, e.g. tap (repeatable).") var prefixes: [String] = []
        @OptionGroup var controller: ControllerOptions
        func run() throws { try controller.change { st throws(StoreError) in try st.setGuardedPrefixes(host: host, prefixes) } }
    }
}

struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Load a desired-state document into the store (groups and instances upserted); the hosts it touches reload.")
    @Argument(help: "The document, or - for standard input.") var file: String
    @OptionGroup var controller: ControllerOptions
    func run() throws {
        try reportingFailures {
            let doc = try loadDocument(file)
            try controller.change { st throws(StoreError) in try st.importDocument(doc) }
        }
    }
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a host's desired-state document from the store, complete enough for `rampart import` to restore it exactly.")
    @Option var host: String
    @OptionGroup var controller: ControllerOptions
    func run() throws {
        // Reading does not create a store: a mistyped --store is an error, not an empty document.
        let st: SQLStore
        do { st = try controller.address.openExisting(checkFiles: false).store } catch let e as ExitCode { throw e } catch {
            FileHandle.standardError.write(Data("rampart: \(error)\n".utf8))
            throw ExitCode(3)
        }
        // Nor is an unknown host an empty document (applied, it would remove every rule).
        do {
            if try !st.knowsHost(host) {
                FileHandle.standardError.write(Data("rampart: the store does not know host \(host)\n".utf8))
                throw ExitCode(1)
            }
        } catch let e as ExitCode { throw e } catch {
            FileHandle.standardError.write(Data("rampart: \(error)\n".utf8))
            throw ExitCode(3)
        }
        do { print(try st.exportDocument(forHost: host).jsonText()) } catch {
            FileHandle.standardError.write(Data("rampart: \(error)\n".utf8))
            throw ExitCode(3)
        }
    }
}

/// Issues about a value given as options, in the options' words: each path's first key is
/// replaced by its option (`ports` → `--ports`, `ips[1]` → `--ip`), the empty path by `whole`.
/// One issue per line after the first.
func optionIssues(_ issues: [ValidationIssue], options: [String: String], whole: String) -> String {
    issues.sorted().map { i in
        let key = String(i.path.prefix { $0 != "." && $0 != "[" })
        let name = i.path.isEmpty ? whole : options[key] ?? i.path
        return "\(name): \(i.reason)"
    }.joined(separator: "\n  ")
}
