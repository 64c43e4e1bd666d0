import ArgumentParser
import Foundation
import RampartCore
import RampartHarness
import RampartNFTables
import RampartNetlink
import RampartSystem

/// `rampart-bench packets`: what each nftables layout costs a packet, measured with real packets
/// through a routed hypervisor in network namespaces (`HypervisorTopology`): an instance `vm`
/// sends UDP to an outside host `out` whose prerouting drops it (no reply, no ICMP), so a
/// packet's cost is the sender's `sendto` plus the whole forward path, which veth runs in the
/// sender's context (softirq at `local_bh_enable`).
///
/// - **new flow**: every packet to another destination port: conntrack sees each as new, so it
///   goes through the instance's dispatch (slot lookups in the slot layout, the `from-inst`
///   verdict map and the `out-<id>` chain in the instance-chains layout); the instance's first
///   group's two rules look the destination up in remote groups' members and do not match, its
///   second group accepts, so each packet walks two slots and two member lookups.
/// - **established**: one flow that saw a reply: conntrack accepts it before any dispatch.
///
/// The host holds host-1k (1,000 instances in 2 of 200 groups) besides `vm`. Rounds alternate
/// the layouts (the table is rebuilt between them, conntrack flushed), and each figure is the
/// median over rounds of the mean time per packet of a round.
struct PacketBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "packets",
        abstract: "Per-packet cost of the slot layout against the instance-chains layout (new flows, established packets).")

    @OptionGroup var options: CommonBenchOptions

    @Option(help: "Packets per round.")
    var packets = 20_000

    @Option(help: "Rounds per layout and kind.")
    var rounds = 15

    @Option(help: "Guarded interface prefixes of the document (e.g. tap): their drop rule sits ahead of prerouting's gate, so every packet pays it.")
    var guarded: [String] = []

    func run() throws {
        let report = Report(json: options.json)
        let topo = try HypervisorTopology(TopologySpec(
            instances: [InstanceSpec(name: "vm", interface: "tapvm", addresses: ["172.31.0.11"])],
            outside: [OutsideHostSpec(name: "out", addresses: ["192.0.2.10"])]))
        defer { topo.destroy() }
        guard let vm = topo.node("vm"), let out = topo.node("out") else { throw HarnessError("topology without vm or out") }
        var doc = Scenarios.hostDocument(instances: 1_000)
        doc.host = "hv0"
        // The first group's rules name remote groups the destination is not in: a new flow
        // meets their member-set lookups (`tag . ip daddr @members4` in the slot layout,
        // `ip daddr @m4-g1` before) and falls through to the next slot.
        doc.groups["quiet"] = Group(rules: [
            Rule(id: "to-g1", direction: .egress, proto: .udp, remote: .group("g1")),
            Rule(id: "to-g2", direction: .egress, proto: .udp, remote: .group("g2")),
        ])
        doc.instances["vm"] = Instance(host: "hv0", groups: ["quiet", "g0"], ips: [IPAddress("172.31.0.11")!], interface: "tapvm")
        doc.guardedPrefixes = guarded
        try doc.validate()
        let ir = Compiler.compile(doc)
        let place = NetworkNamespace.named(topo.hypervisor.name)
        let nl = try NFTablesConnection(namespace: place)
        // The outside host drops the blast ports before its own stack answers.
        try out.namespace.nft("add", "table", "inet", "sink")
        try out.namespace.nft("add", "chain", "inet", "sink", "pre", "{ type filter hook prerouting priority -300; policy accept; }")
        try out.namespace.nft("add", "rule", "inet", "sink", "pre", "udp", "dport", "1024-65000", "counter", "drop")

        /// The ways measured: the instance-chains layout, the slot layout with group rules as
        /// rules, the slot layout with them as elements of the shapes' sets (the default), and
        /// the default with its large sets resizable (no size, as before `SetSizes`), and the
        /// default with every group chain its own (before `GroupForm`: `g0`'s egress, which
        /// accepts all of IPv4, had a chain; now its element jumps to the shared `all-ipv4-out`).
        enum Variant: Int, CaseIterable { case instanceChains, slotsRules, slotsElements, slotsElementsResizable, slotsElementsOwnChains }
        func load(_ v: Variant) throws {
            if try nl.readTable(family: .inet, name: Naming.table) != nil {
                _ = try spawnQuiet(["nft", "delete", "table", "inet", Naming.table], in: place)
            }
            let backend = NFTablesBackend(client: nl, layout: v == .instanceChains ? .instanceChains : .slots)
            backend.groupRulesAsElements = v == .slotsElements || v == .slotsElementsResizable || v == .slotsElementsOwnChains
            backend.sizesLargeSets = v != .slotsElementsResizable
            backend.sharesGroupChains = v != .slotsElementsOwnChains
            try backend.commit(diff(from: nil, to: ir), result: ir)
            _ = try spawnQuiet(["conntrack", "-F"], in: place)
        }

        let target = sockaddr_in(port: 0, address: "192.0.2.10")
        var results: [Variant: (new: [Double], established: [Double])] = [:]
        let variants = Variant.allCases.count
        for round in 0..<(variants * rounds) {
            let layout = Variant(rawValue: round % variants)!
            try load(layout)
            let perNew = try NetworkNamespace.named(vm.namespace.name).perform { () throws(HarnessError) -> Double in
                try blast(to: target, packets: packets, newFlows: true)
            }
            _ = try spawnQuiet(["conntrack", "-F"], in: place)
            // One flow that saw a reply: the outside host answers its first packet on port 65500
            // (above the dropped range), then the flow is blasted.
            let perEstablished = try establishedBlast(vm: vm, out: out)
            results[layout, default: ([], [])].new.append(perNew)
            results[layout, default: ([], [])].established.append(perEstablished)
        }
        func figure(_ name: String, _ ours: [Double], _ base: [Double], baseline: String = "instance-chains layout, same rounds") {
            let m = median(ours.map { UInt64($0) }), b = median(base.map { UInt64($0) })
            report.add(Figure(benchmark: name, median_ns: m, baseline: baseline, baseline_median_ns: b,
                              extra: ["difference": String(format: "%+.0f ns", Double(m) - Double(b)), "rounds": "\(ours.count)",
                                      "packets_per_round": "\(packets)"]))
        }
        guard let s = results[.slotsElements], let r = results[.slotsRules], let c = results[.instanceChains],
              let z = results[.slotsElementsResizable], let o = results[.slotsElementsOwnChains] else { throw HarnessError("no rounds") }
        // Every new-flow packet crossed the hypervisor (the outside host counted it): the
        // figures are of forwarded packets, not of packets dropped on the way.
        let listed = try out.namespace.nft("list", "chain", "inet", "sink", "pre").stdout
        let counted = listed.split(separator: " ").drop { $0 != "packets" }.dropFirst().first.flatMap { Int($0) } ?? 0
        guard counted == variants * rounds * packets else {
            throw HarnessError("the outside host counted \(counted) packets of \(variants * rounds * packets) sent: the path dropped some")
        }
        figure("per packet, new flow (dispatch through two groups), slot layout, rules as elements", s.new, c.new)
        figure("per packet, established flow, slot layout, rules as elements", s.established, c.established)
        figure("per packet, new flow, slot layout, rules as elements", s.new, r.new, baseline: "slot layout, group rules as rules, same rounds")
        figure("per packet, new flow, slot layout, rules as rules", r.new, c.new)
        figure("per packet, established flow, slot layout, rules as rules", r.established, c.established)
        let resizable = "the same with the large sets resizable (no size), same rounds"
        figure("per packet, new flow, slot layout, large sets sized", s.new, z.new, baseline: resizable)
        figure("per packet, established flow, slot layout, large sets sized", s.established, z.established, baseline: resizable)
        let own = "the same with every group chain its own (no shared accept-all chain), same rounds"
        figure("per packet, new flow, slot layout, accept-all groups share a chain", s.new, o.new, baseline: own)
        figure("per packet, established flow, slot layout, accept-all groups share a chain", s.established, o.established, baseline: own)
        report.note("host-1k plus the measured instance; \(rounds) rounds per variant of \(packets) packets, the \(variants) alternating")
        report.finish()
        _ = try? spawnQuiet(["nft", "delete", "table", "inet", Naming.table], in: place)
    }

    /// Sends `packets` datagrams from the current namespace; returns nanoseconds per packet.
    func blast(to base: sockaddr_in, packets: Int, newFlows: Bool, fd existing: Int32? = nil) throws(HarnessError) -> Double {
        let fd = existing ?? socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket: \(errno)") }
        defer { if existing == nil { close(fd) } }
        var addr = base
        let payload = [UInt8](repeating: 0x5a, count: 64)
        let t0 = monotonicNanos()
        for i in 0..<packets {
            if newFlows { addr.sin_port = UInt16(1024 + i % 60_000).bigEndian }
            let n = payload.withUnsafeBytes { p in
                withUnsafePointer(to: &addr) { a in
                    a.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        newFlows || existing == nil ? sendto(fd, p.baseAddress, p.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                                                    : send(fd, p.baseAddress, p.count, 0)
                    }
                }
            }
            guard n == payload.count else { throw HarnessError("sendto: \(errno)") }
        }
        return Double(monotonicNanos() - t0) / Double(packets)
    }

    /// An established flow: a connected socket whose first datagram the outside host answers
    /// (so conntrack has seen a reply), then `packets` more on it.
    func establishedBlast(vm: TopologyNode, out: TopologyNode) throws -> Double {
        let port: UInt16 = 65_500
        let server = try NetworkNamespace.named(out.namespace.name).perform { () throws(HarnessError) -> Int32 in
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            var a = sockaddr_in(port: port, address: "0.0.0.0")
            let r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard fd >= 0, r == 0 else { throw HarnessError("echo bind: \(errno)") }
            return fd
        }
        defer { close(server) }
        return try NetworkNamespace.named(vm.namespace.name).perform { () throws(HarnessError) -> Double in
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            defer { close(fd) }
            var a = sockaddr_in(port: port, address: "192.0.2.10")
            let r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard r == 0, send(fd, "x", 1, 0) == 1 else { throw HarnessError("connect/send: \(errno)") }
            // The answer, sent from the server's socket to the sender's address.
            var from = sockaddr_in(), len = socklen_t(MemoryLayout<sockaddr_in>.size)
            var byte: UInt8 = 0
            let got = withUnsafeMutablePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(server, &byte, 1, 0, $0, &len) } }
            guard got == 1 else { throw HarnessError("echo recv: \(errno)") }
            let sent = withUnsafePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(server, &byte, 1, 0, $0, len) } }
            guard sent == 1, recv(fd, &byte, 1, 0) == 1 else { throw HarnessError("echo reply: \(errno)") }
            return try blast(to: a, packets: packets, newFlows: false, fd: fd)
        }
    }
}

extension sockaddr_in {
    init(port: UInt16, address: String) {
        self.init()
        sin_family = sa_family_t(AF_INET)
        sin_port = port.bigEndian
        inet_pton(AF_INET, address, &sin_addr)
    }
}
