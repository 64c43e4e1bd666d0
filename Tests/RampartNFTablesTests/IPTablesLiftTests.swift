import Foundation
import Testing
import RampartCore
import RampartIPTables

/// `IPTLift` (the iptables state read back into the IR, for `explain`) as a property, without
/// root: random documents (`EvalDocGen`) compiled, rendered by the iptables backend's own
/// rendering (`IPTRender.state`, both topologies) and lifted back must give an IR on which the
/// evaluator's verdicts equal those on the compiled IR, for random packets of every kind the
/// base chains look at (spoofed sources and MACs, NDP, DHCP, invalid and established state,
/// non-SYN new TCP, guarded devices), with nothing undecoded. And hand-made drift is reported.
///
/// Environment: RAMPART_LIFT_SEED (default: random, printed), RAMPART_LIFT_CASES (default 200).
@Suite("iptables read back for explain")
struct IPTablesLiftTests {
    static let env = ProcessInfo.processInfo.environment
    static let seed = env["RAMPART_LIFT_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 0...UInt64(UInt32.max))
    static let cases = env["RAMPART_LIFT_CASES"].flatMap(Int.init) ?? 200

    /// What the kernel would hold after applying `ir`: the rendering, with the entry jumps.
    static func kernelState(_ ir: RulesetIR, _ topology: IPTTopology) throws -> IPTState {
        var st = try IPTRender.state(ir, topology: topology)
        st.jumps4 = Set(IPTNames.entries.map(\.builtin))
        st.jumps6 = st.jumps4
        st.jumpsRaw4 = Set(IPTNames.rawEntries.map(\.builtin))
        st.jumpsRaw6 = st.jumpsRaw4
        return st
    }

    /// A random packet over `EvalTopology`: any pair of nodes, any protocol the base chains or
    /// the rules look at, any conntrack state, sometimes a spoofed source, MAC or NA target.
    static func packet(_ rng: inout EvalRNG) -> PacketDescription {
        let nodes = EvalTopology.all + [EvalTopology.Node(name: "guarded", interface: "tapz", v4: "10.0.1.50", v6: "fd00::50", mac: nil)]
        var s = rng.pick(nodes), d = rng.pick(nodes)
        if s.interface == nil && d.interface == nil { d = rng.pick(EvalTopology.instances) }
        if s.name == d.name { s = EvalTopology.outside[0] }
        let v4 = rng.chance(0.5)
        var src = IPAddress(v4 ? s.v4 : s.v6)!
        let dst = IPAddress(v4 ? d.v4 : d.v6)!
        if rng.chance(0.1) { src = IPAddress(v4 ? rng.pick(EvalTopology.all).v4 : rng.pick(["fe80::1", "::", "fd00::77"]))! }
        let proto: UInt8 = v4 ? rng.pick([6, 6, 17, 17, 1, 132, 47]) : rng.pick([6, 6, 17, 17, 58, 58, 132])
        let ports = EvalTopology.ports + [67, 68, 22]
        var sport: UInt16?, dport: UInt16?, type: UInt8?, code: UInt8?, target: IPv6Address?
        switch proto {
        case 6, 17, 132: sport = rng.pick(ports + [40000]); dport = rng.pick(ports)
        case 1: type = rng.pick([8, 0, 3]); code = rng.pick([0, 1])
        case 58:
            type = rng.pick([128, 129, 1, 133, 134, 135, 136, 137]); code = rng.pick([0, 1])
            if type == 136 { target = IPv6Address(rng.pick(["fe80::5", s.v6, "fd00::12", "fd00::99"])) }
        default: break
        }
        let state: CTStates = rng.pick([.new, .new, [.established], [.related], .invalid, []])
        return PacketDescription(from: s.interface, to: d.interface, source: src, destination: dst, protocolNumber: proto,
                                 sourcePort: sport, destinationPort: dport, icmpType: type, icmpCode: code, connectionState: state,
                                 tcpFlags: rng.pick([0x02, 0x02, 0x10, 0x12, 0x04]), hopLimit: rng.chance(0.7) ? 255 : 64,
                                 sourceMAC: rng.chance(0.2) ? MACAddress("02:00:00:00:00:99") : s.mac.flatMap(MACAddress.init),
                                 neighbourTarget: target)
    }

    /// Lifts the rendering of `document` and compares verdicts on `packets` random packets;
    /// the disagreements, described.
    static func disagreements(_ document: Document, _ topology: IPTTopology, packets: Int, rng: inout EvalRNG) throws -> [String] {
        let compiled = Compiler.compile(document)
        guard let (lifted, undecoded) = IPTLift.ir(try kernelState(compiled, topology), topology: topology) else { return ["nothing lifted"] }
        var out = undecoded.map { "undecoded: \($0)" }
        for _ in 0..<packets {
            let p = packet(&rng)
            let want = Evaluate.packet(p, in: compiled), got = Evaluate.packet(p, in: lifted)
            if want.allowed != got.allowed {
                out.append("\(p): compiled \(want.allowed) [\(want.trace.map(\.description).joined(separator: "; "))], lifted \(got.allowed) [\(got.trace.map(\.description).joined(separator: "; "))]")
            }
        }
        return out
    }

    @Test(arguments: IPTTopology.allCases) func liftedPolicyGivesTheCompiledVerdicts(_ topology: IPTTopology) throws {
        print("iptables lift property (\(topology.rawValue)): RAMPART_LIFT_SEED=\(Self.seed), \(Self.cases) cases")
        var allowed = 0, total = 0
        for k in 0..<Self.cases {
            let caseSeed = Self.seed &+ UInt64(k)
            var gen = EvalDocGen(seed: caseSeed)
            let document = gen.document()
            var rng = EvalRNG(seed: caseSeed ^ 0x5eed)
            let wrong = try Self.disagreements(document, topology, packets: 300, rng: &rng)
            #expect(wrong.isEmpty, "replay with RAMPART_LIFT_SEED=\(caseSeed) RAMPART_LIFT_CASES=1\ndocument: \(document.jsonText())\n\(wrong.prefix(10).joined(separator: "\n"))")
            if !wrong.isEmpty { break }
            var r2 = EvalRNG(seed: caseSeed)
            let compiled = Compiler.compile(document)
            for _ in 0..<50 { total += 1; if Evaluate.packet(Self.packet(&r2), in: compiled).allowed { allowed += 1 } }
        }
        // Not vacuous: both verdicts occur.
        #expect(allowed > total / 20 && allowed < total - total / 20, "allowed \(allowed) of \(total)")
    }

    /// Names too long for iptables come back cut and hashed, and still evaluate the same.
    @Test(arguments: IPTTopology.allCases) func longNamesLiftToTheSameVerdicts(_ topology: IPTTopology) throws {
        let long = "a-security-group-with-a-long-name"
        let inst = "instance-with-a-rather-long-id-0001"
        var d = Document(host: "hv1", guardedPrefixes: ["tap"])
        d.groups[long] = Group(rules: [
            Rule(id: "ssh", direction: .ingress, proto: .tcp, ports: 1000...1002, remote: .group(long)),
            Rule(id: "out", direction: .egress, proto: .any, remote: .cidr(.v4(IPv4Prefix(address: IPv4Address("0.0.0.0")!, length: 0)))),
            Rule(id: "out6", direction: .egress, proto: .any, remote: .cidr(.v6(IPv6Prefix(address: IPv6Address("::")!, length: 0)))),
        ])
        d.instances[inst] = Instance(host: "hv1", groups: [long], ips: [IPAddress("10.0.1.11")!, IPAddress("fd00::11")!], interface: "tapa")
        d.instances["b"] = Instance(host: "hv1", groups: [long], ips: [IPAddress("10.0.1.12")!, IPAddress("fd00::12")!], interface: "tapb",
                                    mac: MACAddress("02:00:00:00:00:0b"))
        var rng = EvalRNG(seed: Self.seed)
        let wrong = try Self.disagreements(d, topology, packets: 2000, rng: &rng)
        #expect(wrong.isEmpty, "\(wrong.prefix(10).joined(separator: "\n"))")
    }

    /// A rule added by hand to one of Rampart's chains (or removed from it) is reported, and the
    /// rest still reads.
    @Test func handMadeDriftIsUndecoded() throws {
        var gen = EvalDocGen(seed: 7)
        var document = gen.document()
        document.groups["web"] = Group(rules: [Rule(id: "http", direction: .ingress, proto: .tcp, ports: 1000...1000, remote: .cidr(.v4(IPv4Prefix(address: IPv4Address("10.0.0.0")!, length: 8))))])
        document.instances["a"] = Instance(host: "hv1", groups: ["web"], ips: [IPAddress("10.0.1.11")!, IPAddress("fd00::11")!], interface: "tapa")
        let compiled = Compiler.compile(document)
        var st = try Self.kernelState(compiled, .routed)
        st.v4.chains["rp-gi-web"]!.insert("-s 192.0.2.0/24 -j ACCEPT", at: 0)
        st.v4.chains[IPTNames.forward]!.insert("-i tapa -p tcp -m tcp --dport 22 -j ACCEPT", at: 0)
        st.v6.chains[IPTNames.forwardTo]!.removeLast()
        // Before conntrack: a hand-made return ahead of the source check, a jump gone.
        st.raw4.chains[IPTNames.preCheck]!.insert("-j RETURN", at: 0)
        st.jumpsRaw6 = []
        let (lifted, undecoded) = try #require(IPTLift.ir(st, topology: .routed))
        #expect(undecoded.contains("ipv4 rp-gi-web: -s 192.0.2.0/24 -j ACCEPT"), "\(undecoded)")
        #expect(undecoded.contains("ipv4 RAMPART-FWD: -i tapa -p tcp -m tcp --dport 22 -j ACCEPT"), "\(undecoded)")
        #expect(undecoded.contains { $0.hasPrefix("ipv6 rp-fwd-to: missing from the kernel: ") }, "\(undecoded)")
        #expect(undecoded.contains("ipv4 raw rp-pre-chk: -j RETURN"), "\(undecoded)")
        #expect(undecoded.contains("ipv6 raw PREROUTING: no jump to RAMPART-PRE: no source check before conntrack"), "\(undecoded)")
        #expect(undecoded.count == 5, "\(undecoded)")
        // The group's own rule still reads.
        #expect(lifted.chains["gin-web"]?.rules.count == 1)
        let p = PacketDescription(from: "up0", to: "tapa", source: IPAddress("10.0.9.5")!, destination: IPAddress("10.0.1.11")!,
                                  protocolNumber: 6, sourcePort: 40000, destinationPort: 1000)
        #expect(Evaluate.packet(p, in: lifted).allowed == Evaluate.packet(p, in: compiled).allowed)
        // No jump from a built-in chain: nothing of that chain is enforced, and that is said.
        st.jumps4.remove("INPUT")
        #expect(IPTLift.ir(st, topology: .routed)!.undecoded.contains { $0.hasPrefix("ipv4 INPUT: no jump") })
        // Nothing of Rampart's: nil.
        #expect(IPTLift.ir(IPTState(), topology: .routed) == nil)
    }
}

extension IPTablesLiftTests {
    /// Every rule shape `IPTRender.rule` writes, the compiler's or not (goto, return, drop,
    /// several negated sources through a helper chain, UDP source and destination ports, ICMP
    /// codes, an ICMPv6 type range, SCTP and multiport ranges, a MAC, conntrack states, a
    /// comment with quotes and a backslash), lifts back with nothing undecoded and the same
    /// verdicts.
    @Test func everyRuleShapeLiftsBack() throws {
        var ir = Compiler.compile(Document(host: "hv1", guardedPrefixes: ["tap"]))
        let a = IPv4Address("10.0.1.11")!, b = IPv4Address("10.0.1.12")!
        ir.sets[Naming.instanceInterfaces]!.elements = [.ifname("tapa")]
        ir.sets[Naming.sources4]!.elements = [.ifaceIPv4("tapa", a)]
        ir.sets[Naming.sources6]!.elements = [.ifaceIPv6("tapa", IPv6Address("fd00::11")!)]
        ir.sets[Naming.ndTargets]!.elements = [.ifaceNDTarget("tapa", IPv6Address("fd00::11")!)]
        ir.maps[Naming.fromInstanceMap]!.elements = ["tapa": .jump("out-a")]
        ir.maps[Naming.toInstanceMap]!.elements = ["tapa": .jump("in-a")]
        ir.sets["m4-g"] = NamedSet(name: "m4-g", keyType: .ipv4Addr, elements: [.ipv4(b)])
        ir.chains["out-a"] = Chain(name: "out-a", rules: [
            IRRule([.ip4SaddrNot(a), .ip4SaddrNot(b)], .drop),
            IRRule([.l4proto(17), .udpSport(1000), .udpDport(1001)], .accept),
            IRRule([.ctState([.established, .related])], .return),
            IRRule([.l4proto(132), .thDport(1000...1005)], .goto("gout-g")),
            IRRule([.l4proto(47), .thDport(1000...1002)], .drop),
            IRRule([], .jump("gout-g")),
            IRRule([], .drop),
        ])
        ir.chains["in-a"] = Chain(name: "in-a", rules: [
            IRRule([.etherSaddrNot(MACAddress("02:00:00:00:00:99")!)], .drop),
            IRRule([.l4proto(1), .icmpType(3), .icmpCode(1)], .accept),
            IRRule([.icmpv6Type(128...130)], .accept),
            IRRule([.nfproto(.ipv6), .ip6Saddr(IPv6Prefix(address: IPv6Address("2001:db8::")!, length: 32)), .l4proto(6), .thDport(22...22)], .accept),
            IRRule([.saddrInSet(.ipv4, "m4-g"), .l4proto(6)], counter: true, .accept, comment: #"g/odd "quoted" 'id' \ here"#),
            IRRule([], .drop),
        ])
        ir.chains["gout-g"] = Chain(name: "gout-g", rules: [IRRule([.daddrInSet(.ipv4, "m4-g")], counter: true, .accept, comment: "g/x")])
        for t in IPTTopology.allCases {
            let st = try Self.kernelState(ir, t)
            let (lifted, undecoded) = try #require(IPTLift.ir(st, topology: t))
            #expect(undecoded.isEmpty, "\(undecoded)")
            var rng = EvalRNG(seed: Self.seed)
            for _ in 0..<3000 {
                var p = Self.packet(&rng)
                if rng.chance(0.5) { p.inputInterface = rng.pick(["tapa", "up0"]); p.outputInterface = p.inputInterface == "tapa" ? "up0" : "tapa" }
                #expect(Evaluate.packet(p, in: lifted).allowed == Evaluate.packet(p, in: ir).allowed, "\(p)")
            }
        }
    }
}
