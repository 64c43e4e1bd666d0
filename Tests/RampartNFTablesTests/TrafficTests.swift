import Foundation
import Testing
import RampartCore
import RampartHarness
import RampartNetlink

/// The semantics of the spec, checked with real packets through a routed hypervisor in network
/// namespaces: the firewall is programmed by the `rampart` CLI in the hypervisor's namespace,
/// probes run between instances, outside hosts and the hypervisor itself.
@Suite("Traffic through a hypervisor enforced by rampart", .serialized, .tags(.kernel), .rootOnly) struct TrafficTests {
    /// hv1 holds web-1, web-2, db-1 and lonely (no group); bastion (admin, on hv2), internet
    /// and dns are outside hosts.
    static let topologySpec = TopologySpec(
        instances: [
            InstanceSpec(name: "web-1", interface: "tapweb1", addresses: ["10.0.1.11", "fd00::11"], mac: "02:00:00:00:01:11"),
            InstanceSpec(name: "web-2", interface: "tapweb2", addresses: ["10.0.1.12", "fd00::12"]),
            InstanceSpec(name: "db-1", interface: "tapdb1", addresses: ["10.0.2.21", "fd00::21"]),
            InstanceSpec(name: "lonely", interface: "taplone", addresses: ["10.0.3.31", "fd00::31"]),
        ],
        outside: [
            OutsideHostSpec(name: "bastion", addresses: ["10.0.9.5", "fd00::95"]),
            OutsideHostSpec(name: "internet", addresses: ["192.0.2.10", "2001:db8::10"]),
            OutsideHostSpec(name: "dns", addresses: ["10.0.0.2"]),
        ])

    /// The policy under test (the spec's example, extended with UDP and ICMPv6 rules).
    static func document(webRules extraWeb: String = "", adminMembers: String = "", webSSH: Bool = true) -> String {
        let ssh = webSSH ? #"{"id": "ssh-from-admin", "protocol": "tcp", "ports": "22", "group": "admin"},"# : ""
        return """
        {
          "version": 1, "host": "hv1",
          "groups": {
            "web": {"rules": [
              {"id": "http", "protocol": "tcp", "ports": "80", "cidr": "0.0.0.0/0"},
              {"id": "https6", "protocol": "tcp", "ports": "443", "cidr": "::/0"},
              \(ssh)
              {"id": "ping", "protocol": "icmp", "icmp_type": 8, "cidr": "10.0.0.0/8"},
              {"id": "ping6", "protocol": "icmpv6", "icmp_type": 128, "cidr": "::/0"},
              {"id": "game", "protocol": "udp", "ports": "5000-5010", "cidr": "0.0.0.0/0"},
              {"id": "out", "direction": "egress", "protocol": "any", "cidr": "0.0.0.0/0"}\(extraWeb)
            ]},
            "db": {"rules": [
              {"id": "pg-from-web", "protocol": "tcp", "ports": "5432", "group": "web"},
              {"id": "ssh-from-admin", "protocol": "tcp", "ports": "22", "group": "admin"},
              {"id": "dns", "direction": "egress", "protocol": "udp", "ports": "53", "cidr": "10.0.0.2/32"}
            ]},
            "admin": {"rules": [
              {"id": "out", "direction": "egress", "protocol": "any", "cidr": "0.0.0.0/0"},
              {"id": "out6", "direction": "egress", "protocol": "any", "cidr": "::/0"}
            ]}
          },
          "instances": {
            "web-1": {"host": "hv1", "interface": "tapweb1", "ips": ["10.0.1.11", "fd00::11"], "mac": "02:00:00:00:01:11", "groups": ["web"]},
            "web-2": {"host": "hv1", "interface": "tapweb2", "ips": ["10.0.1.12", "fd00::12"], "groups": ["web"]},
            "db-1":  {"host": "hv1", "interface": "tapdb1", "ips": ["10.0.2.21", "fd00::21"], "groups": ["db"]},
            "lonely": {"host": "hv1", "interface": "taplone", "ips": ["10.0.3.31", "fd00::31"], "groups": []},
            "bastion": {"host": "hv2", "ips": ["10.0.9.5", "fd00::95"], "groups": ["admin"]}\(adminMembers)
          }
        }
        """
    }

    /// A topology with the policy applied by one backend.
    final class Enforced {
        let topo: HypervisorTopology
        let backend: TrafficBackend
        init(_ backend: TrafficBackend, _ document: String = TrafficTests.document()) throws {
            self.backend = backend
            var spec = TrafficTests.topologySpec
            spec.bridged = backend.bridged
            topo = try HypervisorTopology(spec)
            let r = try apply(document)
            guard r.status == 0 else { throw HarnessError("apply failed: \(r.stderr)") }
        }
        @discardableResult
        func apply(_ document: String) throws -> CommandResult {
            try runCommand([KernelBackendTests.rampart, "apply", "--netns", topo.hypervisor.name] + backend.options + ["-"], input: document)
        }
        /// Runs the probes and checks each against its expected outcome, naming the ones that differ.
        func expect(_ cases: [(Probe, Bool)], sourceLocation: SourceLocation = #_sourceLocation) throws {
            let results = try topo.probe(cases.map(\.0))
            let wrong = zip(results, cases).filter { $0.passed != $1.1 }
            #expect(wrong.isEmpty, "unexpected: \(wrong.map { "\($0.0.probe) \($0.0.passed ? "passed" : "was dropped") [\($0.0.detail)]" })",
                    sourceLocation: sourceLocation)
        }
    }

    @Test(arguments: TrafficBackend.allCases) func ingressEgressAndSameHostTCP(_ backend: TrafficBackend) throws {
        let e = try Enforced(backend)
        try e.expect([
            (.tcp(from: "internet", to: "10.0.1.11", port: 80), true),     // http from anywhere
            (.tcp(from: "internet", to: "10.0.1.11", port: 22), false),    // ssh only from admin
            (.tcp(from: "bastion", to: "10.0.1.11", port: 22), true),      // admin member on another host
            (.tcp(from: "bastion", to: "10.0.2.21", port: 22), true),
            (.tcp(from: "internet", to: "10.0.2.21", port: 5432), false),  // pg only from web
            (.tcp(from: "web-1", to: "10.0.2.21", port: 5432), true),      // same host: web egress + db ingress
            (.tcp(from: "web-2", to: "10.0.2.21", port: 5432), true),
            (.tcp(from: "web-1", to: "10.0.2.21", port: 22), false),       // db ingress refuses
            (.tcp(from: "db-1", to: "10.0.1.11", port: 80), false),        // web allows it in, db's egress does not
            (.tcp(from: "db-1", to: "192.0.2.10", port: 80), false),       // db egress is DNS only
            (.tcp(from: "web-1", to: "192.0.2.10", port: 80), true),       // web egress any (IPv4)
            (.tcp(from: "lonely", to: "192.0.2.10", port: 80), false),     // no group: nothing
            (.tcp(from: "internet", to: "10.0.3.31", port: 80), false),
        ])
    }

    @Test(arguments: TrafficBackend.allCases) func ipv6(_ backend: TrafficBackend) throws {
        let e = try Enforced(backend)
        try e.expect([
            (.tcp(from: "bastion", to: "fd00::11", port: 443), true),      // https6 from ::/0
            (.tcp(from: "internet", to: "fd00::12", port: 443), true),
            (.tcp(from: "internet", to: "fd00::11", port: 80), false),     // http is IPv4 only
            (.tcp(from: "bastion", to: "fd00::11", port: 22), true),       // group rule: both families
            (.tcp(from: "internet", to: "fd00::11", port: 22), false),
            (.tcp(from: "web-1", to: "fd00::21", port: 5432), false),      // web has no IPv6 egress
            (.icmp(from: "bastion", to: "fd00::11"), true),                // ICMPv6 echo from ::/0
            (.tcp(from: "web-1", to: "2001:db8::10", port: 80), false),
            (.tcp(from: "bastion", to: "2001:db8::10", port: 80), true),   // not our instances: untouched
        ])
    }

    @Test(arguments: TrafficBackend.allCases) func udpAndICMP(_ backend: TrafficBackend) throws {
        let e = try Enforced(backend)
        let results = try e.topo.probe([
            .udp(from: "internet", to: "10.0.1.11", port: 5005),
            .udp(from: "internet", to: "10.0.1.11", port: 5011),
            .udp(from: "db-1", to: "10.0.0.2", port: 53),
            .udp(from: "db-1", to: "10.0.0.2", port: 54),
            .udp(from: "db-1", to: "10.0.9.5", port: 53),
            .icmp(from: "bastion", to: "10.0.1.11"),     // 10/8 may ping web
            .icmp(from: "internet", to: "10.0.1.11"),    // 192.0.2.10 may not
            .icmp(from: "bastion", to: "10.0.2.21"),     // db allows no ping
        ])
        #expect(results.map(\.passed) == [true, false, true, false, false, true, false, false], "\(results)")
        // Stateful: the reply to an allowed datagram comes back through both directions' chains.
        #expect(results[0].answered && results[2].answered, "\(results)")
    }

    @Test(arguments: TrafficBackend.allCases) func hostAndInstance(_ backend: TrafficBackend) throws {
        let e = try Enforced(backend)
        try e.expect([
            (.tcp(from: "hv", to: "10.0.1.11", port: 80), true),           // host → instance is ingress
            (.tcp(from: "hv", to: "10.0.2.21", port: 5432), false),
            (.tcp(from: "web-1", to: "10.255.0.1", port: 8080), true),     // instance → host is egress
            (.tcp(from: "db-1", to: "10.255.0.1", port: 8080), false),
            (.icmp(from: "hv", to: "10.0.1.12"), true),                    // 10.255.0.1 is in 10/8
        ])
    }

    @Test(arguments: TrafficBackend.allCases) func antiSpoofing(_ backend: TrafficBackend) throws {
        let e = try Enforced(backend)
        try e.expect([
            (.udp(from: "web-2", to: "10.0.0.2", port: 7000, timeout: 1), true),                          // its own address
            (.udp(from: "web-2", to: "10.0.0.2", port: 7000, source: "10.0.1.99", timeout: 0.5), false),  // not its address
            (.udp(from: "web-2", to: "10.0.0.2", port: 7000, source: "10.0.1.11", timeout: 0.5), false),  // web-1's address
        ])
        // MAC anti-spoofing: web-1 must send with 02:00:00:00:01:11.
        try e.topo["web-1"].setMAC("02:00:00:00:09:99")
        #expect(!(try e.topo.tcp(from: "web-1", to: "192.0.2.10", port: 80, timeout: 1)))
        try e.topo["web-1"].setMAC("02:00:00:00:01:11")
        #expect(try e.topo.tcp(from: "web-1", to: "192.0.2.10", port: 80, timeout: 3))
    }

    /// NDP and DHCPv4 pass for every instance, even one in no group (semantics 4 and 5).
    @Test(arguments: TrafficBackend.allCases) func ndpAndDhcpBasics(_ backend: TrafficBackend) throws {
        let e = try Enforced(backend)
        let lonely = e.topo["lonely"]
        // NDP: the instance resolves its IPv6 gateway (fe80::1 on the hypervisor) although no
        // rule allows it anything; the ping itself is then dropped by policy. (Bridged: there is
        // no gateway, every destination is on-link, so it resolves the destination itself.)
        _ = try lonely.run(["ping", "-6", "-c", "1", "-W", "1", "2001:db8::10"])
        let next = backend.bridged ? "2001:db8::10" : "fe80::1"
        let neigh = try lonely.run(["ip", "-6", "neigh", "show", next, "dev", "eth0"], check: true).stdout
        #expect(neigh.contains("lladdr"), "\(next) unresolved: \(neigh)")
        #expect(!(try e.topo.ping(from: "lonely", to: "2001:db8::10")))

        // DHCPv4: request 68 → 67 to the host, reply 67 → 68 back.
        let listen = """
        import socket,sys
        s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
        s.bind(('0.0.0.0',int(sys.argv[1]))); s.settimeout(2)
        try:
            d,a=s.recvfrom(100); print(a[0],a[1])
        except Exception: print('none')
        """
        let send = """
        import socket,sys,time
        s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
        s.bind(('0.0.0.0',int(sys.argv[1])))
        for _ in range(5): s.sendto(b'dhcp',(sys.argv[2],int(sys.argv[3]))); time.sleep(0.1)
        """
        func exchange(listener: TopologyNode, port: String, sender: TopologyNode, from: String, to: String) throws -> String {
            let group = DispatchGroup()
            nonisolated(unsafe) var heard = ""
            group.enter()
            DispatchQueue.global().async {
                heard = (try? listener.run(["python3", "-c", listen, port]).stdout) ?? ""
                group.leave()
            }
            usleep(300_000)
            _ = try sender.run(["python3", "-c", send, from, to, port])
            group.wait()
            return heard.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let hv = e.topo.hypervisorNode
        #expect(try exchange(listener: hv, port: "67", sender: lonely, from: "68", to: "10.255.0.1") == "10.0.3.31 68")
        #expect(try exchange(listener: lonely, port: "68", sender: hv, from: "67", to: "10.0.3.31") == "10.255.0.1 67")
        // Any other UDP from the lonely instance to the host is dropped.
        #expect(try exchange(listener: hv, port: "67", sender: lonely, from: "69", to: "10.255.0.1") == "none")
    }

    /// An established connection survives re-applies, even of a document that no longer allows
    /// it to start; rule and membership changes take effect for new connections.
    @Test(arguments: TrafficBackend.allCases) func changesTakeEffectAndEstablishedConnectionsSurvive(_ backend: TrafficBackend) throws {
        let e = try Enforced(backend)
        let session = try e.topo.openTCPSession(from: "bastion", to: "10.0.1.11", port: 22)
        #expect(session.exchange())

        // Membership: the internet host joins admin (a member on another host).
        let joined = TrafficTests.document(adminMembers: #", "ops": {"host": "hv3", "ips": ["192.0.2.10"], "groups": ["admin"]}"#)
        #expect(!(try e.topo.tcp(from: "internet", to: "10.0.1.11", port: 22)))
        let r1 = try e.apply(joined)
        #expect(r1.status == 0)
        #expect(r1.stdout.contains("chains: 0 created, 0 rewritten"), "a membership change rewrites no chain: \(r1.stdout)")
        #expect(try e.topo.tcp(from: "internet", to: "10.0.1.11", port: 22))
        #expect(session.exchange())

        // Rules: ssh-from-admin disappears from web; new ssh connections stop, and the old one is
        // cut on every backend (contract rule 8, RevocationTests).
        let noSSH = TrafficTests.document(adminMembers: #", "ops": {"host": "hv3", "ips": ["192.0.2.10"], "groups": ["admin"]}"#, webSSH: false)
        let r2 = try e.apply(noSSH)
        #expect(r2.status == 0, "\(r2.stderr)")
        #expect(!(try e.topo.tcp(from: "bastion", to: "10.0.1.11", port: 22)))
        #expect(try e.topo.tcp(from: "bastion", to: "10.0.2.21", port: 22))  // db still allows it
        #expect(!session.exchange(timeout: 1), "the revoked session still passes")
        // A new rule.
        let r3 = try e.apply(TrafficTests.document(webRules: #", {"id": "alt", "protocol": "tcp", "ports": "8443", "cidr": "192.0.2.0/24"}"#))
        #expect(r3.status == 0)
        #expect(try e.topo.tcp(from: "internet", to: "10.0.1.11", port: 8443))
        #expect(!(try e.topo.tcp(from: "bastion", to: "10.0.1.11", port: 8443)))
    }

    @Test(arguments: TrafficBackend.allCases) func badDocumentChangesNothingAndDriftIsRepaired(_ backend: TrafficBackend) throws {
        let e = try Enforced(backend)
        let before = try backend.snapshot(e.topo.hypervisor)
        let bad = TrafficTests.document().replacingOccurrences(of: #""protocol": "tcp", "ports": "80""#, with: #""protocol": "icmp", "ports": "80""#)
        let r = try e.apply(bad)
        #expect(r.status == 1)
        #expect(r.stderr.contains("groups.web.rules[0]"), "\(r.stderr)")
        #expect(try backend.snapshot(e.topo.hypervisor) == before)
        #expect(try e.topo.tcp(from: "internet", to: "10.0.1.11", port: 80))

        // Someone flushes the web group's chain: http is now dropped; the next apply repairs it.
        try backend.flushWebIngress(e.topo.hypervisor)
        #expect(!(try e.topo.tcp(from: "internet", to: "10.0.1.11", port: 80)))
        #expect(try e.apply(TrafficTests.document()).status == 0)
        #expect(try e.topo.tcp(from: "internet", to: "10.0.1.11", port: 80))
        // Someone deletes the whole table: everything is open until the next apply restores it.
        try backend.removeEverything(e.topo.hypervisor)
        #expect(try e.topo.tcp(from: "internet", to: "10.0.1.11", port: 22))
        #expect(try e.apply(TrafficTests.document()).status == 0)
        #expect(!(try e.topo.tcp(from: "internet", to: "10.0.1.11", port: 22)))
    }

    /// Interfaces of no instance are not touched, and a foreign table keeps its own verdicts:
    /// Rampart's accept does not override another table's drop.
    @Test(arguments: TrafficBackend.allCases) func foreignTrafficAndTables(_ backend: TrafficBackend) throws {
        let e = try Enforced(backend)
        try backend.addForeignDrop(e.topo.hypervisor)
        try e.expect([
            (.tcp(from: "internet", to: "10.0.1.11", port: 80), false),   // other table's drop is final
            (.tcp(from: "bastion", to: "10.0.1.11", port: 80), true),
            (.tcp(from: "internet", to: "10.0.9.5", port: 5555), true),   // uplink ↔ uplink: untouched
            (.udp(from: "bastion", to: "10.0.0.2", port: 53), true),
        ])
        #expect(try e.apply(TrafficTests.document()).stdout.hasPrefix("no changes"))
        #expect(try backend.foreignDropPresent(e.topo.hypervisor))
    }
}
