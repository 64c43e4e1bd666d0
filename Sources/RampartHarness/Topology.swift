import Foundation
import RampartWiring

// A routed hypervisor in network namespaces, for checking a firewall with real packets.
// See docs/topology.md for the picture. Nothing here touches the machine's own namespace:
// every `ip` and `sysctl` runs inside a namespace the topology made, and every namespace is
// removed by `destroy()` (also called on deinit).

/// A routed hypervisor in network namespaces: the hypervisor `hv` (where the firewall is
/// programmed), instances on veth pairs (hypervisor end = the instance's interface, no bridge),
/// and outside hosts on uplinks, plus echo listeners and probes between them.
public final class HypervisorTopology: ProbeRunning, @unchecked Sendable {
    /// The gateway every node uses: on each hypervisor-side device, 169.254.0.1/32 (scope link)
    /// and fe80::1/64.
    public static let gatewayIPv4 = RoutedWiring.gatewayIPv4
    public static let gatewayIPv6 = RoutedWiring.gatewayIPv6
    /// The probe name of the hypervisor node.
    public static let hypervisorName = "hv"

    public let spec: TopologySpec
    /// The hypervisor's namespace: program the firewall here (`hypervisor.name`).
    public let hypervisor: TestNamespace
    /// The hypervisor as a node (name "hv", its addresses on "lo").
    public let hypervisorNode: TopologyNode
    public let instances: [TopologyNode]
    public let outsideHosts: [TopologyNode]

    let nodesByName: [String: TopologyNode]
    let book: AddressBook
    let server: EchoServer
    let lock = NSLock()
    var destroyed = false
    var sessions: [WeakSession] = []

    /// Builds the topology; on failure everything made so far is removed.
    public convenience init(_ spec: TopologySpec) throws {
        try self.init(spec, hypervisorName: Self.hypervisorName, server: EchoServer(), book: AddressBook())
    }

    /// One hypervisor of a larger fixture (`CloudTopology`): the hypervisor node is called
    /// `hypervisorName` (its namespace `rt-<hypervisorName>-...`), and listeners and address
    /// owners are shared with the other hypervisors, so one probe can cross them.
    init(_ spec: TopologySpec, hypervisorName: String, server: EchoServer, book: AddressBook) throws {
        try Self.validate(spec, hypervisorName: hypervisorName)
        self.spec = spec
        self.book = book
        let hvAddresses = spec.hypervisorAddresses.map { canonicalAddress($0)! }
        let hvSource = (hvAddresses.first { !isIPv6($0) }, hvAddresses.first { isIPv6($0) })

        let hv = try TestNamespace(prefix: Self.namespacePrefix(hypervisorName))
        struct Plan { var name: String; var role: TopologyNode.Role; var tap: String; var addresses: [String]; var mac: String? }
        let plans = spec.instances.map { Plan(name: $0.name, role: .instance, tap: $0.interface,
                                               addresses: $0.addresses.map { canonicalAddress($0)! }, mac: $0.mac) }
            + spec.outside.enumerated().map { i, o in
                Plan(name: o.name, role: .outside, tap: o.interface ?? "up\(i)",
                     addresses: o.addresses.map { canonicalAddress($0)! }, mac: o.mac)
            }
        let namespaces = try plans.map { try TestNamespace(prefix: Self.namespacePrefix($0.name)) }

        // 1. Namespace-wide settings, before any device exists (new devices copy "default").
        try hv.run(["sysctl", "-q", "-w"] + RoutedNamespace.quietSysctls + RoutedNamespace.routerSysctls + [
            "net/ipv4/conf/all/proxy_arp=1", "net/ipv4/conf/default/proxy_arp=1",
        ], check: true)
        for ns in namespaces { try ns.run(["sysctl", "-q", "-w"] + RoutedNamespace.quietSysctls, check: true) }

        // 2. The hypervisor: its addresses on lo; per node a veth, the gateway addresses on the
        //    hypervisor end, and a host route per node address.
        //    Bridged: its addresses on br0, every veth a port of br0, host routes via br0.
        let br = TopologySpec.bridge
        var hvBatch = ["link set lo up"]
        if spec.bridged {
            // br_netfilter hands bridged IP traffic to iptables (built in here, or a module).
            _ = try? runCommand(["modprobe", "br_netfilter"])
            try hv.run(["sysctl", "-q", "-w", "net/bridge/bridge-nf-call-iptables=1", "net/bridge/bridge-nf-call-ip6tables=1"], check: true)
            hvBatch += ["link add \(br) type bridge", "link set \(br) up"]
        }
        let hvDev = spec.bridged ? br : "lo"
        for a in hvAddresses { hvBatch.append(isIPv6(a) ? "addr add \(a)/128 dev \(hvDev) nodad" : "addr add \(a)/32 dev \(hvDev)") }
        for (plan, ns) in zip(plans, namespaces) where spec.bridged {
            hvBatch += ["link add \(plan.tap) type veth peer name eth0 netns \(ns.name)", "link set \(plan.tap) master \(br)", "link set \(plan.tap) up"]
            for a in plan.addresses {
                let v6 = isIPv6(a)
                var route = "route add \(a)/\(v6 ? 128 : 32) dev \(br)"
                if let src = v6 ? hvSource.1 : hvSource.0 { route += " src \(src)" }
                hvBatch.append(route)
            }
        }
        for (plan, ns) in zip(plans, namespaces) where !spec.bridged {
            hvBatch += RoutedWiring.hypervisorSide(tap: plan.tap, instanceNamespace: ns.name, addresses: plan.addresses, source: hvSource)
        }
        try runCommand(["ip", "-n", hv.name, "-batch", "-"], input: hvBatch.joined(separator: "\n") + "\n", check: true)
        // proxy_delay has no namespace default: set it (and the rest, to be sure) per device,
        // else proxy ARP answers wait up to 0.8 s.
        if !plans.isEmpty && !spec.bridged {
            try hv.run(["sysctl", "-q", "-w"] + plans.flatMap { RoutedWiring.tapSysctls($0.tap) }, check: true)
        }

        // 3. Each node: its MAC, its addresses (/32, /128), default routes to the gateway.
        for (plan, ns) in zip(plans, namespaces) {
            var batch: [String]
            if spec.bridged {
                // Everything on-link: ARP/NDP for every destination, answered across the bridge.
                let v4 = plan.addresses.first { !isIPv6($0) }, v6 = plan.addresses.first { isIPv6($0) }
                batch = RoutedWiring.instanceDevice(mac: plan.mac, addresses: plan.addresses)
                batch.append("route add default dev eth0" + (v4.map { " src \($0)" } ?? ""))
                batch.append("route add ::/0 dev eth0" + (v6.map { " src \($0)" } ?? ""))
            } else {
                batch = RoutedWiring.instanceSide(mac: plan.mac, addresses: plan.addresses)
            }
            try runCommand(["ip", "-n", ns.name, "-batch", "-"], input: batch.joined(separator: "\n") + "\n", check: true)
        }

        let hvNode = TopologyNode(name: hypervisorName, role: .hypervisor, namespace: hv, interface: hvDev,
                                  hostInterface: nil, addresses: hvAddresses, book: book,
                                  hypervisorNamespace: hv.name, hypervisorSource: hvSource)
        let nodes = zip(plans, namespaces).map { plan, ns in
            TopologyNode(name: plan.name, role: plan.role, namespace: ns, interface: "eth0", hostInterface: plan.tap,
                         addresses: plan.addresses, book: book, hypervisorNamespace: hv.name, hypervisorSource: hvSource)
        }
        for node in [hvNode] + nodes { for a in node.addresses { book.set(a, owner: node.name) } }
        self.server = server
        self.hypervisor = hv
        self.hypervisorNode = hvNode
        self.instances = nodes.filter { $0.role == .instance }
        self.outsideHosts = nodes.filter { $0.role == .outside }
        self.nodesByName = Dictionary(uniqueKeysWithValues: ([hvNode] + nodes).map { ($0.name, $0) })
        try waitUntilReady()
    }

