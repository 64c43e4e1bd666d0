import Foundation
import RampartCore
import RampartHarness

// The pieces of the evaluator-vs-kernel property (EvaluatorAgreesWithKernelTests): the fixed
// topology, random documents over it, random flows between its nodes, and the oracle that
// turns `Evaluate.packet` verdicts into what a probe can observe.

/// SplitMix64: deterministic, so a seed reproduces a case exactly (documents and flows).
struct EvalRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
    mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &self) < p }
    mutating func int(_ r: ClosedRange<Int>) -> Int { Int.random(in: r, using: &self) }
    mutating func pick<T>(_ a: [T]) -> T { a[int(0...a.count - 1)] }
}

/// The hypervisor the property runs on: four instances (IPv4 and IPv6 each), two outside hosts
/// (one inside 10/8 and fd00::/16, one "internet"), and the hypervisor itself. Every node has a
/// fixed MAC, so the evaluator can be given the MAC each packet really carries.
enum EvalTopology {
    struct Node { var name: String; var interface: String?; var v4: String; var v6: String; var mac: String? }
    static let instances = [
        Node(name: "a", interface: "tapa", v4: "10.0.1.11", v6: "fd00::11", mac: "02:00:00:00:00:0a"),
        Node(name: "b", interface: "tapb", v4: "10.0.1.12", v6: "fd00::12", mac: "02:00:00:00:00:0b"),
        Node(name: "c", interface: "tapc", v4: "10.0.2.21", v6: "fd00::21", mac: "02:00:00:00:00:0c"),
        Node(name: "d", interface: "tapd", v4: "10.0.2.22", v6: "fd00::1:22", mac: "02:00:00:00:00:0d"),
    ]
    static let outside = [
        Node(name: "o1", interface: "up0", v4: "10.0.9.5", v6: "fd00::95", mac: "02:00:00:00:00:f1"),
        Node(name: "o2", interface: "up1", v4: "192.0.2.10", v6: "2001:db8::10", mac: "02:00:00:00:00:f2"),
    ]
    static let hypervisor = Node(name: HypervisorTopology.hypervisorName, interface: nil, v4: "10.255.0.1", v6: "fd00:ff::1", mac: nil)
    static var all: [Node] { instances + outside + [hypervisor] }
    static func node(_ name: String) -> Node { all.first { $0.name == name }! }

    static let spec = TopologySpec(
        instances: instances.map { InstanceSpec(name: $0.name, interface: $0.interface!, addresses: [$0.v4, $0.v6], mac: $0.mac) },
        outside: outside.map { OutsideHostSpec(name: $0.name, addresses: [$0.v4, $0.v6], interface: $0.interface, mac: $0.mac) },
        hypervisorAddresses: [hypervisor.v4, hypervisor.v6])

    /// Ports the rules and the probes draw from: small, so that ranges and probes meet (edges
    /// included). Far from DHCP (67/68), which the base chains treat specially.
    static let ports: [UInt16] = [1000, 1001, 1002, 1005, 1009, 1010]

    static let prefixes4 = ["0.0.0.0/0", "10.0.0.0/8", "10.0.1.0/24", "10.0.2.0/24", "10.0.1.11/32", "10.0.9.5/32",
                            "192.0.2.0/24", "10.255.0.0/16", "10.0.0.0/22", "10.0.2.16/28"]
    static let prefixes6 = ["::/0", "fd00::/16", "fd00::/120", "fd00::10/124", "2001:db8::/32", "fd00:ff::1/128",
                            "fd00::21/128", "fd00::1:0/112"]
}

/// Random documents over `EvalTopology`: random groups and rules (tcp/udp/icmp/icmpv6/any,
/// port ranges, ICMP type and code, cidr and group remotes, either direction), the local
/// instances' memberships (an instance may be left out: its tap is then not Rampart's, or
/// guarded), and the outside hosts as members on other hosts (so group remotes reach them).
struct EvalDocGen {
    var rng: EvalRNG
    init(seed: UInt64) { rng = EvalRNG(seed: seed) }

