import Foundation
import RampartHarness

// rampart-demo: a demo hypervisor in network namespaces, enforced by the `rampart` CLI
// (`rampart-demo cloud`: a cloud behind the EC2 API instead, CloudDemo.swift).
//
// It builds a routed hypervisor ("hv1") with three instances and two outside hosts, applies
// docs/examples/two-tier.json (the spec's example), sends real packets to show what passes and
// what is dropped, makes a membership change and shows what it cost, and removes everything it
// made. Nothing is changed in the machine's own network namespace.

let here = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
// `rampart-demo cloud`: the EC2 API over two hypervisors (scripts/demo-cloud, CloudDemo.swift).
if CommandLine.arguments.dropFirst().first == "cloud" {
    exit(CloudDemo.main(Array(CommandLine.arguments.dropFirst(2)), binaries: here.path))
}
let rampart = here.appendingPathComponent("rampart").path
let document = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "docs/examples/two-tier.json"

func section(_ title: String) { print("\n== \(title)") }

func cli(_ args: [String], input: String? = nil) throws -> CommandResult {
    print("$ rampart \(args.joined(separator: " "))")
    let r = try runCommand([rampart] + args, input: input)
    print(r.stdout, terminator: "")
    if !r.stderr.isEmpty { print(r.stderr, terminator: "") }
    return r
}

func show(_ results: [ProbeResult], _ notes: [String]) {
    for (r, note) in zip(results, notes) {
        let verdict = r.passed ? "PASS   " : "DROPPED"
        print("  \(verdict)  \(r.probe.description.padding(toLength: 44, withPad: " ", startingAt: 0))  \(note)")
    }
}

let spec = TopologySpec(
    instances: TopologySpec.twoTier.instances,
    outside: TopologySpec.twoTier.outside + [OutsideHostSpec(name: "internet", addresses: ["192.0.2.10", "2001:db8::10"])])

section("building a hypervisor in network namespaces")
let topo = try HypervisorTopology(spec)
defer { topo.destroy() }
print("  hypervisor hv1 = namespace \(topo.hypervisor.name)")
for n in topo.instances { print("  instance \(n.name.padding(toLength: 8, withPad: " ", startingAt: 0)) on \(n.hostInterface ?? "?")  \(n.addresses.joined(separator: " "))") }
for n in topo.outsideHosts { print("  outside  \(n.name.padding(toLength: 8, withPad: " ", startingAt: 0)) via \(n.hostInterface ?? "?")  \(n.addresses.joined(separator: " "))") }
print("  (bastion stands for the admin instance on hv2; internet is anyone else)")

section("applying \(document)")
guard try cli(["apply", "--netns", topo.hypervisor.name, document]).status == 0 else { exit(1) }
_ = try cli(["apply", "--netns", topo.hypervisor.name, document])

section("probes: real TCP, UDP and ICMP packets")
let probes: [(Probe, String)] = [
    (.tcp(from: "internet", to: "10.0.1.11", port: 80), "web/http allows tcp 80 from 0.0.0.0/0"),
    (.tcp(from: "internet", to: "fd00::11", port: 443), "web/https6 allows tcp 443 from ::/0"),
    (.tcp(from: "internet", to: "10.0.1.11", port: 22), "ssh is only for the admin group"),
    (.tcp(from: "bastion", to: "10.0.1.11", port: 22), "bastion is in admin (on another host)"),
    (.tcp(from: "bastion", to: "10.0.2.21", port: 22), "db/ssh-from-admin"),
    (.tcp(from: "web-1", to: "10.0.2.21", port: 5432), "same host: web egress, then db ingress"),
    (.tcp(from: "internet", to: "10.0.2.21", port: 5432), "postgres is only for web members"),
    (.tcp(from: "db-1", to: "192.0.2.10", port: 80), "db may only send DNS to 10.0.0.2"),
    (.icmp(from: "bastion", to: "10.0.1.12"), "web/ping: echo from 10.0.0.0/8"),
    (.icmp(from: "internet", to: "10.0.1.12"), "192.0.2.10 is not in 10.0.0.0/8"),
    (.udp(from: "web-2", to: "192.0.2.10", port: 53, source: "10.0.1.99", timeout: 0.5), "spoofed source address"),
]
show(try topo.probe(probes.map(\.0)), probes.map(\.1))

section("why? rampart explain reads the kernel's table and names the rule")
_ = try cli(["explain", "--netns", topo.hypervisor.name, "--from", "192.0.2.10", "--to", "web-1", "--protocol", "tcp", "--port", "22"])
_ = try cli(["explain", "--netns", topo.hypervisor.name, "--from", "web-2", "--source", "10.0.1.11", "--to", "192.0.2.10",
             "--protocol", "udp", "--port", "53", "--established"])

section("an invalid document is refused whole; the kernel keeps what it has")
let bad = try String(contentsOfFile: document, encoding: .utf8)
    .replacingOccurrences(of: #""ips": ["10.0.2.21"]"#, with: #""ips": ["10.0.2.21", "0.0.0.0"]"#)
_ = try cli(["apply", "--netns", topo.hypervisor.name, "-"], input: bad)

section("membership change: internet (192.0.2.10) joins admin as instance ops on hv3")
var text = try String(contentsOfFile: document, encoding: .utf8)
text = text.replacingOccurrences(of: #""bastion": {"#, with: #""ops": {"host": "hv3", "ips": ["192.0.2.10"], "groups": ["admin"]},\#n    "bastion": {"#)
let tcpBefore = try topo.tcp(from: "internet", to: "10.0.1.11", port: 22)
_ = try cli(["diff", "--netns", topo.hypervisor.name, "-"], input: text)
_ = try cli(["apply", "--netns", topo.hypervisor.name, "-"], input: text)
print("  (one transaction: one set element added, no chain touched)")
let after = try topo.probe([.tcp(from: "internet", to: "10.0.1.11", port: 22)])
print("  internet → web-1 tcp 22: before \(tcpBefore ? "PASS" : "DROPPED"), after \(after[0].passed ? "PASS" : "DROPPED")")

section("what is enforced, with counters")
_ = try cli(["show", "--netns", topo.hypervisor.name])

section("cleaning up")
_ = try cli(["flush", "--netns", topo.hypervisor.name])
topo.destroy()
print("  removed every namespace the demo made")
