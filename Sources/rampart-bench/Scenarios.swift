import Foundation
import RampartCore

/// The deterministic scenarios every benchmark subcommand shares (`engine`, `nftables`): the
/// host-N documents and the classic driver's expansion of the same policy.
enum Scenarios {
    /// Deterministic generator (SplitMix64) so every run measures the same documents.
    struct RNG: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
    }

    static let groupCount = 200
    static let remoteMembersPerGroup = 40

    /// host-N: N instances here, each in 2 of `groupCount` (default 200) groups; 5 rules per
    /// group, 2 of them with a remote group; 40 members per group on other hosts (with the ~10
    /// local ones at N=1000, 50 members per group across the cloud).
    static func hostDocument(instances n: Int, groups groupCount: Int = groupCount) -> Document {
        var rng = RNG(state: 42)
        var d = Document(host: "hv0")
        for g in 0..<groupCount {
            let r1 = Int.random(in: 0..<groupCount, using: &rng), r2 = Int.random(in: 0..<groupCount, using: &rng)
            d.groups["g\(g)"] = Group(rules: [
                Rule(id: "ssh", proto: .tcp, ports: 22...22, remote: .group("g\(r1)")),
                Rule(id: "pg", proto: .tcp, ports: 5432...5432, remote: .group("g\(r2)")),
                Rule(id: "web", proto: .tcp, ports: 80...80, remote: .cidr(.v4(IPv4Prefix(address: IPv4Address(raw: 0), length: 0)))),
                Rule(id: "ping", proto: .icmp, icmpType: 8, remote: .cidr(.v4(IPv4Prefix(address: IPv4Address(raw: 0x0a00_0000), length: 8)))),
                Rule(id: "out", direction: .egress, proto: .any, remote: .cidr(.v4(IPv4Prefix(address: IPv4Address(raw: 0), length: 0)))),
            ])
        }
        for i in 0..<n {
            let g1 = i % groupCount, g2 = (i / groupCount + i + 1) % groupCount
            d.instances["vm\(i)"] = Instance(host: "hv0", groups: ["g\(g1)", "g\(g2 == g1 ? (g1 + 1) % groupCount : g2)"],
                                             ips: [.v4(IPv4Address(raw: 0x0a00_0000 + UInt32(i) + 1)),
                                                   .v6(IPv6Address(hi: 0xfd00_0000_0000_0000, lo: UInt64(i) + 1))],
                                             interface: "tap\(i)", mac: MACAddress(raw: 0x0200_0000_0000 + UInt64(i)))
        }
        var k = 0
        for g in 0..<groupCount {
            for _ in 0..<remoteMembersPerGroup {
                k += 1
                d.instances["r\(k)"] = Instance(host: "hv\(1 + k % 99)", groups: ["g\(g)"], ips: [.v4(IPv4Address(raw: 0x0b00_0000 + UInt32(k)))])
            }
        }
        return d
    }

    /// The original design's compile: per instance, per group rule, one iptables rule per
    /// remote member address, as text. Returns the number of rules.
    static func classicExpansion(_ d: Document) -> Int {
        var members: [String: [IPAddress]] = [:]
        for inst in d.instances.values { for g in inst.groups { members[g, default: []] += inst.ips } }
        var out = ""
        var count = 0
        for (id, inst) in d.instances where inst.host == d.host {
            for g in inst.groups {
                for r in d.groups[g]!.rules {
                    let chain = r.direction == .ingress ? "in-\(id)" : "out-\(id)"
                    let tail = " -p \(r.proto) --dport \(r.ports?.lowerBound ?? 0) -j RETURN\n"
                    switch r.remote {
                    case .cidr(let p):
                        out += "-A \(chain) -s \(p)" + tail
                        count += 1
                    case .group(let rg):
                        for a in members[rg] ?? [] where a.family == .ipv4 {
                            out += "-A \(chain) -s \(a)/32" + tail
                            count += 1
                        }
                    }
                }
            }
        }
        return out.isEmpty ? 0 : count
    }

    /// host-N with `group` brought to exactly `count` members on this host (or every local
    /// instance, if fewer): local instances, in index order, that are not yet members have
    /// their first group replaced by `group`. Used where a figure needs a group with ~100
    /// local members (the rules change), which host-1k (10 per group) does not have.
    static func withLocalMembers(_ d: Document, group: String, count: Int) -> Document {
        var d = d
        let local = d.instances.filter { $0.value.host == d.host }.keys.sorted { index($0) < index($1) }
        var have = local.filter { d.instances[$0]!.groups.contains(group) }.count
        for id in local where have < count {
            guard !d.instances[id]!.groups.contains(group) else { continue }
            d.instances[id]!.groups[0] = group
            have += 1
        }
        return d
    }

    /// `vm123` → 123, for a numeric order of generated ids.
    static func index(_ id: String) -> Int { Int(id.drop { !$0.isNumber }) ?? 0 }

    /// The classic iptables driver's ruleset for `d` as `iptables-restore` input (IPv4 only:
    /// the `filter` table), and its number of rules (`-A` lines). Shaped like Neutron's hybrid
    /// iptables firewall driver, with its `--physdev-in/out tapX` matches replaced by `-i/-o
    /// tapX` (this benchmark has no bridge), and the chain names shortened:
    ///
    /// - FORWARD: per instance, `-o tapX -j sg-chain` and `-i tapX -j sg-chain`;
    ///   `sg-chain`: `-o tapX -j i-X`, `-i tapX -j o-X`, finally `-j ACCEPT`;
    ///   INPUT: `-i tapX -j o-X` (instance → host is egress too);
    /// - `i-X` (ingress): state RELATED,ESTABLISHED RETURN, INVALID DROP, DHCP replies, then per
    ///   group and ingress rule one rule per cidr, or **one rule per IPv4 address of every member
    ///   of the remote group** (on any host), then `-j sg-fallback` (DROP);
    /// - `o-X` (egress): DHCP requests, `-j s-X` (anti-spoofing: per address `-s A/32 -m mac
    ///   --mac-source M -j RETURN`, then DROP), no DHCP server, state rules, egress rules expanded
    ///   the same way, `-j sg-fallback`.
    ///
    /// Every change is applied by re-loading all of it (`iptables-restore` without `--noflush`).
    static func classicRestore(_ d: Document) -> (text: String, rules: Int) {
        var members: [String: [IPv4Address]] = [:]
        for id in d.instances.keys.sorted() {
            let inst = d.instances[id]!
            for g in inst.groups {
                for case .v4(let a) in inst.ips { members[g, default: []].append(a) }
            }
        }
        let local = d.instances.filter { $0.value.host == d.host && $0.value.interface != nil }
            .keys.sorted { index($0) < index($1) }
        var head = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:sg-chain - [0:0]\n:sg-fallback - [0:0]\n"
        var body = "-A sg-fallback -j DROP\n"
        var rules = 1
        @inline(__always) func add(_ line: String) {
            body += line
            body += "\n"
            rules += 1
        }
        for id in local {
            let inst = d.instances[id]!
            let tap = inst.interface!
            let (i, o, s) = ("i-\(id)", "o-\(id)", "s-\(id)")
            head += ":\(i) - [0:0]\n:\(o) - [0:0]\n:\(s) - [0:0]\n"
            add("-A FORWARD -o \(tap) -j sg-chain")
            add("-A FORWARD -i \(tap) -j sg-chain")
            add("-A sg-chain -o \(tap) -j \(i)")
            add("-A sg-chain -i \(tap) -j \(o)")
            add("-A INPUT -i \(tap) -j \(o)")

            add("-A \(i) -m state --state RELATED,ESTABLISHED -j RETURN")
            add("-A \(i) -m state --state INVALID -j DROP")
            add("-A \(i) -p udp -m udp --sport 67 --dport 68 -j RETURN")
            var egress: [String] = []
            for g in inst.groups {
                for r in d.groups[g]!.rules where r.families.contains(.ipv4) {
                    let (chain, side) = r.direction == .ingress ? (i, "-s") : (o, "-d")
                    let tail = match(r) + " -j RETURN"
                    var lines: [String] = []
                    switch r.remote {
                    case .cidr(.v4(let p)):
                        lines.append(p.length == 0 ? "-A \(chain)\(tail)" : "-A \(chain) \(side) \(p)\(tail)")
                    case .cidr(.v6):
                        break
                    case .group(let rg):
                        for a in members[rg] ?? [] { lines.append("-A \(chain) \(side) \(a)/32\(tail)") }
                    }
                    if r.direction == .ingress { lines.forEach(add) } else { egress += lines }
                }
            }
            add("-A \(i) -j sg-fallback")

            add("-A \(o) -s 0.0.0.0/32 -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67 -j RETURN")
            add("-A \(o) -j \(s)")
            add("-A \(o) -p udp -m udp --sport 68 --dport 67 -j RETURN")
            add("-A \(o) -p udp -m udp --sport 67 --dport 68 -j DROP")
            add("-A \(o) -m state --state RELATED,ESTABLISHED -j RETURN")
            add("-A \(o) -m state --state INVALID -j DROP")
            egress.forEach(add)
            add("-A \(o) -j sg-fallback")

            for case .v4(let a) in inst.ips {
                add("-A \(s) -s \(a)/32" + (inst.mac.map { " -m mac --mac-source \($0)" } ?? "") + " -j RETURN")
            }
            add("-A \(s) -j DROP")
        }
        add("-A sg-chain -j ACCEPT")
        return (head + body + "COMMIT\n", rules)
    }

    /// The protocol part of a classic rule (" -p tcp -m tcp --dport 22").
    private static func match(_ r: Rule) -> String {
        switch r.proto {
        case .any: return ""
        case .number(let n):
            var s = " -p \(r.proto)"
            if r.proto.hasPorts, let p = r.ports {
                s += " -m \(r.proto) --dport " + (p.lowerBound == p.upperBound ? "\(p.lowerBound)" : "\(p.lowerBound):\(p.upperBound)")
            } else if n == 1, let t = r.icmpType {
                s += " -m icmp --icmp-type \(t)" + (r.icmpCode.map { "/\($0)" } ?? "")
            }
            return s
        }
    }
}