    func prefix(_ s: String) -> IPPrefix {
        guard case .ok(let p) = IPPrefix.parse(s) else { preconditionFailure(s) }
        return p
    }

    mutating func rule(groups: [String]) -> Rule {
        let proto: RuleProtocol = rng.pick([.tcp, .tcp, .udp, .udp, .icmp, .icmpv6, .any])
        var r = Rule(direction: rng.chance(0.5) ? .ingress : .egress, proto: proto, remote: .group(rng.pick(groups)))
        if proto.hasPorts && rng.chance(0.7) {
            let lo = rng.pick(EvalTopology.ports)
            let hi = rng.chance(0.5) ? lo : max(lo, rng.pick(EvalTopology.ports))
            r.ports = lo...hi
        }
        if proto == .icmp && rng.chance(0.6) {
            r.icmpType = rng.pick([8, 8, 0, 3])
            if rng.chance(0.3) { r.icmpCode = rng.pick([0, 1]) }
        }
        if proto == .icmpv6 && rng.chance(0.6) {
            r.icmpType = rng.pick([128, 128, 129, 1])
            if rng.chance(0.3) { r.icmpCode = rng.pick([0, 1]) }
        }
        let wanted: IPFamily? = proto == .icmp ? .ipv4 : (proto == .icmpv6 ? .ipv6 : nil)
        if rng.chance(0.5) {
            let family = wanted ?? (rng.chance(0.5) ? .ipv4 : .ipv6)
            r.remote = .cidr(prefix(rng.pick(family == .ipv4 ? EvalTopology.prefixes4 : EvalTopology.prefixes6)))
        } else if rng.chance(0.3) {
            r.ethertype = wanted ?? (rng.chance(0.5) ? .ipv4 : .ipv6)
        }
        return r
    }

    mutating func memberships(_ groups: [String]) -> [String] {
        Array(Set((0..<rng.pick([0, 1, 1, 2, 2])).map { _ in rng.pick(groups) })).sorted()
    }

    mutating func document() -> Document {
        let groups = (0..<rng.int(1...4)).map { $0 == 2 ? "g2:x" : "g\($0)" }
        var d = Document(host: "hv1")
        for g in groups {
            d.groups[g] = Group(rules: (0..<rng.int(0...5)).map { i in
                var r = rule(groups: groups)
                r.id = "r\(i)"
                return r
            })
            // Most security groups let their members send anywhere (the usual default); without
            // it almost every flow would be dropped by its sender's egress.
            for (p, f) in [("0.0.0.0/0", "all4"), ("::/0", "all6")] where rng.chance(0.6) {
                d.groups[g]!.rules.append(Rule(id: f, direction: .egress, proto: rng.chance(0.8) ? .any : rng.pick([.tcp, .udp]), remote: .cidr(prefix(p))))
            }
        }
        for n in EvalTopology.instances where rng.chance(0.85) {
            var ips = [IPAddress(n.v6)!]
            // Leaving the IPv4 address out makes anti-spoofing drop the instance's IPv4 traffic.
            // (Not IPv6: the instance then could not answer neighbour solicitations for it, a
            // link-layer effect the evaluator does not model.)
            if rng.chance(0.9) { ips.insert(IPAddress(n.v4)!, at: 0) }
            d.instances[n.name] = Instance(host: "hv1", groups: memberships(groups), ips: ips, interface: n.interface,
                                           mac: rng.chance(0.3) ? MACAddress(n.mac!) : nil)
        }
        for n in EvalTopology.outside where rng.chance(0.6) {
            var ips: [IPAddress] = []
            if rng.chance(0.8) { ips.append(IPAddress(n.v4)!) }
            if ips.isEmpty || rng.chance(0.7) { ips.append(IPAddress(n.v6)!) }
            d.instances["remote-" + n.name] = Instance(host: "hv2", groups: memberships(groups), ips: ips)
        }
        if rng.chance(0.3) {
            d.instances["decoy"] = Instance(host: "hv3", groups: memberships(groups), ips: [IPAddress("10.0.1.99")!, IPAddress("fd00::99")!])
        }
        if rng.chance(0.3) { d.guardedPrefixes = ["tap"] }
        return d
    }

