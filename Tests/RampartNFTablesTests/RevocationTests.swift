import Foundation
import Testing
import RampartConntrack
import RampartCore
import RampartHarness
import RampartNetlink
import RampartSystem
@testable import RampartNFTables

/// Revocation is immediate (contract rule 8), with real traffic through the traffic suite's
/// hypervisor: connections established before a change that no longer allows them stop passing
/// as soon as `rampart apply` has returned; connections still allowed, of the same instance or
/// of others, keep working. `conntrack -L` in the hypervisor's namespace is only an oracle.
@Suite("Revocation cuts the connections a change no longer allows", .serialized, .tags(.kernel), .rootOnly) struct RevocationTests {
    typealias Enforced = TrafficTests.Enforced

    /// Revocation reads the committed IR, not the kernel's objects: the same for every backend
    /// (iptables converges without a Plan, so its cut looks at every local instance's entries).
    static let backends: [TrafficBackend] = [.nftables, .iptablesLegacy, .iptablesNFTBridged]

    /// How the change is applied and cut: `rampart apply` with a backend (the entries found by
    /// dumping), or in process like `rampart apply` does it on nftables but with a
    /// `ConntrackIndex` started before the connections opened (the entries found in the index).
    enum Mode: Sendable, CustomTestStringConvertible {
        case cli(TrafficBackend)
        case indexed
        var testDescription: String {
            switch self {
            case .cli(let b): b.rawValue
            case .indexed: "nftables with the conntrack index"
            }
        }
    }
    static let modes: [Mode] = backends.map(Mode.cli) + [.indexed]

    /// A hypervisor with the policy enforced, and the way changes are applied (`Mode`).
    final class Cutting {
        let enforced: Enforced
        let index: ConntrackIndex?
        var topo: HypervisorTopology { enforced.topo }
        init(_ mode: Mode) throws {
            switch mode {
            case .cli(let backend):
                enforced = try Enforced(backend)
                index = nil
            case .indexed:
                enforced = try Enforced(.nftables)
                index = try ConntrackIndex.start(namespace: .named(enforced.topo.hypervisor.name))
            }
        }
        func destroy() {
            index?.stop()
            topo.destroy()
        }
        /// Applies `document`: `rampart apply`, or its steps in process with the index
        /// (KernelCommands' `Apply.run` and `cutConnections`).
        @discardableResult
        func apply(_ document: String) throws -> (status: Int32, stdout: String, stderr: String) {
            guard let index else {
                let r = try enforced.apply(document)
                return (r.status, r.stdout, r.stderr)
            }
            let ns = NetworkNamespace.named(topo.hypervisor.name)
            let desired = Compiler.compile(try Document.parse(json: Data(document.utf8)))
            let change = try NFTablesBackend(client: try NFTablesConnection(namespace: ns)).converge(to: desired)
            if change.isEmpty { return (0, "no changes\n", "") }
            var scope = Revocation.Scope.none
            var departed: Set<IPAddress> = []
            if let plan = change.plan {
                scope = Revocation.scope(of: plan, result: desired, previous: change.previous)
                departed = Revocation.departed(in: plan, result: desired)
            }
            let r = try Revocation.run(try ConntrackConnection(namespace: ns), ir: desired, scope: scope, departed: departed,
                                       hostAddresses: try Revocation.hostAddresses(in: ns), index: index)
            #expect(scope == .none || r.indexed, "the index was not used: \(index.statistics)")
            return (0, "applied: \(change.summary); conntrack: \(r.cut) cut\n", "")
        }
    }

    /// The traffic suite's document with some web rules taken out (by id) or instances' groups changed.
    static func document(withoutWebRules ids: [String] = [], groups: [String: String] = [:], adminMembers: String = "") -> String {
        var d = TrafficTests.document(adminMembers: adminMembers, webSSH: !ids.contains("ssh-from-admin"))
        for id in ids where id != "ssh-from-admin" {
            let lines = d.split(separator: "\n", omittingEmptySubsequences: false)
            d = lines.filter { !$0.contains(#"{"id": "\#(id)""#) }.joined(separator: "\n")
        }
        for (instance, list) in groups {
            let lines = d.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
                guard line.trimmingCharacters(in: .whitespaces).hasPrefix(#""\#(instance)":"#) else { return String(line) }
                return String(line).replacing(#/"groups": \[[^\]]*\]/#, with: #""groups": [\#(list)]"#)
            }
            d = lines.joined(separator: "\n")
        }
        return d
    }

    /// A UDP flow with a fixed source port, so that every datagram belongs to one conntrack entry.
    struct UDPFlow {
        let topo: HypervisorTopology
        let from: String, to: String, port: UInt16, sourcePort: UInt16
        static let script = """
            import socket,sys
            fam = socket.AF_INET6 if ':' in sys.argv[2] else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(('', int(sys.argv[1]))); s.settimeout(float(sys.argv[4]))
            tok = ('flow-%s-%s' % (sys.argv[1], sys.argv[5])).encode()
            s.sendto(tok, (sys.argv[2], int(sys.argv[3])))
            try:
                d, a = s.recvfrom(200); print('ok' if d == tok else 'other')
            except Exception:
                print('none')
            """
        nonisolated(unsafe) static var counter = 0
        /// True iff the datagram came back (the echo listener answers every datagram).
        func exchange(timeout: Double = 1) throws -> Bool {
            UDPFlow.counter += 1
            let r = try topo[from].run(["python3", "-c", UDPFlow.script, "\(sourcePort)", to, "\(port)", "\(timeout)", "\(UDPFlow.counter)"])
            return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "ok"
        }
        static func open(_ topo: HypervisorTopology, from: String, to: String, port: UInt16, sourcePort: UInt16) throws -> UDPFlow {
            // A probe starts the echo listener at the destination (it stays for the topology's life).
            _ = try topo.probe(.udp(from: from, to: to, port: port))
            let f = UDPFlow(topo: topo, from: from, to: to, port: port, sourcePort: sourcePort)
            guard try f.exchange() else { throw HarnessError("UDP flow \(from):\(sourcePort) → \(to):\(port) does not pass to begin with") }
            return f
        }
    }

    /// The hypervisor's conntrack entries with this source port (the oracle).
    static func conntrackLines(_ e: Cutting, sourcePort: UInt16, protocol p: String) throws -> [String] {
        let r = try e.topo.hypervisorNode.run(["conntrack", "-L", "-p", p, "--sport", "\(sourcePort)"])
        return r.stdout.split(separator: "\n").map(String.init).filter { $0.contains("sport=\(sourcePort) ") }
    }

    /// A big conntrack table: 1,000 entries of a revoked rule (bastion → web-1 port 22), 1,000
    /// of a rule that stays (→ web-1 port 80), the rest (`total` in all) between outside hosts.
    /// Returns the revoked ones.
    @discardableResult
    static func createBigTable(_ ct: ConntrackConnection, total: Int) throws -> [ConntrackEntry] {
        func tcp(_ s: String, _ sport: Int, _ d: String, _ dport: UInt16) -> ConntrackEntry {
            ConntrackEntry(original: ConntrackTuple(family: .ipv4, protocolNumber: 6, source: IPAddress(s)!.conntrack,
                                                    destination: IPAddress(d)!.conntrack, sourcePort: UInt16(sport), destinationPort: dport))
        }
        let revoked = (0..<1000).map { tcp("10.0.9.5", 20000 + $0, "10.0.1.11", 22) }
        let kept = (0..<1000).map { tcp("192.0.2.10", 20000 + $0, "10.0.1.11", 80) }
        var others: [ConntrackEntry] = []
        for i in 0..<max(0, total - 2000) {
            others.append(ConntrackEntry(original: ConntrackTuple(
                family: .ipv4, protocolNumber: 6, source: ConntrackAddress(ipv4: 0xC600_0000 | UInt32(i >> 10)),
                destination: ConntrackAddress(ipv4: 0x0A09_0000 | UInt32(i & 0xff)), sourcePort: UInt16(10000 + (i & 0x3ff)), destinationPort: 443)))
        }
        try ct.create(revoked + kept + others)
        return revoked
    }

    static func cutCount(_ output: String) -> Int? {
        guard let r = output.firstMatch(of: #/conntrack: (\d+) cut/#) else { return nil }
        return Int(r.1)
    }

    @Test(arguments: RevocationTests.modes) func revokedRulesCutTheirConnectionsOnly(_ mode: Mode) throws {
        let e = try Cutting(mode)
        defer { e.destroy() }
        let revokedTCP = try e.topo.openTCPSession(from: "bastion", to: "10.0.1.11", port: 22)      // web ssh-from-admin
        let revokedTCP6 = try e.topo.openTCPSession(from: "bastion", to: "fd00::11", port: 22)
        let revokedUDP = try UDPFlow.open(e.topo, from: "internet", to: "10.0.1.11", port: 5005, sourcePort: 41005)  // web game
        let sameInstance = try e.topo.openTCPSession(from: "internet", to: "10.0.1.11", port: 80)  // web http: still allowed
        let otherInstance = try e.topo.openTCPSession(from: "bastion", to: "10.0.2.21", port: 22)  // db's own ssh rule
        let outbound = try e.topo.openTCPSession(from: "web-1", to: "192.0.2.10", port: 8080)     // web egress: still allowed
        for s in [revokedTCP, revokedTCP6, sameInstance, otherInstance, outbound] { #expect(s.exchange(), "\(s)") }
        #expect(try !RevocationTests.conntrackLines(e, sourcePort: revokedTCP.localPort, protocol: "tcp").isEmpty)

        // Adding access cuts nothing (and does not even look).
        let more = TrafficTests.document(webRules: #", {"id": "alt", "protocol": "tcp", "ports": "8443", "cidr": "192.0.2.0/24"}"#)
        let r0 = try e.apply(more)
        #expect(r0.status == 0 && RevocationTests.cutCount(r0.stdout) == 0, "\(r0.stdout) \(r0.stderr)")
        #expect(try e.topo.tcp(from: "internet", to: "10.0.1.11", port: 8443), "alt (192.0.2.0/24, a shape web had no rule of) lets internet in")

        let r = try e.apply(RevocationTests.document(withoutWebRules: ["ssh-from-admin", "game"]))
        #expect(r.status == 0, "\(r.stderr)")
        print("adding: \(r0.stdout)revoking: \(r.stdout)", terminator: "")
        // The three flows, and the probe that started the UDP listener (its own entry).
        #expect((RevocationTests.cutCount(r.stdout) ?? 0) >= 3, "\(r.stdout)")
        // As soon as apply has returned: the revoked flows stop, the others live on.
        #expect(!revokedTCP.exchange(timeout: 1.5), "\(revokedTCP) still passes")
        #expect(!revokedTCP6.exchange(timeout: 1), "\(revokedTCP6) still passes")
        #expect(!(try revokedUDP.exchange()), "the revoked UDP flow still passes")
        for s in [sameInstance, otherInstance, outbound] { #expect(s.exchange(timeout: 2), "\(s) was disturbed") }
        #expect(try RevocationTests.conntrackLines(e, sourcePort: revokedUDP.sourcePort, protocol: "udp").isEmpty)
        #expect(try RevocationTests.conntrackLines(e, sourcePort: revokedTCP.localPort, protocol: "tcp").isEmpty)
        #expect(try !RevocationTests.conntrackLines(e, sourcePort: otherInstance.localPort, protocol: "tcp").isEmpty)
        // New connections are refused too (that was already so before this change).
        #expect(!(try e.topo.tcp(from: "bastion", to: "10.0.1.11", port: 22)))
        // alt went too (the document is the base one): with nftables its shape rule stays in
        // web's chain, empty (docs/nftables.md), and lets nothing through.
        #expect(!(try e.topo.tcp(from: "internet", to: "10.0.1.11", port: 8443)), "the revoked alt rule still lets internet in")
        // Re-applying the same document: nothing to do, nothing cut.
        #expect(try e.apply(RevocationTests.document(withoutWebRules: ["ssh-from-admin", "game"])).stdout.hasPrefix("no changes"))
    }

    @Test(arguments: RevocationTests.modes) func anInstanceLeavingAGroupLosesWhatTheGroupAllowed(_ mode: Mode) throws {
        let e = try Cutting(mode)
        defer { e.destroy() }
        let inbound = try e.topo.openTCPSession(from: "internet", to: "10.0.1.12", port: 80)       // web-2 via web/http
        let udp = try UDPFlow.open(e.topo, from: "internet", to: "10.0.1.12", port: 5006, sourcePort: 41006)
        let toDB = try e.topo.openTCPSession(from: "web-2", to: "10.0.2.21", port: 5432)         // web-2 egress + db pg-from-web
        let web1 = try e.topo.openTCPSession(from: "internet", to: "10.0.1.11", port: 80)         // web-1 stays in web
        let web1ToDB = try e.topo.openTCPSession(from: "web-1", to: "10.0.2.21", port: 5432)
        let web1UDP = try UDPFlow.open(e.topo, from: "internet", to: "10.0.1.11", port: 5006, sourcePort: 41007)
        for s in [inbound, toDB, web1, web1ToDB] { #expect(s.exchange(), "\(s)") }

        let r = try e.apply(RevocationTests.document(groups: ["web-2": ""]))
        #expect(r.status == 0, "\(r.stderr)")
        #expect((RevocationTests.cutCount(r.stdout) ?? 0) >= 3, "\(r.stdout)")
        #expect(!inbound.exchange(timeout: 1.5), "\(inbound) still passes")
        #expect(!toDB.exchange(timeout: 1), "\(toDB) still passes")
        #expect(!(try udp.exchange()), "the UDP flow to web-2 still passes")
        for s in [web1, web1ToDB] { #expect(s.exchange(timeout: 2), "\(s) was disturbed") }
        #expect(try web1UDP.exchange(timeout: 2), "web-1's UDP flow was disturbed")
        #expect(try RevocationTests.conntrackLines(e, sourcePort: inbound.localPort, protocol: "tcp").isEmpty)
        #expect(try !RevocationTests.conntrackLines(e, sourcePort: web1.localPort, protocol: "tcp").isEmpty)
    }

    @Test(arguments: RevocationTests.modes) func aMemberLeavingAReferencedGroupLosesWhatTheGroupAllowed(_ mode: Mode) throws {
        let e = try Cutting(mode)
        defer { e.destroy() }
        let ssh = try e.topo.openTCPSession(from: "bastion", to: "10.0.1.11", port: 22)     // ssh-from-admin (web)
        let sshDB = try e.topo.openTCPSession(from: "bastion", to: "10.0.2.21", port: 22)   // ssh-from-admin (db)
        let http = try e.topo.openTCPSession(from: "bastion", to: "10.0.1.11", port: 80)    // http from 0/0: stays
        let other = try e.topo.openTCPSession(from: "internet", to: "10.0.1.12", port: 80)
        for s in [ssh, sshDB, http, other] { #expect(s.exchange(), "\(s)") }

        let r = try e.apply(RevocationTests.document(groups: ["bastion": ""]))
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("chains: 0 created, 0 rewritten"), "a membership change rewrites no chain: \(r.stdout)")
        #expect(RevocationTests.cutCount(r.stdout) == 2, "\(r.stdout)")
        #expect(!ssh.exchange(timeout: 1.5), "\(ssh) still passes")
        #expect(!sshDB.exchange(timeout: 1), "\(sshDB) still passes")
        for s in [http, other] { #expect(s.exchange(timeout: 2), "\(s) was disturbed") }
    }

    /// Connections with the hypervisor itself are judged at the host's hooks: an instance's
    /// connection to the host is its egress (cut when web loses its egress rule), the host's
    /// connection to an instance is that instance's ingress (http still allowed: untouched).
    @Test(arguments: RevocationTests.modes) func connectionsWithTheHostAreJudgedAtItsHooks(_ mode: Mode) throws {
        let e = try Cutting(mode)
        defer { e.destroy() }
        let toHost = try e.topo.openTCPSession(from: "web-1", to: "10.255.0.1", port: 8080)
        let fromHost = try e.topo.openTCPSession(from: "hv", to: "10.0.1.11", port: 80)
        let toInternet = try e.topo.openTCPSession(from: "web-1", to: "192.0.2.10", port: 8080)
        for s in [toHost, fromHost, toInternet] { #expect(s.exchange(), "\(s)") }
        let out = #"{"id": "out", "direction": "egress", "protocol": "any", "cidr": "0.0.0.0/0"}"#
        let dnsOnly = #"{"id": "dns-out", "direction": "egress", "protocol": "udp", "ports": "53", "cidr": "0.0.0.0/0"}"#
        let doc = TrafficTests.document().replacing(out, with: dnsOnly, maxReplacements: 1)  // web's (admin's comes later)
        let r = try e.apply(doc)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(RevocationTests.cutCount(r.stdout) == 2, "\(r.stdout)")
        #expect(!toHost.exchange(timeout: 1.5), "\(toHost) still passes")
        #expect(!toInternet.exchange(timeout: 1), "\(toInternet) still passes")
        #expect(fromHost.exchange(timeout: 2), "\(fromHost) was disturbed")
    }

    /// A change that makes every entry be looked at (guarded prefixes rewrite the base chains)
    /// cuts nothing that is still allowed: the DHCP exchange of an instance in no group with its
    /// host (allowed on the input hook only, never forwarded) and the allowed flows survive.
    @Test(arguments: RevocationTests.modes) func aWholeTableReviewCutsNothingStillAllowed(_ mode: Mode) throws {
        let e = try Cutting(mode)
        defer { e.destroy() }
        let send = """
            import socket
            s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
            s.bind(('0.0.0.0',68)); s.sendto(b'dhcp',('10.255.0.1',67))
            """
        _ = try e.topo["lonely"].run(["python3", "-c", send], check: true)
        let dhcp = try RevocationTests.conntrackLines(e, sourcePort: 68, protocol: "udp")
        #expect(dhcp.contains { $0.contains("src=10.0.3.31") }, "\(dhcp)")
        let http = try e.topo.openTCPSession(from: "internet", to: "10.0.1.11", port: 80)
        let guarded = TrafficTests.document().replacing(#""version": 1,"#, with: #""version": 1, "guarded_prefixes": ["tap"],"#, maxReplacements: 1)
        let r = try e.apply(guarded)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(RevocationTests.cutCount(r.stdout) == 0, "\(r.stdout)")
        #expect(try RevocationTests.conntrackLines(e, sourcePort: 68, protocol: "udp").contains { $0.contains("src=10.0.3.31") })
        #expect(http.exchange(timeout: 2), "\(http) was disturbed")
    }

    @Test(arguments: RevocationTests.modes) func aRemovedInstanceLosesItsConnections(_ mode: Mode) throws {
        let e = try Cutting(mode)
        defer { e.destroy() }
        let toWeb2 = try e.topo.openTCPSession(from: "internet", to: "10.0.1.12", port: 80)
        let toWeb1 = try e.topo.openTCPSession(from: "internet", to: "10.0.1.11", port: 80)
        for s in [toWeb2, toWeb1] { #expect(s.exchange(), "\(s)") }
        let without = TrafficTests.document().split(separator: "\n").filter { !$0.contains(#""web-2": {"#) }.joined(separator: "\n")
        let r = try e.apply(without)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(RevocationTests.cutCount(r.stdout) == 1, "\(r.stdout)")
        #expect(try RevocationTests.conntrackLines(e, sourcePort: toWeb2.localPort, protocol: "tcp").isEmpty)
        #expect(try !RevocationTests.conntrackLines(e, sourcePort: toWeb1.localPort, protocol: "tcp").isEmpty)
        #expect(toWeb1.exchange(timeout: 2))
    }

    /// What a revocation costs with a big table (no traffic: entries inserted over ctnetlink in a
    /// throwaway namespace): 100,000 entries, 1,000 of them of a revoked rule (bastion → web-1
    /// port 22), 1,000 of a rule that stays (→ web-1 port 80), the rest between outside hosts.
    /// Filtered by web-1's addresses (the scope a rule change of its group gives), then the whole table.
    @Test func costsWithABigTable() throws {
        let ns = try TestNamespace(prefix: "rvbig")
        let ct = try ConntrackConnection(namespace: .named(ns.name))
        let total = Int(ProcessInfo.processInfo.environment["RAMPART_CT_ENTRIES"] ?? "") ?? 100_000
        let ir = try RevocationTests.ir(RevocationTests.document(withoutWebRules: ["ssh-from-admin"]))
        let revoked = try RevocationTests.createBigTable(ct, total: total)
        let web1: Set<IPAddress> = [IPAddress("10.0.1.11")!, IPAddress("fd00::11")!]
        let filtered = try Revocation.run(ct, ir: ir, scope: .addresses(web1))
        #expect(filtered.cut == 1000 && filtered.evaluated == 2000 && filtered.dumps == (Revocation.filteredIsCheaper(walks: 4, size: total) ? 4 : 1), "\(filtered)")
        try ct.create(revoked)
        let whole = try Revocation.run(ct, ir: ir, scope: .all)
        #expect(whole.cut == 1000 && whole.evaluated == 2000 && whole.examined == total, "\(whole)")
        #expect(try ct.entries(ConntrackFilter(family: .ipv4)).count == total - 1000)
        print(String(format: "revocation, %d entries, 1,000 cut: scoped to web-1's addresses (%d dumps) %.1f ms; whole table (%d dump) %.1f ms",
                     total, filtered.dumps, Double(filtered.nanoseconds) / 1e6, whole.dumps, Double(whole.nanoseconds) / 1e6))
    }

    // MARK: without root: what a plan can have narrowed

    static func ir(_ text: String) throws -> RulesetIR {
        Compiler.compile(try Document.parse(json: Data(text.utf8)))
    }

    @Test func scopeOfPlans() throws {
        let base = try RevocationTests.ir(TrafficTests.document())
        func scope(_ to: String) throws -> Revocation.Scope {
            let next = try RevocationTests.ir(to)
            return Revocation.scope(of: diff(from: base, to: next), result: next, previous: base)
        }
        let a = { (s: String) in IPAddress(s)! }
        // Only adding: nothing to do.
        #expect(try scope(TrafficTests.document(webRules: #", {"id": "alt", "protocol": "tcp", "ports": "8443", "cidr": "192.0.2.0/24"}"#)) == .none)
        #expect(try scope(TrafficTests.document(adminMembers: #", "ops": {"host": "hv3", "ips": ["192.0.2.10"], "groups": ["admin"]}"#)) == .none)
        // A web rule revoked: the web members on this host.
        #expect(try scope(RevocationTests.document(withoutWebRules: ["game"]))
                == .addresses([a("10.0.1.11"), a("fd00::11"), a("10.0.1.12"), a("fd00::12")]))
        // A member left a referenced group: its addresses.
        #expect(try scope(RevocationTests.document(groups: ["bastion": ""])) == .addresses([a("10.0.9.5"), a("fd00::95")]))
        // An instance left a group: that instance.
        let s = try scope(RevocationTests.document(groups: ["db-1": #""web""#]))
        #expect(s == .addresses([a("10.0.2.21"), a("fd00::21")]), "\(s)")
        // Guarded prefixes rewrite the base chains: everything.
        let guarded = TrafficTests.document().replacing(#""version": 1,"#, with: #""version": 1, "guarded_prefixes": ["tap"],"#, maxReplacements: 1)
        let g = try RevocationTests.ir(guarded)
        #expect(Revocation.scope(of: diff(from: g, to: base), result: base) == .all)
        // An instance removed: its addresses are departed.
        let without = TrafficTests.document().split(separator: "\n").filter { !$0.contains(#""web-2": {"#) }.joined(separator: "\n")
        let w = try RevocationTests.ir(without)
        #expect(Revocation.departed(in: diff(from: base, to: w), result: w) == [a("10.0.1.12"), a("fd00::12")])
        // The dump choice: one whole dump for small tables, filtered walks for big ones.
        #expect(!Revocation.filteredIsCheaper(walks: 4, size: 1000) && Revocation.filteredIsCheaper(walks: 4, size: 100_000))
    }
}
