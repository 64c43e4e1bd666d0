import Foundation
import RampartHarness
import Testing

/// Every probe between every pair of nodes that share an address family: TCP (with echo),
/// UDP and ICMP, to each address of the destination. Instances on the same host, instance ↔
/// outside host, hypervisor ↔ instance, IPv4 and IPv6.
func fullMatrix(_ topo: HypervisorTopology, tcpPorts: [UInt16] = [80], udpPort: UInt16 = 53) -> [Probe] {
    var probes: [Probe] = []
    for a in topo.nodes {
        for b in topo.nodes where b.name != a.name {
            for address in b.addresses {
                let v6 = address.contains(":")
                guard (v6 ? a.ipv6 : a.ipv4) != nil else { continue }
                for port in tcpPorts { probes.append(.tcp(from: a.name, to: address, port: port)) }
                probes.append(.udp(from: a.name, to: address, port: udpPort))
                probes.append(.icmp(from: a.name, to: address))
            }
        }
    }
    return probes
}

func failures(_ results: [ProbeResult], expectPassed: (Probe) -> Bool) -> [String] {
    results.filter { $0.passed != expectPassed($0.probe) }.map { "expected \(expectPassed($0.probe) ? "pass" : "deny"): \($0)" }
}

/// Interface names of the machine's own namespace (this process's namespace).
func rootInterfaceNames() throws -> Set<String> {
    let out = try runCommand(["ip", "-j", "link", "show"], check: true).stdout
    let links = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]] ?? []
    return Set(links.compactMap { $0["ifname"] as? String })
}

/// A topology; notes on stderr when the readiness check needed retries (a slow link watcher).
func makeTopology(_ spec: TopologySpec) throws -> HypervisorTopology {
    let topo = try HypervisorTopology(spec)
    if topo.setupRetries > 0 {
        FileHandle.standardError.write(Data("note: topology ready after \(topo.setupRetries) retries\n".utf8))
    }
    return topo
}

func netnsList() throws -> String {
    try runCommand(["ip", "netns", "list"], check: true).stdout
}

@Suite("Routed hypervisor topology and probes", .tags(.kernel), .rootOnly)
struct TopologyTests {
    @Test("with no firewall, everything passes in every direction (v4, v6; tcp, udp, icmp)")
    func everythingPasses() throws {
        let topo = try makeTopology(.twoTier)
        defer { topo.destroy() }
        let probes = fullMatrix(topo)
        // 5 nodes: 20 ordered IPv4 pairs; hv, web-1 and bastion have IPv6: 6 ordered pairs.
        #expect(probes.count == (20 + 6) * 3)
        let results = try topo.probe(probes)
        #expect(failures(results) { _ in true } == [])
        // Stateful return traffic: every UDP datagram was echoed back, and the listener saw the
        // sender's own address (routed, no NAT).
        for r in results where r.probe.kind == .udp(port: 53) {
            #expect(r.answered, "\(r)")
            #expect(r.seenSource == topo[r.probe.from].addresses.first { $0.contains(":") == r.probe.to.contains(":") }, "\(r)")
        }
        // Host ↔ instance: from and to the hypervisor's own address.
        #expect(try topo.tcp(from: "db-1", to: "10.255.0.1", port: 22))
        #expect(try topo.tcp(from: "hv", to: "fd00::11", port: 22))
    }