    /// (destination instance, rule) for every ingress rule of a group with a local member here.
    static func aims(_ document: Document) -> [(String, Rule)] {
        var aims: [(String, Rule)] = []
        for (id, inst) in document.instances.sorted(by: { $0.key < $1.key }) where EvalTopology.instances.contains(where: { $0.name == id }) {
            for g in inst.groups { for r in document.groups[g]?.rules ?? [] where r.direction == .ingress { aims.append((id, r)) } }
        }
        return aims
    }

    /// Random flows the kernel is asked about: instance → instance on the host, outside →
    /// instance, instance → outside, host → instance, instance → host; TCP, UDP, ICMP echo;
    /// IPv4 and IPv6. Half of them are aimed at an ingress rule of the document (a member of
    /// its group as the destination, its protocol and a port of its range), so that allowed
    /// flows are common; the rest are uniform.
    mutating func flows(_ count: Int, for document: Document) -> [EvalFlow] {
        let instances = EvalTopology.instances.map(\.name), outside = EvalTopology.outside.map(\.name)
        let hv = EvalTopology.hypervisor.name
        let aims = Self.aims(document)
        var out: [EvalFlow] = []
        var attempts = 0
        while out.count < count && attempts < count * 20 {
            attempts += 1
            var (from, to): (String, String)
            switch rng.int(0...4) {
            case 0: from = rng.pick(instances); to = rng.pick(instances.filter { $0 != from })
            case 1: from = rng.pick(outside); to = rng.pick(instances)
            case 2: from = rng.pick(instances); to = rng.pick(outside)
            case 3: from = hv; to = rng.pick(instances)
            default: from = rng.pick(instances); to = hv
            }
            var kind: EvalFlow.Kind
            switch rng.int(0...4) {
            case 0, 1: kind = .tcp(rng.pick(EvalTopology.ports))
            case 2, 3: kind = .udp(rng.pick(EvalTopology.ports))
            default: kind = .icmp
            }
            var family: IPFamily = rng.chance(0.5) ? .ipv4 : .ipv6
            if !aims.isEmpty && rng.chance(0.5) {
                let (dst, r) = rng.pick(aims)
                to = dst
                from = rng.pick(instances.filter { $0 != dst } + outside + [hv])
                family = rng.pick(r.families)
                let port = r.ports.map { rng.pick(EvalTopology.ports.filter($0.contains)) } ?? rng.pick(EvalTopology.ports)
                switch r.proto {
                case .tcp: kind = .tcp(port)
                case .udp: kind = .udp(port)
                case .icmp: kind = .icmp; family = .ipv4
                case .icmpv6: kind = .icmp; family = .ipv6
                default: break
                }
            }
            let f = EvalFlow(kind: kind, from: from, to: to, family: family)
            if !out.contains(f) { out.append(f) }
        }
        return out
    }
}

/// One flow between two nodes of `EvalTopology`, as a probe and as the packets it is made of.
struct EvalFlow: Hashable, CustomStringConvertible {
    enum Kind: Hashable { case tcp(UInt16), udp(UInt16), icmp }
    var kind: Kind
    var from: String
    var to: String
    var family: IPFamily

    var description: String {
        let k = switch kind { case .tcp(let p): "tcp/\(p)"; case .udp(let p): "udp/\(p)"; case .icmp: family == .ipv4 ? "icmp echo" : "icmpv6 echo" }
        return "\(k) \(from) → \(to) (\(family.rawValue))"
    }

    func address(_ n: EvalTopology.Node) -> String { family == .ipv4 ? n.v4 : n.v6 }

