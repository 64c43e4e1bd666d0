import Foundation
import RampartHarness
import Testing

/// Every probe between instances on different hypervisors: TCP (with echo), UDP and ICMP to
/// each address (IPv4 and IPv6) of the destination.
func crossHypervisorMatrix(_ cloud: CloudTopology, timeout: Double = 1) -> [Probe] {
    var probes: [Probe] = []
    for a in cloud.instances {
        for b in cloud.instances where cloud.hypervisor(of: b.name) !== cloud.hypervisor(of: a.name) {
            for address in b.addresses {
                probes += [.tcp(from: a.name, to: address, port: 80, timeout: timeout),
                           .udp(from: a.name, to: address, port: 53, timeout: timeout),
                           .icmp(from: a.name, to: address, timeout: timeout)]
            }
        }
    }
    return probes
}

/// The namespaces `ip netns list` shows (first word of each line).
func netnsNames() throws -> Set<String> {
    Set(try netnsList().split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) })
}

/// A cloud; notes on stderr when the readiness checks needed retries.
func makeCloud(_ spec: CloudTopologySpec) throws -> CloudTopology {
    let cloud = try CloudTopology(spec)
    if cloud.setupRetries > 0 {
        FileHandle.standardError.write(Data("note: cloud ready after \(cloud.setupRetries) retries\n".utf8))
    }
    return cloud
}

@Suite("Cloud of routed hypervisors joined by a fabric", .tags(.kernel), .rootOnly)
struct CloudTopologyTests {
    @Test("with no firewall, every cross-hypervisor pair passes (v4, v6; tcp, udp, icmp)")
    func everythingPasses() throws {
        let cloud = try makeCloud(.grid(hypervisors: 3, instancesEach: 2))
        defer { cloud.destroy() }
        #expect(cloud.hypervisors.map(\.hypervisorNode.name) == ["hv1", "hv2", "hv3"])
        #expect(cloud.namespace(ofHypervisor: "hv2").hasPrefix("rt-hv2-"))
        #expect(cloud.uplink(ofHypervisor: "hv2") == "fabric0")
        #expect(cloud.hypervisor(of: "vm3-2")?.hypervisorNode.name == "hv3")
        #expect(cloud.owner(of: "fd00:0:0:2::c")?.name == "vm2-2")

        let probes = crossHypervisorMatrix(cloud)
        // 6 instances, 4 on other hypervisors each: 24 ordered pairs × 2 addresses × 3 kinds.
        #expect(probes.count == 24 * 2 * 3)
        let results = try cloud.probe(probes)
        #expect(failures(results) { _ in true } == [], "\(cloud.diagnostics())")
        // Routed end to end, no NAT: the listener saw the sender's own address, and every
        // datagram's echo came back.
        for r in results where r.probe.kind == .udp(port: 53) {
            #expect(r.answered, "\(r)")
            #expect(r.seenSource == cloud[r.probe.from].addresses.first { $0.contains(":") == r.probe.to.contains(":") }, "\(r)")
        }
        // Same hypervisor, and hypervisor to a remote instance.
        #expect(try cloud.tcp(from: "vm1-1", to: "10.0.1.12", port: 80))
        #expect(try cloud.ping(from: "hv1", to: "fd00:0:0:3::b"))
        #expect(try cloud.udp(from: "hv3", to: "10.0.2.11", port: 53))
    }

    @Test("a drop-policy forward chain on one hypervisor blocks exactly the traffic through it")
    func dropOnOneHypervisor() throws {
        let cloud = try makeCloud(.grid(hypervisors: 3, instancesEach: 2))
        defer { cloud.destroy() }
        let hv2 = cloud.hypervisor("hv2").hypervisor
        try hv2.nft("add", "table", "inet", "t")
        try hv2.nft("add", "chain", "inet", "t", "f", "{ type filter hook forward priority 0; policy drop; }")

        let start = Date()
        let results = try cloud.probe(crossHypervisorMatrix(cloud, timeout: 0.5))
        let elapsed = Date().timeIntervalSince(start)
        // Forwarded through hv2 = to or from one of its instances; hv1 ↔ hv3 never touches it.
        let onHV2: (String) -> Bool = { cloud.hypervisor(of: $0)?.hypervisorNode.name == "hv2" }
        let throughHV2: (Probe) -> Bool = { onHV2($0.from) || onHV2(cloud.owner(of: $0.to)!.name) }
        #expect(failures(results) { !throughHV2($0) } == [])
        // hv2's 2 instances × 4 remote ones, both directions: 16 pairs × 2 addresses × 3 kinds.
        #expect(results.filter { !$0.passed }.count == 16 * 2 * 3)
        #expect(elapsed < 4, "denied probes run concurrently: the batch took \(elapsed) s")
        // hv2's own traffic takes input/output, not forward.
        #expect(try cloud.ping(from: "hv2", to: "10.0.1.11"))

        try hv2.nft("flush", "ruleset")
        #expect(failures(try cloud.probe(crossHypervisorMatrix(cloud))) { _ in true } == [])
    }

    @Test("destroy (and deinit) removes every namespace, also when building fails half-way")
    func cleanup() throws {
        let cloud = try makeCloud(.grid(hypervisors: 2, instancesEach: 1))
        let names = cloud.namespaceNames
        // fabric + 2 × (hypervisor + 1 instance)
        #expect(names.count == 5 && Set(names).count == 5)
        #expect(try netnsNames().isSuperset(of: names))
        cloud.destroy()
        cloud.destroy()  // idempotent
        #expect(try netnsNames().isDisjoint(with: names))

        var other: [String] = []
        do {
            let c = try CloudTopology(.grid(hypervisors: 2, instancesEach: 1))
            other = c.namespaceNames
            #expect(try c.tcp(from: "vm1-1", to: "10.0.2.11", port: 22))
        }
        #expect(try netnsNames().isDisjoint(with: other), "left behind after deinit")

        // The second hypervisor cannot be built (a bad MAC): the first one's namespaces go too.
        var spec = CloudTopologySpec.grid(hypervisors: 2, instancesEach: 1)
        spec.hypervisors[0].name = "hvbroken1"
        spec.hypervisors[1].name = "hvbroken2"
        spec.hypervisors[1].instances[0].mac = "not-a-mac"
        #expect(throws: HarnessError.self) { try CloudTopology(spec) }
        #expect(try netnsNames().filter { $0.hasPrefix("rt-hvbroken") }.isEmpty)
    }

    @Test("invalid clouds are rejected before anything is made")
    func invalid() throws {
        var twice = CloudTopologySpec.grid(hypervisors: 2, instancesEach: 1)
        twice.hypervisors[1].instances[0].addresses = ["10.0.1.11"]
        var longName = CloudTopologySpec.grid(hypervisors: 1, instancesEach: 1)
        longName.hypervisors[0].name = "hypervisor-number-one"
        var uplinkIsTap = CloudTopologySpec.grid(hypervisors: 1, instancesEach: 1)
        uplinkIsTap.hypervisors[0].uplink = "tap1-1"
        var sameName = CloudTopologySpec.grid(hypervisors: 2, instancesEach: 1)
        sameName.hypervisors[1].instances[0].name = "hv1"
        var loopback = CloudTopologySpec.grid(hypervisors: 1, instancesEach: 1)
        loopback.hypervisors[0].name = "lo"
        for spec in [twice, longName, uplinkIsTap, sameName, loopback] {
            #expect(throws: HarnessError.self) { try CloudTopology(spec) }
        }
    }
}