    @Test("a hand-written forward rule denies exactly its probes, and a denied probe costs ≈ its timeout")
    func forwardRuleDeniesExactlyItsProbes() throws {
        let topo = try makeTopology(.twoTier)
        defer { topo.destroy() }
        let probes = fullMatrix(topo, tcpPorts: [80, 5432])
        #expect(failures(try topo.probe(probes)) { _ in true } == [])

        let hv = topo.hypervisor
        try hv.nft("add", "table", "inet", "t")
        try hv.nft("add", "chain", "inet", "t", "f", "{ type filter hook forward priority 0; }")
        try hv.nft("add", "rule", "inet", "t", "f", "tcp", "dport", "5432", "drop")

        let start = Date()
        let results = try topo.probe(probes)
        let elapsed = Date().timeIntervalSince(start)
        // Forwarded = neither end is the hypervisor (its own traffic takes input/output).
        let denied: (Probe) -> Bool = { p in
            p.kind == .tcp(port: 5432) && p.from != "hv" && topo.owner(of: p.to)?.name != "hv"
        }
        #expect(failures(results) { !denied($0) } == [])
        #expect(results.filter { !$0.passed }.count == 12 + 2)  // 12 v4 + 2 v6 forwarded pairs
        #expect(elapsed < 2.5, "denied probes run concurrently: the batch took \(elapsed) s")
        let one = try topo.probe(.tcp(from: "web-1", to: "10.0.2.21", port: 5432, timeout: 0.3))
        #expect(!one.passed && one.elapsed >= 0.3 && one.elapsed < 1, "\(one)")

        // Routed: the forward hook names both ports, also between instances on this host.
        try hv.nft("add", "rule", "inet", "t", "f", "iifname", "tapweb1", "oifname", "tapdb1", "tcp", "dport", "6000", "drop")
        let ports = try topo.probe([
            .tcp(from: "web-1", to: "10.0.2.21", port: 6000, timeout: 0.5),
            .tcp(from: "web-2", to: "10.0.2.21", port: 6000),
            .tcp(from: "web-1", to: "10.0.1.12", port: 6000),
            .tcp(from: "db-1", to: "10.0.1.11", port: 6000),
        ])
        #expect(ports.map(\.passed) == [false, true, true, true], "\(ports)")
    }

    @Test("an established TCP session survives an unrelated rule change, and can be cut")
    func sessionSurvivesUnrelatedChange() throws {
        let topo = try makeTopology(.twoTier)
        defer { topo.destroy() }
        let session = try topo.openTCPSession(from: "web-1", to: "10.0.2.21", port: 8080)
        #expect(session.exchange())
        let v6 = try topo.openTCPSession(from: "bastion", to: "fd00::11", port: 8443)
        #expect(v6.exchange())

        let hv = topo.hypervisor
        try hv.nft("add", "table", "inet", "t")
        try hv.nft("add", "chain", "inet", "t", "f", "{ type filter hook forward priority 0; }")
        try hv.nft("add", "rule", "inet", "t", "f", "tcp", "dport", "5432", "drop")
        #expect(session.exchange())
        // An unrelated change: the chain flushed and re-filled in one transaction.
        try hv.nft("-f", "-", input: """
            flush chain inet t f
            add rule inet t f tcp dport 5432 drop
            add rule inet t f udp dport 9999 drop
            """)
        #expect(session.exchange())
        #expect(v6.exchange())
        #expect(!(try topo.tcp(from: "web-1", to: "10.0.2.21", port: 5432)))

        // The same session CAN fail: drop its port, then lift the drop again.
        try hv.nft("add", "rule", "inet", "t", "f", "tcp", "dport", "8080", "drop")
        #expect(!session.exchange(timeout: 0.5))
        try hv.nft("flush", "chain", "inet", "t", "f")
        // TCP retransmits with back-off, so the held-up data needs a moment.
        #expect(session.exchange(timeout: 5))
        session.close()
        #expect(!session.isOpen && !session.exchange())
    }

