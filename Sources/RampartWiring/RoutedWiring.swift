// How a routed hypervisor joins an instance to itself, as `ip -batch` lines: the one
// description that the test harness (`HypervisorTopology`) and rampart-api's netns compute
// driver both follow, so a demo instance is wired exactly like a test instance.

/// The routed wiring of an instance (docs/topology.md): a veth pair whose hypervisor end is the
/// instance's interface (the tap), carrying the gateway addresses, with a host route per
/// instance address; the instance end is `eth0` with the instance's MAC and host addresses and
/// default routes via the gateway. No bridge: every packet crosses the hypervisor's forward hook.
public enum RoutedWiring {
    /// The gateway every instance uses: on each tap, 169.254.0.1/32 (scope link) and fe80::1/64.
    public static let gatewayIPv4 = "169.254.0.1"
    public static let gatewayIPv6 = "fe80::1"
    /// The instance's device inside its namespace.
    public static let instanceDevice = "eth0"

    /// For every namespace, before any device exists (new devices copy "default"): no DAD
    /// waits, no router advertisements, and no reverse-path filter (spoofing tests must reach
    /// the firewall, not the RPF check).
    public static let quietSysctls = [
        "net/ipv6/conf/all/accept_dad=0", "net/ipv6/conf/default/accept_dad=0",
        "net/ipv6/conf/all/accept_ra=0", "net/ipv6/conf/default/accept_ra=0",
        "net/ipv4/conf/all/rp_filter=0", "net/ipv4/conf/default/rp_filter=0",
    ]

    /// For a namespace that routes between others (a hypervisor, the fabric).
    public static let routerSysctls = [
        "net/ipv4/ip_forward=1", "net/ipv6/conf/all/forwarding=1", "net/ipv6/conf/default/forwarding=1",
    ]

    /// The hypervisor's side of one instance, run in the hypervisor's namespace: the veth (its
    /// other end moved to `instanceNamespace` as `eth0`), the gateway addresses on the tap and a
    /// host route per instance address, from `source` (the hypervisor's own address of that
    /// family, if it has one) so that host → instance traffic leaves with it.
    public static func hypervisorSide(tap: String, instanceNamespace: String, addresses: [String],
                                      source: (v4: String?, v6: String?) = (nil, nil)) -> [String] {
        var lines = [
            "link add \(tap) type veth peer name \(instanceDevice) netns \(instanceNamespace)",
            "link set \(tap) up",
            "addr add \(gatewayIPv4)/32 dev \(tap) scope link",
            "addr add \(gatewayIPv6)/64 dev \(tap) nodad",
        ]
        for a in addresses {
            let v6 = isIPv6(a)
            var route = "route add \(a)/\(v6 ? 128 : 32) dev \(tap)"
            if let src = v6 ? source.v6 : source.v4 { route += " src \(src)" }
            lines.append(route)
        }
        return lines
    }

    /// The per-device sysctls of a tap (`sysctl -w` arguments, in the hypervisor's namespace):
    /// proxy ARP without its default delay of up to 0.8 s (`proxy_delay` has no namespace
    /// default), no reverse-path filter, no DAD.
    public static func tapSysctls(_ tap: String) -> [String] {
        ["net/ipv4/conf/\(tap)/proxy_arp=1", "net/ipv4/neigh/\(tap)/proxy_delay=0",
         "net/ipv4/conf/\(tap)/rp_filter=0", "net/ipv6/conf/\(tap)/accept_dad=0"]
    }

    /// The instance's side, run in its namespace: `instanceDevice(mac:addresses:)`, then
    /// `instanceRoutes`.
    public static func instanceSide(mac: String?, addresses: [String]) -> [String] {
        instanceDevice(mac: mac, addresses: addresses) + instanceRoutes(addresses: addresses)
    }

    /// `eth0` with `mac` (nil: the kernel's), up, with the instance's addresses as /32 and /128
    /// (no DAD); the loopback up.
    public static func instanceDevice(mac: String?, addresses: [String]) -> [String] {
        var lines = ["link set lo up"]
        if let mac { lines.append("link set \(instanceDevice) address \(mac)") }
        lines.append("link set \(instanceDevice) up")
        for a in addresses {
            lines.append(isIPv6(a) ? "addr add \(a)/128 dev \(instanceDevice) nodad" : "addr add \(a)/32 dev \(instanceDevice)")
        }
        return lines
    }

    /// The instance's default routes via the gateway, one per family it has an address of,
    /// from its first address of that family. `replace`, so that they can be restored after
    /// the link was down (taking a link down removes its IPv4 routes).
    public static func instanceRoutes(addresses: [String]) -> [String] {
        let v4 = addresses.first { !isIPv6($0) }, v6 = addresses.first { isIPv6($0) }
        return [
            "route replace default via \(gatewayIPv4) dev \(instanceDevice) onlink" + (v4.map { " src \($0)" } ?? ""),
            "route replace default via \(gatewayIPv6) dev \(instanceDevice)" + (v6.map { " src \($0)" } ?? ""),
        ]
    }

    /// True for IPv6 text (the wiring only ever sees bare, canonical addresses).
    static func isIPv6(_ address: String) -> Bool { address.contains(":") }
}
