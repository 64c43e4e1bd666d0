import Foundation
import RampartWiring

/// What every routed fixture (`HypervisorTopology`, `CloudTopology`) sets in its namespaces,
/// and how it dumps a router for a failing test's message.
enum RoutedNamespace {
    /// For every namespace, before any device exists: RoutedWiring's (shared with the netns
    /// compute driver).
    static let quietSysctls = RoutedWiring.quietSysctls

    /// For a namespace that routes between others (a hypervisor, the fabric).
    static let routerSysctls = RoutedWiring.routerSysctls

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
