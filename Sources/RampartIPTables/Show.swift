import Foundation
import RampartCore

/// What `rampart show` prints for the iptables backend: instance → groups → rules with
/// counters, read from Rampart's chains. The dispatch chain `rp-from` names each instance's
/// interface and egress chain, the instance chains name their groups, the group chains hold the
/// rules (one per family).
public struct IPTEnforcementView: Codable, Sendable {
    public struct InstanceView: Codable, Sendable {
        public var instance: String
        public var interface: String
        public var ingress_groups: [String]
        public var egress_groups: [String]
    }
    public var instances: [InstanceView]
    public var rules: [IPTablesBackend.CountedRule]
    public var ipsets: [String: [String]]

    /// The instances `rp-from` dispatches to, with their groups, from a read-back.
    static func instances(_ st: IPTState) -> [InstanceView] {
        func groups(_ chain: String, _ prefix: String) -> [String] {
            var out: [String] = []
            for r in (st.v4.chains[chain] ?? []) + (st.v6.chains[chain] ?? []) where r.hasPrefix("-j " + prefix) {
                let g = String(r.dropFirst(3 + prefix.count))
                if !out.contains(g) { out.append(g) }
            }
            return out
        }
        var instances: [InstanceView] = []
        for line in st.v4.chains[IPTNames.fromInstances] ?? st.v6.chains[IPTNames.fromInstances] ?? [] {
            let w = line.split(separator: " ").map(String.init)
            guard let j = w.firstIndex(of: "-j"), j + 1 < w.count, w[j + 1].hasPrefix("rp-o-") else { continue }
            let iface = w[1] == "physdev" ? w[3] : w[1]
            let id = String(w[j + 1].dropFirst(5))
            if instances.contains(where: { $0.instance == id }) { continue }
            instances.append(.init(instance: id, interface: iface, ingress_groups: groups("rp-i-" + id, "rp-gi-"),
                                   egress_groups: groups("rp-o-" + id, "rp-go-")))
        }
        return instances.sorted { $0.instance < $1.instance }
    }

    /// Text for people: each instance, its groups, their rules with counters.
    public var text: String {
        var out = ""
        for i in instances {
            out += "instance \(i.instance) (\(i.interface))\n"
            for (dir, gs, p) in [("ingress", i.ingress_groups, "rp-gi-"), ("egress", i.egress_groups, "rp-go-")] {
                for g in gs {
                    out += "  \(dir) \(g)\n"
                    for r in rules where r.chain == p + g {
                        out += "    \(r.family) \(r.rule)   packets \(r.packets) bytes \(r.bytes)\n"
                    }
                }
            }
        }
        return out
    }
}

extension IPTState {
    /// The local instances' addresses the source checks accept: the members of `rp-src4` and
    /// `rp-src6` (`address,interface`, routed) and the `-s` of `rp-spoof`'s rules (bridged).
    var instanceAddresses: Set<IPAddress> {
        var out = Set<IPAddress>()
        for name in IPTNames.fixedSets {
            for m in sets[name]?.members ?? [] {
                if let a = m.split(separator: ",").first.flatMap({ IPAddress(String($0)) }) { out.insert(a) }
            }
        }
        for f in [IPFamily.ipv4, .ipv6] {
            for rule in self[f].chains[IPTNames.spoof] ?? [] {
                let w = rule.split(separator: " ")
                guard let i = w.firstIndex(of: "-s"), i + 1 < w.count else { continue }
                let a = w[i + 1].split(separator: "/").first.map(String.init) ?? ""
                if let ip = IPAddress(a) { out.insert(ip) }
            }
        }
        return out
    }
}
