import Foundation
import Testing
import RampartCore
import RampartHarness
import RampartNetlink

/// `rampart explain` against real packets: on the traffic suite's hypervisor, the verdict it
/// reads from the kernel's table agrees with what a probe sees, allowed and denied, IPv4 and
/// IPv6, TCP, UDP and ICMP, and the path names the rule. Every backend: with iptables, `explain
/// --backend iptables` reads the chains and ipsets lifted back into the IR (`IPTLift`).
@Suite("rampart explain agrees with real probes", .serialized, .tags(.kernel), .rootOnly) struct ExplainTests {
    @Test(arguments: TrafficBackend.allCases) func explainAgreesWithProbes(_ backend: TrafficBackend) throws {
        let e = try TrafficTests.Enforced(backend)
        defer { e.topo.destroy() }
        func explain(_ args: [String]) throws -> CommandResult {
            try runCommand([KernelBackendTests.rampart, "explain", "--netns", e.topo.hypervisor.name] + backend.options + args)
        }
        // (probe, the explain arguments for the same packet)
        func via(_ node: String) -> String { e.topo[node].hostInterface ?? "uplink" }
        let cases: [(Probe, [String])] = [
            (.tcp(from: "internet", to: "10.0.1.11", port: 80), ["--from", "192.0.2.10", "--to", "web-1", "--protocol", "tcp", "--port", "80", "--via", via("internet")]),
            (.tcp(from: "internet", to: "10.0.1.11", port: 22), ["--from", "192.0.2.10", "--to", "web-1", "--protocol", "tcp", "--port", "22", "--via", via("internet")]),
            (.tcp(from: "bastion", to: "10.0.1.11", port: 22), ["--from", "10.0.9.5", "--to", "10.0.1.11", "--protocol", "tcp", "--port", "22", "--via", via("bastion")]),
            (.tcp(from: "web-1", to: "10.0.2.21", port: 5432), ["--from", "web-1", "--to", "db-1", "--protocol", "tcp", "--port", "5432", "--family", "ipv4"]),
            (.tcp(from: "internet", to: "10.0.2.21", port: 5432), ["--from", "192.0.2.10", "--to", "db-1", "--protocol", "tcp", "--port", "5432", "--via", via("internet")]),
            (.tcp(from: "db-1", to: "192.0.2.10", port: 80), ["--from", "db-1", "--to", "192.0.2.10", "--protocol", "tcp", "--port", "80", "--via", via("internet")]),
            (.udp(from: "db-1", to: "10.0.0.2", port: 53), ["--from", "db-1", "--to", "10.0.0.2", "--protocol", "udp", "--port", "53", "--via", via("dns")]),
            (.udp(from: "internet", to: "10.0.1.12", port: 5005), ["--from", "192.0.2.10", "--to", "web-2", "--protocol", "udp", "--port", "5005", "--via", via("internet")]),
            (.udp(from: "internet", to: "10.0.1.12", port: 5011), ["--from", "192.0.2.10", "--to", "web-2", "--protocol", "udp", "--port", "5011", "--via", via("internet")]),
            (.icmp(from: "bastion", to: "10.0.1.12"), ["--from", "10.0.9.5", "--to", "web-2", "--protocol", "icmp", "--icmp-type", "8", "--via", via("bastion")]),
            (.icmp(from: "internet", to: "10.0.1.12"), ["--from", "192.0.2.10", "--to", "web-2", "--protocol", "icmp", "--icmp-type", "8", "--via", via("internet")]),
            (.tcp(from: "internet", to: "fd00::11", port: 443), ["--from", "2001:db8::10", "--to", "web-1", "--protocol", "tcp", "--port", "443", "--via", via("internet")]),
            (.tcp(from: "internet", to: "fd00::21", port: 443), ["--from", "2001:db8::10", "--to", "fd00::21", "--protocol", "tcp", "--port", "443", "--via", via("internet")]),
            (.icmp(from: "internet", to: "fd00::12"), ["--from", "2001:db8::10", "--to", "web-2", "--protocol", "icmpv6", "--icmp-type", "128", "--via", via("internet")]),
            (.udp(from: "web-2", to: "10.0.0.2", port: 7000, source: "10.0.1.11", timeout: 0.5), ["--from", "web-2", "--source", "10.0.1.11", "--to", "10.0.0.2", "--protocol", "udp", "--port", "7000", "--via", via("dns")]),
        ]
        let results = try e.topo.probe(cases.map(\.0))
        var allowedSeen = 0, droppedSeen = 0
        for (r, (probe, args)) in zip(results, cases) {
            let x = try explain(args)
            #expect(x.status == 0, "\(probe): \(x.stderr)")
            #expect(!x.stdout.contains("warning"), "\(probe): \(x.stdout)")
            let said = x.stdout.split(separator: "\n").first.map(String.init) ?? ""
            let allowed = said.hasSuffix("ALLOWED")
            #expect(allowed == r.passed, "\(probe) \(r.passed ? "passed" : "was dropped"), explain said: \(x.stdout)")
            if allowed { allowedSeen += 1 } else { droppedSeen += 1 }
        }
        // Not vacuous: both verdicts occur.
        #expect(allowedSeen >= 5 && droppedSeen >= 5)
        // The path names the rule (JSON), and the anti-spoofing case says why.
        let j = try explain(["--json",
                                "--from", "192.0.2.10", "--to", "web-1", "--protocol", "tcp", "--port", "80", "--via", via("internet")])
        #expect(j.stdout.contains(#""comment" : "web\/http""#) || j.stdout.contains(#""comment" : "web/http""#), "\(j.stdout)")
        // A packet riding web-1's established flow from web-2 is stopped by anti-spoofing (rule 4).
        let spoof = try explain([
                                    "--from", "web-2", "--source", "10.0.1.11", "--to", "10.0.0.2", "--protocol", "udp", "--port", "53", "--established"])
        #expect(spoof.stdout.contains("DROPPED"), "\(spoof.stdout)")
        #expect(spoof.stdout.contains("anti-spoofing"), "\(spoof.stdout)")
        let wrongUsage = try explain([
                                         "--from", "nosuch", "--to", "web-1", "--protocol", "tcp"])
        #expect(wrongUsage.status == 1)
        #expect(wrongUsage.stderr.contains("--from nosuch"))
    }
}
