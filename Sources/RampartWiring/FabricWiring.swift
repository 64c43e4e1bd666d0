// How a fabric namespace joins routed hypervisors (docs/topology.md, "A cloud on one
// machine"): shared by `CloudTopology` and the netns compute driver, which adds a fabric route
// for every instance it creates so that instances on different hypervisors reach each other.

/// The fabric's wiring: one veth per hypervisor (the fabric's end named after the hypervisor,
/// the hypervisor's end its uplink), link addresses on both ends, and a host route in the
/// fabric for every address that lives behind a hypervisor.
public enum FabricWiring {
    /// The fabric's end of every uplink: 169.254.255.1/32 (scope link) and fe80::ff:1/64, the
    /// next hop of every hypervisor's default routes.
    public static let fabricIPv4 = "169.254.255.1"
    public static let fabricIPv6 = "fe80::ff:1"
    /// The hypervisor's end of its uplink: 169.254.255.2/32 (scope link) and fe80::ff:2/64, the
    /// next hop of the fabric's routes to that hypervisor's addresses.
    public static let uplinkIPv4 = "169.254.255.2"
    public static let uplinkIPv6 = "fe80::ff:2"

    /// The fabric's host route (an `ip -batch` line, `verb` "add" or "replace") to `address`
    /// behind the hypervisor whose fabric device is `device`.
    public static func route(_ verb: String = "add", to address: String, device: String) -> String {
        RoutedWiring.isIPv6(address) ? "route \(verb) \(address)/128 via \(uplinkIPv6) dev \(device)"
                                     : "route \(verb) \(address)/32 via \(uplinkIPv4) dev \(device) onlink"
    }
}