    @Test("spoofed source addresses and MACs: sendable, visible, and filterable")
    func spoofing() throws {
        let topo = try makeTopology(.twoTier)
        defer { topo.destroy() }
        let hv = topo.hypervisor

        // An address web-1 does not own, added to its interface: one-way (no route back).
        try topo["web-1"].addAddress("10.0.1.99")
        // (One-way probes wait their whole timeout for a reply that cannot come: keep it short.)
        let udp = try topo.probe(.udp(from: "web-1", to: "10.0.9.5", port: 53, source: "10.0.1.99", timeout: 0.3))
        #expect(udp.passed && udp.delivered && !udp.answered && udp.seenSource == "10.0.1.99", "\(udp)")
        #expect(!(try topo.ping(from: "web-1", to: "10.0.9.5", source: "10.0.1.99", timeout: 0.3)))
        // Routed by the hypervisor, it behaves like an address of the instance.
        try topo["web-1"].addAddress("10.0.1.98", routeOnHypervisor: true)
        #expect(try topo.ping(from: "web-1", to: "10.0.9.5", source: "10.0.1.98"))
        #expect(try topo.tcp(from: "web-1", to: "10.0.9.5", port: 22, source: "10.0.1.98"))
        #expect(try topo.tcp(from: "bastion", to: "10.0.1.98", port: 22))
        // Any source, even one that is not on the interface (another instance's address).
        let stolen = try topo.probe(.udp(from: "web-2", to: "10.0.9.5", port: 53, source: "10.0.1.11", timeout: 0.3))
        #expect(stolen.delivered && stolen.seenSource == "10.0.1.11", "\(stolen)")
        let stolen6 = try topo.probe(.udp(from: "web-1", to: "fd00::95", port: 53, source: "fd00::66", timeout: 0.3))
        #expect(stolen6.delivered && stolen6.seenSource == "fd00::66", "\(stolen6)")

        // An anti-spoofing rule of the kind Rampart writes stops exactly those.
        try hv.nft("-f", "-", input: """
            add table inet t
            add chain inet t f { type filter hook forward priority 0; }
            add rule inet t f iifname "tapweb2" ip saddr != 10.0.1.12 drop
            add rule inet t f iifname "tapweb1" ether saddr != 02:00:00:00:01:11 drop
            """)
        #expect(!(try topo.probe(.udp(from: "web-2", to: "10.0.9.5", port: 53, source: "10.0.1.11", timeout: 0.3)).delivered))
        #expect(try topo.udp(from: "web-2", to: "10.0.9.5", port: 53))

        // MAC: web-1's own MAC passes; a changed one is dropped by the rule above.
        #expect(try topo["web-1"].mac() == "02:00:00:00:01:11")
        #expect(try topo.tcp(from: "web-1", to: "10.0.9.5", port: 80))
        try topo["web-1"].setMAC("02:00:00:00:09:99")
        #expect(try topo["web-1"].mac() == "02:00:00:00:09:99")
        #expect(!(try topo.tcp(from: "web-1", to: "10.0.9.5", port: 80, timeout: 0.5)))
        try hv.nft("flush", "ruleset")
        #expect(try topo.tcp(from: "web-1", to: "10.0.9.5", port: 80))
        #expect(try topo.ping(from: "web-1", to: "fd00::95"))
    }