    func probe(timeout: Double) -> Probe {
        let dst = address(EvalTopology.node(to))
        switch kind {
        case .tcp(let p): return .tcp(from: from, to: dst, port: p, timeout: timeout)
        case .udp(let p): return .udp(from: from, to: dst, port: p, timeout: timeout)
        case .icmp: return .icmp(from: from, to: dst, timeout: timeout)
        }
    }

    /// The packets the probe's verdict depends on, as the hypervisor's firewall sees them:
    /// the first packet (conntrack new), the first reply (established), and for TCP the
    /// client's next packet (established).
    var first: PacketDescription { packet(reply: false, established: false) }
    var reply: PacketDescription { packet(reply: true, established: true) }
    var followUp: PacketDescription { packet(reply: false, established: true) }

    /// The client's source port: any ephemeral port (the policy never looks at it outside DHCP).
    static let clientPort: UInt16 = 40000

    private func packet(reply: Bool, established: Bool) -> PacketDescription {
        let s = EvalTopology.node(reply ? to : from), d = EvalTopology.node(reply ? from : to)
        let proto: UInt8, sport: UInt16?, dport: UInt16?, type: UInt8?, flags: UInt8
        switch kind {
        case .tcp(let p):
            proto = 6; sport = reply ? p : Self.clientPort; dport = reply ? Self.clientPort : p; type = nil
            flags = !established ? 0x02 : (reply ? 0x12 : 0x10)
        case .udp(let p):
            proto = 17; sport = reply ? p : Self.clientPort; dport = reply ? Self.clientPort : p; type = nil; flags = 0
        case .icmp:
            proto = family == .ipv4 ? 1 : 58; sport = nil; dport = nil; flags = 0
            type = family == .ipv4 ? (reply ? 0 : 8) : (reply ? 129 : 128)
        }
        return PacketDescription(from: s.interface, to: d.interface, source: IPAddress(address(s))!, destination: IPAddress(address(d))!,
                                 protocolNumber: proto, sourcePort: sport, destinationPort: dport, icmpType: type,
                                 icmpCode: type == nil ? nil : 0, connectionState: established ? [.established] : .new,
                                 tcpFlags: flags, sourceMAC: s.mac.flatMap(MACAddress.init))
    }

    /// What the evaluator predicts a probe observes.
    struct Expected: Equatable, CustomStringConvertible {
        /// TCP: connected and echoed; UDP: the listener got the datagram; ICMP: the reply came.
        var passed: Bool
        /// UDP only: the echo came back (nil: not compared).
        var answered: Bool?
        var description: String {
            (passed ? "passed" : "dropped") + (answered.map { $0 ? ", answered" : ", unanswered" } ?? "")
        }
    }

    func expected(in ir: RulesetIR) -> Expected {
        let new = Evaluate.packet(first, in: ir).allowed
        let back = Evaluate.packet(reply, in: ir).allowed
        switch kind {
        case .tcp: return Expected(passed: new && back && Evaluate.packet(followUp, in: ir).allowed, answered: nil)
        case .udp: return Expected(passed: new, answered: new && back)
        case .icmp: return Expected(passed: new && back, answered: nil)
        }
    }

    func observed(_ r: ProbeResult) -> Expected {
        if case .udp = kind { return Expected(passed: r.passed, answered: r.answered) }
        return Expected(passed: r.passed, answered: nil)
    }

    /// The evaluator's trace of each packet, for a failure message.
    func explain(in ir: RulesetIR) -> String {
        var packets = [("first (new)", first), ("reply (established)", reply)]
        if case .tcp = kind { packets.append(("follow-up (established)", followUp)) }
        return packets.map { name, p in
            let v = Evaluate.packet(p, in: ir)
            return "  \(name): \(v.allowed ? "ALLOWED" : "DROPPED") — \(v.reason(in: ir))\n"
                + v.trace.map { "      \($0)" }.joined(separator: "\n")
        }.joined(separator: "\n")
    }
}

