import ArgumentParser
import Foundation
import RampartCore
import RampartIPTables
import RampartNFTables

/// `rampart explain`: the verdict of the policy the kernel holds now for one packet, and the
/// path that led to it (base-chain check, instance → group → rule, or the default drop).
struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Why is this packet allowed or dropped? The verdict of what the kernel holds now, and its path.",
        discussion: """
            An endpoint is an instance id (as in the document), an address, or host:ADDRESS for the
            hypervisor itself. An address of no local instance is outside (reached through --via).
            The packet is the first of a new connection unless --established is given.
            Reads the nftables table (`inet rampart`), or with --backend iptables Rampart's iptables,
            ip6tables, ebtables chains and ipsets lifted back into the same policy, and evaluates it
            rule by rule, as the kernel would. Chain names in the path are the policy's (in-ID, gin-GROUP,
            ...), for either backend: docs/iptables.md maps them to the iptables chains.
            """)

    @OptionGroup var target: TargetOptions

    @Option(help: "The sender: INSTANCE, ADDRESS or host:ADDRESS.")
    var from: String

    @Option(help: "The receiver: INSTANCE, ADDRESS or host:ADDRESS.")
    var to: String

    @Option(help: "The source address the packet carries, when it is not the sender's own (a spoofed packet).")
    var source: String?

    @Option(help: "tcp, udp, sctp, icmp, icmpv6, or a protocol number.")
    var `protocol`: String

    @Option(help: "Destination port (tcp, udp, sctp).")
    var port: UInt16?

    @Option(help: "Source port (tcp, udp, sctp; default 40000).")
    var sourcePort: UInt16 = 40000

    @Option(help: "ICMP or ICMPv6 type.")
    var icmpType: UInt8?

    @Option(help: "ICMP or ICMPv6 code.")
    var icmpCode: UInt8?

    @Option(help: "ipv4 or ipv6, when both endpoints are instances with addresses of both.")
    var family: IPFamily?

    @Option(help: "The device outside traffic uses on the hypervisor (default: uplink).")
    var via = "uplink"

    @Flag(help: "Ask about a packet of an established connection instead of its first packet.")
    var established = false

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        try reportingFailures {
            guard let (ir, undecoded) = try enforcedPolicy() else {
                throw Failure.document("rampart explain: no rampart \(target.backend == .nftables ? "table" : "chains or ipsets") here: nothing is enforced, every packet passes")
            }
            let instances = ExplainedInstances(ir)
            var src = try instances.endpoint(from, name: "--from")
            if let text = source {
                guard let a = IPAddress(text) else { throw Failure.document("rampart explain: --source \(text): not an address") }
                src.fixed = a
            }
            let dst = try instances.endpoint(to, name: "--to")
            let fam = try pickFamily(src, dst)
            guard let srcAddr = src.address(fam), let dstAddr = dst.address(fam) else {
                throw Failure.document("rampart explain: no \(fam.rawValue) address for both endpoints")
            }
            let proto = try protocolNumber()
            var p = PacketDescription(
                from: src.isHost ? nil : (src.interface ?? via), to: dst.isHost ? nil : (dst.interface ?? via),
                source: srcAddr, destination: dstAddr, protocolNumber: proto,
                sourcePort: [6, 17, 132].contains(proto) ? sourcePort : nil, destinationPort: port,
                icmpType: icmpType, icmpCode: icmpCode, connectionState: established ? [.established] : .new,
                tcpFlags: established ? 0x10 : 0x02)
            if src.isHost && dst.isHost { throw Failure.document("rampart explain: host to host is not Rampart's traffic") }
            if p.inputInterface == nil && p.outputInterface == nil { p.outputInterface = via }
            let verdict = Evaluate.packet(p, in: ir)
            let reason = verdict.reason(in: ir)
            if json {
                struct Out: Encodable {
                    var allowed: Bool
                    var reason: String
                    var path: [TraceStep]
                    var unreadableRules: [String]
                }
                print(try RampartJSON.text(Out(allowed: verdict.allowed, reason: reason, path: verdict.trace, unreadableRules: undecoded), pretty: true))
                return
            }
            let what = "\(Render.protocolName(proto)) \(srcAddr) → \(dstAddr)" + (port.map { " port \($0)" } ?? "")
                + (icmpType.map { " type \($0)" } ?? "")
            print("\(what) (\(src.label) → \(dst.label)), \(established ? "established" : "new connection"): \(verdict.allowed ? "ALLOWED" : "DROPPED")")
            for step in verdict.trace {
                print("  \(step.chain)[\(step.rule.map(String.init) ?? "policy")]  \(step.text)")
            }
            print("  → \(reason)")
            if !undecoded.isEmpty {
                print("  warning: rules not written by rampart were skipped: \(undecoded.joined(separator: ", ")) (run `rampart diff` to see the drift)")
            }
        }
    }

    /// What the kernel holds now, read back by the chosen backend (nil: nothing of Rampart's).
    func enforcedPolicy() throws -> (ir: RulesetIR, undecoded: [String])? {
        switch target.backend {
        case .nftables:
            return try target.connectNFTables().enforcedPolicy()
        case .iptables:
            guard let backend = try target.connect() as? IPTablesBackend else { return nil }
            do { return try backend.enforcedPolicy() } catch { throw Failure.system(error) }
        }
    }

    func pickFamily(_ a: Endpoint, _ b: Endpoint) throws -> IPFamily {
        if let f = family { return f }
        for e in [a, b] { if let x = e.fixed { return x.family } }
        for f in [IPFamily.ipv4, .ipv6] where a.address(f) != nil && b.address(f) != nil { return f }
        throw Failure.document("rampart explain: the endpoints share no address family")
    }

    func protocolNumber() throws -> UInt8 {
        // The names and range of a rule's protocol (one definition, in RampartCore); "any" is
        // no packet's protocol.
        let byNumber = UInt8(`protocol`).map { Validate.parseProtocol(number: Int($0), at: "--protocol") }
        if case .success(.number(let n)) = byNumber ?? Validate.parseProtocol(name: `protocol`, at: "--protocol") { return n }
        throw Failure.document("rampart explain: --protocol \(`protocol`): expected tcp, udp, sctp, icmp, icmpv6 or 1-255")
    }
}