    @Test("destroy (and deinit) removes every namespace; the root namespace is untouched")
    func cleanup() throws {
        let rootLinks = try rootInterfaceNames()
        let topo = try makeTopology(.twoTier)
        let names = topo.namespaceNames
        #expect(names.count == 5 && Set(names).count == 5)
        let listed = try netnsList()
        for n in names { #expect(listed.contains(n)) }
        _ = try topo.openTCPSession(from: "web-2", to: "10.0.9.5", port: 80)
        topo.destroy()
        topo.destroy()  // idempotent
        let after = try netnsList()
        for n in names { #expect(!after.contains(n), "\(n) left behind") }

        var other: [String] = []
        do {
            let t = try HypervisorTopology(instances: [InstanceSpec(name: "solo", interface: "tapsolo", addresses: ["10.9.9.9"])])
            other = t.namespaceNames
            #expect(try t.ping(from: "solo", to: "10.255.0.1"))
        }
        let afterDeinit = try netnsList()
        for n in other { #expect(!afterDeinit.contains(n), "\(n) left behind after deinit") }
        // (Names only: other test processes on the machine may legitimately change counters.)
        let rootAfter = try rootInterfaceNames()
        for tap in ["tapweb1", "tapweb2", "tapdb1", "up0", "tapsolo"] { #expect(!rootAfter.contains(tap)) }
        #expect(rootAfter == rootLinks)
    }

    @Test("several addresses per family: each is routed, the first is the default source")
    func severalAddresses() throws {
        let topo = try makeTopology(TopologySpec(
            instances: [InstanceSpec(name: "multi", interface: "tapmulti",
                                     addresses: ["10.0.3.1", "fd00::3:1", "10.0.3.2", "fd00::3:2"])],
            outside: [OutsideHostSpec(name: "net", addresses: ["198.51.100.7", "2001:db8::7"])]))
        defer { topo.destroy() }
        #expect(topo["multi"].ipv4 == "10.0.3.1" && topo["multi"].ipv6 == "fd00::3:1")
        #expect(topo["net"].hostInterface == "up0" && topo["multi"].hostInterface == "tapmulti")
        let results = try topo.probe([
            .tcp(from: "net", to: "10.0.3.2", port: 443),
            .tcp(from: "net", to: "fd00::3:2", port: 443),
            .udp(from: "multi", to: "198.51.100.7", port: 123),
            .udp(from: "multi", to: "2001:db8::7", port: 123, source: "fd00::3:2"),
            .icmp(from: "hv", to: "10.0.3.2"),
            .icmp(from: "multi", to: "fd00:ff::1", source: "fd00::3:2"),
        ])
        let failed = failures(results) { _ in true }
        #expect(failed == [], "\(failed)\n\(failed.isEmpty ? "" : topo.diagnostics())")
        #expect(results[2].seenSource == "10.0.3.1" && results[3].seenSource == "fd00::3:2" && results[3].answered)
    }

    @Test("a large batch (more probes than may be in flight at once) runs fast and in order")
    func largeBatch() throws {
        let specs = (1...20).map { i in
            InstanceSpec(name: "vm\(i)", interface: "tapvm\(i)", addresses: ["10.1.0.\(i)", "fd00:1::\(i)"])
        }
        let topo = try makeTopology(TopologySpec(instances: specs))
        defer { topo.destroy() }
        var probes: [Probe] = []
        for a in specs { for b in specs where a.name != b.name {
            probes.append(.tcp(from: a.name, to: b.addresses[0], port: 7))
            probes.append(.udp(from: a.name, to: b.addresses[1], port: 7))
        } }
        probes += specs.map { .icmp(from: "hv", to: $0.addresses[1]) } + specs.map { .icmp(from: $0.name, to: "10.255.0.1") }
        let start = Date()
        let results = try topo.probe(probes)
        let elapsed = Date().timeIntervalSince(start)
        #expect(results.count == 800 && zip(results, probes).allSatisfy { $0.probe == $1 })
        #expect(failures(results) { _ in true } == [])
        #expect(elapsed < 5, "800 passing probes took \(elapsed) s")
    }

    @Test("invalid descriptions are rejected before anything is made")
    func validation() throws {
        #expect(throws: HarnessError.self) {
            try HypervisorTopology(instances: [InstanceSpec(name: "a", interface: "tap-name-too-long", addresses: ["10.0.0.1"])])
        }
        #expect(throws: HarnessError.self) {
            try HypervisorTopology(instances: [
                InstanceSpec(name: "a", interface: "tapa", addresses: ["10.0.0.1"]),
                InstanceSpec(name: "b", interface: "tapa", addresses: ["10.0.0.2"]),
            ])
        }
        #expect(throws: HarnessError.self) {
            try HypervisorTopology(instances: [InstanceSpec(name: "hv", interface: "tapa", addresses: ["10.0.0.1"])])
        }
        #expect(throws: HarnessError.self) {
            try HypervisorTopology(instances: [InstanceSpec(name: "a", interface: "tapa", addresses: ["10.0.0.1/24"])])
        }
        // A probe to an address no node owns is a set-up error, not a "denied".
        let topo = try HypervisorTopology(instances: [InstanceSpec(name: "a", interface: "tapa", addresses: ["10.0.0.1"])])
        defer { topo.destroy() }
        #expect(topo.owner(of: "10.0.0.1")?.name == "a" && topo.owner(of: "10.255.0.1")?.name == "hv")
        #expect(throws: HarnessError.self) { try topo.tcp(from: "a", to: "192.0.2.1", port: 80) }
        #expect(!(try topo.ping(from: "a", to: "192.0.2.1", timeout: 0.2)))
    }
}