/// One crafted packet through the hypervisor (forwarded: instance ↔ instance, outside ↔
/// instance), sent as a frame from the source node and looked for on the destination's link:
/// one packet, one verdict, with what a socket cannot send — a TCP packet that is not a SYN,
/// an RST, DHCP source ports, ICMP codes and other types, a source address or MAC that is not the
/// sender's.
struct EvalRawFlow: Hashable, CustomStringConvertible {
    enum Kind: Hashable { case tcp(flags: UInt8, sport: UInt16, dport: UInt16), udp(sport: UInt16, dport: UInt16), icmp(type: UInt8, code: UInt8, id: UInt16) }
    var kind: Kind
    var from: String
    var to: String
    var family: IPFamily
    /// The source address carried (nil: the sender's own).
    var spoofedSource: String?
    /// The source MAC carried (nil: the sender's own).
    var spoofedMAC: String?

    static let wrongMAC = "02:00:00:00:00:99"

    var description: String {
        let k = switch kind {
        case .tcp(let f, let s, let d): "tcp flags 0x\(String(f, radix: 16)) \(s)→\(d)"
        case .udp(let s, let d): "udp \(s)→\(d)"
        case .icmp(let t, let c, _): "\(family == .ipv4 ? "icmp" : "icmpv6") type \(t) code \(c)"
        }
        return "raw \(k) \(from) → \(to) (\(family.rawValue))" + (spoofedSource.map { " from address \($0)" } ?? "")
            + (spoofedMAC.map { " from MAC \($0)" } ?? "")
    }

    var source: String { spoofedSource ?? address(EvalTopology.node(from)) }
    var destination: String { address(EvalTopology.node(to)) }
    func address(_ n: EvalTopology.Node) -> String { family == .ipv4 ? n.v4 : n.v6 }

    /// Conntrack's view of the packet, with no entry for its tuple: a TCP packet opens a new entry
    /// unless it is one that cannot begin a connection (RST, SYN-ACK, FIN: invalid; a bare ACK is
    /// picked up mid-stream, `nf_conntrack_tcp_loose`); ICMP only from an echo, timestamp, info or
    /// address request (ICMPv6: echo request), every other type without an entry is invalid.
    var connectionState: CTStates {
        switch kind {
        case .tcp(let f, _, _):
            let syn = f & 0x02 != 0, ack = f & 0x10 != 0, rst = f & 0x04 != 0, fin = f & 0x01 != 0
            if rst || fin || (syn && ack) { return .invalid }
            return .new
        case .udp: return .new
        case .icmp(let t, _, _):
            return (family == .ipv4 ? [8, 13, 15, 17].contains(t) : t == 128) ? .new : .invalid
        }
    }

    var packet: PacketDescription {
        let s = EvalTopology.node(from), d = EvalTopology.node(to)
        var p = PacketDescription(from: s.interface, to: d.interface, source: IPAddress(source)!, destination: IPAddress(destination)!,
                                  protocolNumber: 0, connectionState: connectionState, tcpFlags: 0,
                                  sourceMAC: (spoofedMAC ?? s.mac).flatMap(MACAddress.init))
        switch kind {
        case .tcp(let f, let sp, let dp): p.protocolNumber = 6; p.sourcePort = sp; p.destinationPort = dp; p.tcpFlags = f
        case .udp(let sp, let dp): p.protocolNumber = 17; p.sourcePort = sp; p.destinationPort = dp
        case .icmp(let t, let c, _): p.protocolNumber = family == .ipv4 ? 1 : 58; p.icmpType = t; p.icmpCode = c
        }
        return p
    }

