@testable import RampartCore

/// SplitMix64: a tiny deterministic generator, so a failing seed reproduces exactly.
struct SeededRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

/// Random valid documents and random valid edits of them.
struct DocGen {
    var rng: SeededRNG
    var nextAddress: UInt32 = 1
    var nextInstance = 0
    let hosts = ["hv1", "hv1", "hv2", "hv3"]

    init(seed: UInt64) { rng = SeededRNG(seed: seed) }

    mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &rng) < p }
    mutating func int(_ r: ClosedRange<Int>) -> Int { Int.random(in: r, using: &rng) }
    mutating func pick<T>(_ a: [T]) -> T { a[int(0...a.count - 1)] }

    /// Addresses come from a small pool for instances elsewhere (so members share addresses and
    /// the multiplicity counts matter) and are fresh for local instances (which must be unique).
    mutating func address(fresh: Bool) -> IPAddress {
        let n: UInt32
        if fresh { nextAddress += 1; n = 0x0a01_0000 + nextAddress } else { n = 0x0a02_0000 + UInt32(int(0...12)) }
        if chance(0.3) { return .v6(IPv6Address(hi: 0xfd00_0000_0000_0000, lo: UInt64(n))) }
        return .v4(IPv4Address(raw: n))
    }

    mutating func prefix() -> IPPrefix {
        if chance(0.5) {
            let len = UInt8(pick([0, 8, 16, 24, 32]))
            let p = IPv4Prefix(address: IPv4Address(raw: 0x0a00_0000), length: len)
            return .v4(IPv4Prefix(address: IPv4Address(raw: p.address.raw & p.mask), length: len))
        }
        let len = UInt8(pick([0, 48, 64, 128]))
        let p = IPv6Prefix(address: IPv6Address(hi: 0xfd00_0000_0000_0000, lo: 0), length: len)
        let m = p.mask
        return .v6(IPv6Prefix(address: IPv6Address(hi: p.address.hi & m.hi, lo: p.address.lo & m.lo), length: len))
    }

    mutating func rule(groups: [String]) -> Rule {
        let protos: [RuleProtocol] = [.tcp, .udp, .sctp, .icmp, .icmpv6, .any, .number(47)]
        let proto = pick(protos)
        var r = Rule(id: chance(0.7) ? "r\(int(0...99))" : nil, direction: chance(0.5) ? .ingress : .egress, proto: proto,
                     remote: .group(pick(groups)))
        if proto.hasPorts && chance(0.6) {
            let lo = UInt16(int(1...1000))
            r.ports = lo...(chance(0.5) ? lo : lo + UInt16(int(0...100)))
        }
        if proto.isICMP && chance(0.5) {
            r.icmpType = UInt8(int(0...255))
            if chance(0.5) { r.icmpCode = UInt8(int(0...255)) }
        }
        let wanted: IPFamily? = proto == .icmp ? .ipv4 : (proto == .icmpv6 ? .ipv6 : nil)
        if chance(0.4) {
            var p = prefix()
            while let w = wanted, p.family != w { p = prefix() }
            r.remote = .cidr(p)
            if chance(0.3) { r.ethertype = p.family }
        } else if chance(0.3) {
            r.ethertype = wanted ?? pick(IPFamily.allCases)
        }
        return r
    }

    mutating func rules(groups: [String]) -> [Rule] {
        (0..<int(0...4)).map { _ in rule(groups: groups) }
    }

    mutating func groupSubset(_ groups: [String]) -> [String] {
        (0..<int(0...3)).map { _ in pick(groups) }
    }

    mutating func instance(host: String, groups: [String]) -> Instance {
        let local = host == "hv1"
        var ips = [address(fresh: local)]
        if chance(0.4) { ips.append(address(fresh: local)) }
        nextInstance += 1
        return Instance(host: host, groups: groupSubset(groups), ips: ips,
                        interface: local ? "tap\(nextInstance)" : nil,
                        mac: chance(0.3) ? MACAddress(raw: UInt64(int(0...0xffffff))) : nil)
    }

    mutating func newInstanceID() -> String { "i\(nextInstance + 1)" + (chance(0.2) ? ":x" : "") }

    mutating func document() -> Document {
        let groupIDs = (0..<int(1...6)).map { "g\($0)" + ($0 == 3 ? ":odd" : "") }
        var d = Document(host: "hv1")
        for g in groupIDs { d.groups[g] = Group(rules: rules(groups: groupIDs)) }
        for _ in 0..<int(0...8) {
            let id = newInstanceID()
            d.instances[id] = instance(host: pick(hosts), groups: groupIDs)
        }
        return d
    }
}
