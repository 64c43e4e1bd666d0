import Foundation

// What a topology is made of: instances, outside hosts, the hypervisor's addresses.

/// An instance on the hypervisor: its own namespace, joined to the hypervisor by a veth pair
/// whose hypervisor end is `interface` (what a Rampart document calls the instance's interface).
public struct InstanceSpec: Sendable, Hashable {
    public var name: String
    /// The hypervisor-side device (1–15 characters, e.g. "tapweb1").
    public var interface: String
    /// IPv4 and/or IPv6 addresses, without prefix length (each is added as /32 or /128).
    public var addresses: [String]
    /// The instance-side MAC ("02:00:00:00:01:11"); nil lets the kernel pick one.
    public var mac: String?

    public init(name: String, interface: String, addresses: [String], mac: String? = nil) {
        self.name = name
        self.interface = interface
        self.addresses = addresses
        self.mac = mac
    }
}

/// A host beyond the hypervisor's uplink: an instance on another hypervisor, or "the internet".
/// Wired exactly like an instance (own veth to the hypervisor), but its hypervisor-side device is
/// an uplink that no Rampart document names, so the firewall leaves it alone.
public struct OutsideHostSpec: Sendable, Hashable {
    public var name: String
    public var addresses: [String]
    /// The hypervisor-side device; nil means "up<index>" (up0, up1, ...).
    public var interface: String?
    public var mac: String?

    public init(name: String, addresses: [String], interface: String? = nil, mac: String? = nil) {
        self.name = name
        self.addresses = addresses
        self.interface = interface
        self.mac = mac
    }
}

/// The whole topology.
public struct TopologySpec: Sendable, Hashable {
    public var instances: [InstanceSpec]
    public var outside: [OutsideHostSpec]
    /// The hypervisor's own addresses (on its loopback), reachable from every node.
    public var hypervisorAddresses: [String]
    /// Bridged instead of routed: every node's hypervisor-side device is a port of one bridge
    /// (`br0`, carrying the hypervisor's addresses), every node reaches every other on-link
    /// (default routes `dev eth0`), so traffic between nodes is bridged and br_netfilter hands
    /// it to iptables (`physdev`). Default: routed.
    public var bridged: Bool = false

    /// The bridge of a bridged topology.
    public static let bridge = "br0"

    public static let defaultHypervisorAddresses = ["10.255.0.1", "fd00:ff::1"]

    public init(instances: [InstanceSpec], outside: [OutsideHostSpec] = [],
                hypervisorAddresses: [String] = TopologySpec.defaultHypervisorAddresses, bridged: Bool = false) {
        self.instances = instances
        self.outside = outside
        self.hypervisorAddresses = hypervisorAddresses
        self.bridged = bridged
    }

    /// The instances of `docs/examples/two-tier.json` on hv1, and its "bastion" (on hv2) as an
    /// outside host on uplink "up0".
    public static let twoTier = TopologySpec(
        instances: [
            InstanceSpec(name: "web-1", interface: "tapweb1", addresses: ["10.0.1.11", "fd00::11"], mac: "02:00:00:00:01:11"),
            InstanceSpec(name: "web-2", interface: "tapweb2", addresses: ["10.0.1.12"]),
            InstanceSpec(name: "db-1", interface: "tapdb1", addresses: ["10.0.2.21"]),
        ],
        outside: [OutsideHostSpec(name: "bastion", addresses: ["10.0.9.5", "fd00::95"], interface: "up0")]
    )
}
