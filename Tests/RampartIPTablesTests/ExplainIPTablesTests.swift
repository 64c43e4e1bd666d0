import Foundation
import Testing
import RampartCore
import RampartHarness
import RampartIPTables

/// `rampart explain --backend iptables`: the policy lifted back from what iptables, ip6tables,
/// ebtables and ipset hold (`IPTablesBackend.enforcedPolicy`), in throwaway namespaces. Real
/// packets against the lifted policy: EvaluatorAgreesWithKernelTests (iptables-legacy variant).
@Suite("rampart explain --backend iptables", .serialized, .tags(.kernel), .rootOnly) struct ExplainIPTablesTests {
    static func explain(_ ns: TestNamespace, _ v: IPTablesVariant, _ args: [String], topology: IPTTopology = .routed) throws -> CommandResult {
        try runCommand([rampartExecutable, "explain", "--netns", ns.name, "--backend", "iptables", "--iptables", v.rawValue,
                        "--topology", topology.rawValue] + args)
    }

    /// Through the real binary: verdicts and reasons of IPv4 and IPv6 packets, allowed and
    /// dropped; a rule added by hand to a group chain is named as skipped; nothing applied is said.
    @Test(arguments: IPTablesVariant.allCases)
    func explainReadsWhatIPTablesHolds(_ v: IPTablesVariant) throws {
        let ns = try TestNamespace(prefix: "ipx")
        let none = try Self.explain(ns, v, ["--from", "web-1", "--to", "db-1", "--protocol", "tcp", "--port", "5432"])
        #expect(none.status != 0 && none.stderr.contains("nothing is enforced"), "\(none.stdout) \(none.stderr)")
        #expect(try IPTablesKernelTests.cli(ns, v, ["apply", examplePath]).status == 0)
        let cases: [([String], Bool, String)] = [
            (["--from", "web-1", "--to", "db-1", "--protocol", "tcp", "--port", "5432"], true, "then rule db/pg-from-web"),
            (["--from", "web-1", "--to", "db-1", "--protocol", "tcp", "--port", "5433"], false, "no ingress rule of group db"),
            (["--from", "db-1", "--to", "192.0.2.7", "--protocol", "tcp", "--port", "443"], false, "no egress rule of group db"),
            (["--from", "192.0.2.7", "--to", "web-1", "--protocol", "tcp", "--port", "443"], true, "allowed by rule web/https"),
            (["--from", "2001:db8::7", "--to", "web-1", "--protocol", "tcp", "--port", "443"], true, "allowed by rule web/https6"),
            (["--from", "2001:db8::7", "--to", "web-1", "--protocol", "tcp", "--port", "80"], false, "no ingress rule of group web"),
            (["--from", "web-2", "--source", "10.0.1.99", "--to", "192.0.2.7", "--protocol", "udp", "--port", "53"], false, "anti-spoofing"),
            (["--from", "db-1", "--to", "web-1", "--protocol", "tcp", "--port", "22", "--established"], true, "conntrack already tracks"),
        ]
        for (args, allowed, reason) in cases {
            let r = try Self.explain(ns, v, args)
            #expect(r.status == 0, "\(args): \(r.stderr)")
            #expect(r.stdout.contains(allowed ? ": ALLOWED" : ": DROPPED") && r.stdout.contains(reason), "\(args): \(r.stdout)")
            #expect(!r.stdout.contains("warning"), "\(args): \(r.stdout)")
        }
        // Drift: a rule of nobody's in Rampart's group chain is skipped, and named.
        try ns.run(["iptables-" + v.rawValue, "-w", "-I", "rp-gi-db", "1", "-p", "tcp", "--dport", "5433", "-j", "ACCEPT"], check: true)
        let drift = try Self.explain(ns, v, ["--from", "web-1", "--to", "db-1", "--protocol", "tcp", "--port", "5432"])
        #expect(drift.stdout.contains(": ALLOWED"), "\(drift.stdout)")
        #expect(drift.stdout.contains("warning: rules not written by rampart were skipped: ipv4 rp-gi-db: -p tcp -m tcp --dport 5433 -j ACCEPT"), "\(drift.stdout)")
        let json = try Self.explain(ns, v, ["--json", "--from", "web-1", "--to", "db-1", "--protocol", "tcp", "--port", "5433"])
        #expect(json.stdout.contains("ipv4 rp-gi-db: -p tcp -m tcp --dport 5433 -j ACCEPT"), "\(json.stdout)")
        #expect(try IPTablesKernelTests.cli(ns, v, ["flush"]).status == 0)
    }

    /// In process, both variants and topologies (bridged: physdev matches, `rp-spoof`, ebtables):
    /// what the kernel holds after an apply lifts back with nothing undecoded and gives the
    /// compiled policy's verdicts; a rule added by hand to a fixed chain is reported.
    @Test(arguments: [(IPTablesVariant.legacy, IPTTopology.routed), (.nft, .routed), (.legacy, .bridged), (.nft, .bridged)])
    func kernelStateLiftsBack(_ v: IPTablesVariant, _ topology: IPTTopology) throws {
        let ns = try TestNamespace(prefix: "ipx")
        var doc = exampleDocument
        doc.guardedPrefixes = ["tap"]
        let compiled = Compiler.compile(doc)
        let backend = IPTablesBackend(variant: v, topology: topology, netns: ns.name)
        _ = try backend.converge(to: compiled)
        let (lifted, undecoded) = try #require(try backend.enforcedPolicy())
        #expect(undecoded.isEmpty, "\(undecoded)")
        var n = 0
        for from in ["tapweb1", "tapweb2", "tapdb1", "uplink", nil] as [String?] {
            for to in ["tapweb1", "tapdb1", "uplink", nil] as [String?] where from != to && (from != nil || to != nil) {
                for (s, d) in [("10.0.1.11", "10.0.2.21"), ("10.0.1.12", "10.0.1.11"), ("192.0.2.7", "10.0.1.11"), ("fd00::11", "2001:db8::1"),
                               ("2001:db8::1", "fd00::11"), ("10.0.2.21", "10.0.0.2"), ("10.0.1.99", "10.0.2.21")] {
                    for (proto, port): (UInt8, UInt16?) in [(6, 5432), (6, 443), (6, 22), (17, 53), (1, nil), (58, nil)] {
                        for state in [CTStates.new, [.established], .invalid] {
                            let p = PacketDescription(from: from, to: to, source: IPAddress(s)!, destination: IPAddress(d)!, protocolNumber: proto,
                                                      sourcePort: port == nil ? nil : 40000, destinationPort: port,
                                                      icmpType: port == nil ? (proto == 1 ? 8 : 128) : nil, connectionState: state)
                            n += 1
                            #expect(Evaluate.packet(p, in: lifted).allowed == Evaluate.packet(p, in: compiled).allowed, "\(p)")
                        }
                    }
                }
            }
        }
        #expect(n > 1000)
        let tool = "iptables-" + v.rawValue
        try ns.run([tool, "-w", "-I", IPTNames.forward, "1", "-s", "192.0.2.0/24", "-j", "ACCEPT"], check: true)
        let (_, drift) = try #require(try backend.enforcedPolicy())
        #expect(drift == ["ipv4 \(IPTNames.forward): -s 192.0.2.0/24 -j ACCEPT"], "\(drift)")
        _ = try backend.converge(to: nil)
    }
}
