import Foundation

/// What every routed fixture (`HypervisorTopology`, `CloudTopology`) sets in its namespaces,
/// and how it dumps a router for a failing test's message.
enum RoutedNamespace {
    /// For every namespace, before any device exists (new devices copy "default"): no DAD
    /// waits, no router advertisements, and no reverse-path filter (spoofing tests must reach
    /// the firewall, not the RPF check).
    static let quietSysctls = [
        "net/ipv6/conf/all/accept_dad=0", "net/ipv6/conf/default/accept_dad=0",
        "net/ipv6/conf/all/accept_ra=0", "net/ipv6/conf/default/accept_ra=0",
        "net/ipv4/conf/all/rp_filter=0", "net/ipv4/conf/default/rp_filter=0",
    ]

    /// For a namespace that routes between others (a hypervisor, the fabric).
    static let routerSysctls = [
        "net/ipv4/ip_forward=1", "net/ipv6/conf/all/forwarding=1", "net/ipv6/conf/default/forwarding=1",
    ]

    /// The forwarding sysctls and the nftables ruleset of a router namespace.
    static func diagnostics(_ namespace: TestNamespace, label: String) -> String {
        let sysctls = try? namespace.run(["sysctl", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"])
        let rules = try? namespace.run(["nft", "list", "ruleset"])
        return "== \(label) sysctl\n" + (sysctls?.stdout ?? "")
            + "\n== \(label) nft list ruleset\n" + (rules?.stdout ?? "")
    }

    /// Links, addresses, routes and neighbours of a namespace.
    static func links(_ namespace: String) -> String {
        var out: [String] = []
        for args in [["-br", "link"], ["-br", "addr"], ["-4", "route"], ["-6", "route"], ["neigh"]] {
            let r = try? runCommand(["ip", "-n", namespace] + args)
            out.append("$ ip \(args.joined(separator: " "))\n" + (r.map { $0.stdout + $0.stderr } ?? "(failed)"))
        }
        return out.joined(separator: "\n")
    }
}