    /// The IP packet, carrying `token` as its payload.
    func bytes(_ token: [UInt8]) throws -> [UInt8] {
        switch kind {
        case .tcp(let f, let sp, let dp):
            return try RawPacket.tcp(src: source, dst: destination, sport: sp, dport: dp, seq: 1000, ack: f & 0x10 != 0 ? 1 : 0, flags: f, token)
        case .udp(let sp, let dp):
            return try RawPacket.udp(src: source, dst: destination, sport: sp, dport: dp, token)
        case .icmp(let t, let c, let id):
            let body = [UInt8(id >> 8), UInt8(id & 0xff), 0, 1] + token
            if family == .ipv6 { return try RawPacket.icmpv6(src: source, dst: destination, type: t, code: c, hopLimit: 64, body) }
            var msg = [t, c, 0, 0] + body
            let sum = Self.checksum(msg)
            msg[2] = UInt8(sum >> 8); msg[3] = UInt8(sum & 0xff)
            return try RawPacket.ip(src: source, dst: destination, proto: 1, msg)
        }
    }

    static func checksum(_ bytes: [UInt8]) -> UInt16 {
        var sum: UInt32 = 0, i = 0
        while i + 1 < bytes.count { sum &+= UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1]); i += 2 }
        if i < bytes.count { sum &+= UInt32(bytes[i]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xffff) &+ (sum >> 16) }
        return ~UInt16(sum)
    }
}

extension EvalDocGen {
    /// Random crafted packets: forwarded (sources spoofed now and then), and some IPv4 ones from
    /// the host to an instance.
    mutating func rawFlows(_ count: Int, for document: Document) -> [EvalRawFlow] {
        let instances = EvalTopology.instances.map(\.name), outside = EvalTopology.outside.map(\.name)
        let aims = Self.aims(document)
        var out: [EvalRawFlow] = []
        var attempts = 0
        while out.count < count && attempts < count * 20 {
            attempts += 1
            var from = rng.pick(instances + outside)
            var to = rng.pick(instances + outside)
            if from == to || (outside.contains(from) && outside.contains(to)) { continue }
            if rng.chance(0.1) { swap(&from, &to) }
            let family: IPFamily = rng.chance(0.5) ? .ipv4 : .ipv6
            let kind: EvalRawFlow.Kind
            switch rng.int(0...5) {
            case 0, 1:
                kind = .tcp(flags: rng.pick([0x02, 0x02, 0x10, 0x18, 0x04]), sport: UInt16(rng.int(20000...30000)), dport: rng.pick(EvalTopology.ports))
            case 2, 3:
                let sport: UInt16 = rng.chance(0.3) ? rng.pick([67, 68]) : UInt16(rng.int(20000...30000))
                kind = .udp(sport: sport, dport: rng.chance(0.2) ? rng.pick([67, 68]) : rng.pick(EvalTopology.ports))
            default:
                let types: [UInt8] = family == .ipv4 ? [8, 8, 8, 13, 0] : [128, 128, 129]
                kind = .icmp(type: rng.pick(types), code: rng.chance(0.3) ? 1 : 0, id: UInt16(rng.int(1...30000)))
            }
            var f = EvalRawFlow(kind: kind, from: from, to: to, family: family)
            // Half aimed at an ingress rule, as for probes.
            if let aim = aims.isEmpty ? nil : rng.pick(aims), rng.chance(0.5), !(outside.contains(from) && aim.0 == from) {
                let (dst, r) = aim
                if dst != from {
                    f.to = dst
                    f.family = rng.pick(r.families)
                    let port = r.ports.map { rng.pick(EvalTopology.ports.filter($0.contains)) } ?? rng.pick(EvalTopology.ports)
                    switch (r.proto, f.kind) {
                    case (.tcp, _): f.kind = .tcp(flags: rng.pick([0x02, 0x02, 0x10, 0x04]), sport: UInt16(rng.int(20000...30000)), dport: port)
                    case (.udp, _): f.kind = .udp(sport: rng.chance(0.2) ? rng.pick([67, 68]) : UInt16(rng.int(20000...30000)), dport: port)
                    case (.icmp, _), (.icmpv6, _):
                        f.family = r.proto == .icmp ? .ipv4 : .ipv6
                        let t = r.icmpType ?? (f.family == .ipv4 ? 8 : 128)
                        f.kind = .icmp(type: t, code: r.icmpCode ?? (rng.chance(0.3) ? 1 : 0), id: UInt16(rng.int(1...30000)))
                    case (_, .tcp(let fl, let sp, _)): f.kind = .tcp(flags: fl, sport: sp, dport: port)
                    case (_, .udp(let sp, _)): f.kind = .udp(sport: sp, dport: port)
                    default: break
                    }
                }
            }
            // Now and then from the host itself (its output hook; IPv4, through its own stack).
            if rng.chance(0.15) && instances.contains(f.to) {
                f.from = EvalTopology.hypervisor.name
                f.family = .ipv4
                if case .icmp(let t, let c, let id) = f.kind, t >= 128 { f.kind = .icmp(type: t == 128 ? 8 : 0, code: c, id: id) }
                if case .udp = f.kind, rng.chance(0.5) { f.kind = .udp(sport: 67, dport: 68) }
                if !out.contains(f) { out.append(f) }
                continue
            }
            if rng.chance(0.25) {
                // Not the hypervisor's own address: routing drops such a packet as a martian
                // before any hook (found by this property; not the policy's doing).
                let others = (EvalTopology.instances + EvalTopology.outside).map { f.address($0) }.filter { $0 != f.address(EvalTopology.node(from)) && $0 != f.destination }
                f.spoofedSource = rng.pick(others + [f.family == .ipv4 ? "10.0.1.99" : "fd00::99"])
            }
            if rng.chance(0.15) { f.spoofedMAC = EvalRawFlow.wrongMAC }
            if !out.contains(f) { out.append(f) }
        }
        return out
    }
}