    /// Rounds of the readiness check that were needed beyond the first (0 on an idle machine).
    public private(set) var setupRetries = 0

    /// The UDP port on the hypervisor's own addresses used for the readiness check.
    public static let readinessPort: UInt16 = 9

    /// Returns once every node reaches the hypervisor's own address and gets the answer back,
    /// in each family both have. A freshly raised veth drops what is sent before the kernel's
    /// link watcher has attached its queue (asynchronous, and slow while other namespaces are
    /// being torn down: it needs the RTNL lock), and a lost first ARP/NDP packet is only
    /// retried after 1 s, which would make a passing 1 s probe fail. This also leaves the
    /// neighbour entries of the gateway and of every node warm.
    private func waitUntilReady() throws {
        let probes = (instances + outsideHosts).flatMap { readinessProbes(from: $0, to: hypervisorNode) }
        setupRetries = try retryUntilAnswered(probes, what: "topology", diagnostics: diagnostics)
    }

    public convenience init(instances: [InstanceSpec], outside: [OutsideHostSpec] = [],
                            hypervisorAddresses: [String] = TopologySpec.defaultHypervisorAddresses) throws {
        try self.init(TopologySpec(instances: instances, outside: outside, hypervisorAddresses: hypervisorAddresses))
    }

    deinit { destroy() }

    /// Closes every listener and session, and removes every namespace of the topology
    /// (idempotent). The machine's own namespace was never touched.
    public func destroy() {
        lock.lock()
        let first = !destroyed
        destroyed = true
        let open = sessions.compactMap(\.session)
        sessions.removeAll()
        lock.unlock()
        guard first else { return }
        server.stop()
        for s in open { s.close() }
        for name in namespaceNames { removeNamespace(name) }
    }

    /// Every namespace name of the topology (hypervisor first).
    public var namespaceNames: [String] {
        [hypervisor.name] + (instances + outsideHosts).map(\.namespace.name)
    }

    /// Every node: the hypervisor, the instances, the outside hosts.
    public var nodes: [TopologyNode] { [hypervisorNode] + instances + outsideHosts }

    /// The node called `name` ("hv" is the hypervisor), or nil; `topology[name]` traps instead.
    public func node(_ name: String) -> TopologyNode? { nodesByName[name] }

    /// The node that owns `address` (spec addresses and those added with `addAddress`).
    public func owner(of address: String) -> TopologyNode? {
        book.owner(of: address).flatMap { nodesByName[$0] }
    }

    /// A dump of every namespace (links, addresses, routes, neighbours, forwarding sysctls and
    /// the hypervisor's ruleset), for a failing test's message.
    public func diagnostics() -> String {
        var out: [String] = []
        for node in nodes { out += ["== \(node)", RoutedNamespace.links(node.namespace.name)] }
        out.append(RoutedNamespace.diagnostics(hypervisor, label: hypervisorNode.name))
        return out.joined(separator: "\n")
    }
}

struct WeakSession {
    weak var session: TCPSession?
}