extension IPFamily: ExpressibleByArgument {}

/// One side of the packet.
struct Endpoint {
    var label: String
    var interface: String?
    var isHost = false
    /// An address given on the command line.
    var fixed: IPAddress?
    /// The instance's addresses (for an instance named by id).
    var addresses: [IPAddress] = []

    func address(_ f: IPFamily) -> IPAddress? {
        if let x = fixed { return x.family == f ? x : nil }
        return addresses.first { $0.family == f }
    }
}

/// The instances the kernel table knows: interface → instance id (from the dispatch map); their
/// addresses and interfaces as the IR's anti-spoofing sets have them (`IRLocalInstances`, the
/// index revocation uses without a daemon's engine).
struct ExplainedInstances {
    var interfaceOf: [String: String] = [:]
    var idOf: [String: String] = [:]
    let local: IRLocalInstances

    init(_ ir: RulesetIR) {
        local = IRLocalInstances(ir)
        for (iface, v) in ir.maps[Naming.fromInstanceMap]?.elements ?? [:] {
            guard let c = v.chainReference, c.hasPrefix("out-") else { continue }
            let id = Naming.id(fromKernelID: c.dropFirst(4))
            interfaceOf[id] = iface
            idOf[iface] = id
        }
    }

    func endpoint(_ text: String, name: String) throws -> Endpoint {
        if text.hasPrefix("host:") {
            guard let a = IPAddress(String(text.dropFirst(5))) else { throw Failure.document("rampart explain: \(name) \(text): not host:ADDRESS") }
            return Endpoint(label: "the host", isHost: true, fixed: a)
        }
        if let iface = interfaceOf[text] {
            return Endpoint(label: "\(text) on \(iface)", interface: iface, addresses: local.addresses(onInterface: iface).sorted())
        }
        if let a = IPAddress(text) {
            if let iface = local.interface(of: a) {
                return Endpoint(label: "\(idOf[iface] ?? iface) on \(iface)", interface: iface, fixed: a)
            }
            return Endpoint(label: "outside", fixed: a)
        }
        throw Failure.document("rampart explain: \(name) \(text): no instance with that id on this host, and not an address")
    }
}