/// One crafted packet from an instance to the hypervisor itself (the input hook, where the
/// link's own protocols are handled): DHCPv4 requests (from the instance's address, from
/// 0.0.0.0, from another's) and neighbour discovery (RS, RA, NS, NA with various targets,
/// redirect; hop limit 255 or not; from link-local, ::, its own or another's address). Seen or
/// not by a raw socket in the hypervisor (raw sockets get a copy after the input hook).
struct EvalHostRaw: Hashable, CustomStringConvertible {
    enum Kind: Hashable {
        case dhcp(src: String, dst: String, sport: UInt16, dport: UInt16)
        case nd(type: UInt8, src: String, hopLimit: UInt8, target: String)
    }
    var from: String
    var kind: Kind
    var spoofedMAC: String?

    static let linkLocal = "fe80::a:1"
    static let gateway = HypervisorTopology.gatewayIPv6

    var family: IPFamily { if case .dhcp = kind { .ipv4 } else { .ipv6 } }

    var description: String {
        let k = switch kind {
        case .dhcp(let s, let d, let sp, let dp): "udp \(s):\(sp) → \(d):\(dp)"
        case .nd(let t, let s, let h, let target): "icmpv6 type \(t) \(s) → \(Self.gateway) hop limit \(h)" + ([135, 136, 137].contains(t) ? " target \(target)" : "")
        }
        return "raw \(k) from \(from) to the host" + (spoofedMAC.map { " from MAC \($0)" } ?? "")
    }

    /// Neighbour discovery messages are not tracked by conntrack (untracked: no state bit of the
    /// IR matches); a redirect is an ICMPv6 message that cannot open an entry (invalid).
    var packet: PacketDescription {
        let n = EvalTopology.node(from)
        let mac = (spoofedMAC ?? n.mac).flatMap(MACAddress.init)
        switch kind {
        case .dhcp(let s, let d, let sp, let dp):
            return PacketDescription(from: n.interface, to: nil, source: IPAddress(s)!, destination: IPAddress(d)!, protocolNumber: 17,
                                     sourcePort: sp, destinationPort: dp, connectionState: .new, tcpFlags: 0, sourceMAC: mac)
        case .nd(let t, let s, let h, let target):
            return PacketDescription(from: n.interface, to: nil, source: IPAddress(s)!, destination: IPAddress(Self.gateway)!, protocolNumber: 58,
                                     icmpType: t, icmpCode: 0, connectionState: t == 137 ? .invalid : [], tcpFlags: 0, hopLimit: h,
                                     sourceMAC: mac, neighbourTarget: [135, 136, 137].contains(t) ? IPv6Address(target) : nil)
        }
    }

    func bytes(_ token: [UInt8]) throws -> [UInt8] {
        // The link-layer options carry the sender's real MAC even when the frame's source is
        // spoofed: an accepted override NA naming a wrong MAC for the instance's own address
        // would leave the host's neighbour entry poisoned, and the instance unreachable in the
        // next case (the property found this: state between cases, not a policy verdict).
        let mac = EvalTopology.node(from).mac!
        switch kind {
        case .dhcp(let s, let d, let sp, let dp):
            return try RawPacket.udp(src: s, dst: d, sport: sp, dport: dp, token)
        case .nd(let t, let s, let h, let target):
            let g = Self.gateway
            switch t {
            case 135: return try RawPacket.neighbourSolicitation(src: s, dst: g, target: target, mac: mac, hopLimit: h, token: token)
            case 136: return try RawPacket.neighbourAdvertisement(src: s, dst: g, target: target, mac: mac, hopLimit: h, token: token)
            case 134: return try RawPacket.routerAdvertisement(src: s, dst: g, mac: mac, hopLimit: h, token: token)
            case 137:
                return try RawPacket.icmpv6(src: s, dst: g, type: 137, hopLimit: h,
                                            [0, 0, 0, 0] + RawPacket.addressBytes(target) + RawPacket.addressBytes("2001:db8::10") + RawPacket.tokenOption(token))
            default:
                return try RawPacket.icmpv6(src: s, dst: g, type: t, hopLimit: h, [0, 0, 0, 0] + RawPacket.tokenOption(token))
            }
        }
    }
}

extension EvalDocGen {
    mutating func hostRawFlows(_ count: Int) -> [EvalHostRaw] {
        var out: [EvalHostRaw] = []
        var attempts = 0
        while out.count < count && attempts < count * 20 {
            attempts += 1
            let n = rng.pick(EvalTopology.instances)
            let others = EvalTopology.instances.filter { $0.name != n.name }
            var f: EvalHostRaw
            if rng.chance(0.5) {
                let r = rng.int(0...9)
                let src = r < 4 ? n.v4 : r < 7 ? "0.0.0.0" : r < 9 ? rng.pick(others).v4 : "10.0.1.99"
                // 0.0.0.0 may only send to the limited broadcast (else routing drops it as a martian).
                let dst = src == "0.0.0.0" || rng.chance(0.3) ? "255.255.255.255" : EvalTopology.hypervisor.v4
                let (sp, dp): (UInt16, UInt16) = rng.pick([(68, 67), (68, 67), (68, 67), (67, 68), (40000, 67), (68, 1000)])
                f = EvalHostRaw(from: n.name, kind: .dhcp(src: src, dst: dst, sport: sp, dport: dp))
            } else {
                let type: UInt8 = rng.pick([133, 134, 135, 135, 136, 136, 136, 137])
                let r = rng.int(0...9)
                let src = r < 4 ? EvalHostRaw.linkLocal : r < 6 ? "::" : r < 8 ? n.v6 : rng.pick(others).v6
                let target = type == 135 ? EvalHostRaw.gateway
                    : rng.pick([n.v6, n.v6, EvalHostRaw.linkLocal, rng.pick(others).v6, "fd00::99"])
                f = EvalHostRaw(from: n.name, kind: .nd(type: type, src: src, hopLimit: rng.chance(0.8) ? 255 : 64, target: target))
            }
            if rng.chance(0.1) { f.spoofedMAC = EvalRawFlow.wrongMAC }
            if !out.contains(f) { out.append(f) }
        }
        return out
    }
}
