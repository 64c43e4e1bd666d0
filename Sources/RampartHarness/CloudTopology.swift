import Foundation
import RampartWiring

// Several routed hypervisors joined by a fabric, all in network namespaces: a small cloud on
// one machine. See docs/topology.md for the picture. Each hypervisor is a `HypervisorTopology`
// (same wiring, same readiness check); this adds the fabric namespace, one veth per hypervisor
// (its uplink), and routes so that an instance on one hypervisor reaches one on another.

/// A cloud in network namespaces: hypervisors (each wired like `HypervisorTopology`, with its
/// own namespace where its firewall or `rampartd` runs) and a fabric namespace that routes
/// between them. Probes go between any two nodes of any hypervisors.
public final class CloudTopology: ProbeRunning, @unchecked Sendable {
    /// The fabric's end of every uplink: 169.254.255.1/32 (scope link) and fe80::ff:1/64, the
    /// next hop of every hypervisor's default routes.
    public static let fabricIPv4 = FabricWiring.fabricIPv4
    public static let fabricIPv6 = FabricWiring.fabricIPv6
    /// The hypervisor's end of its uplink: 169.254.255.2/32 (scope link) and fe80::ff:2/64, the
    /// next hop of the fabric's routes to that hypervisor's addresses.
    public static let uplinkIPv4 = FabricWiring.uplinkIPv4
    public static let uplinkIPv6 = FabricWiring.uplinkIPv6

    public let spec: CloudTopologySpec
    /// The hypervisors, in spec order. Probe through the cloud, not through one of these: a
    /// hypervisor alone knows only its own nodes.
    public let hypervisors: [HypervisorTopology]
    /// The fabric's namespace (its device towards each hypervisor is named after it).
    public let fabric: TestNamespace
    /// Rounds of readiness checks beyond the first, of the hypervisors and of the fabric.
    public private(set) var setupRetries = 0

    let server: EchoServer
    let book: AddressBook
    let nodesByName: [String: TopologyNode]
    let hypervisorIndex: [String: Int]
    private let destroyed = OnceFlag()

    /// Builds the cloud and returns once every hypervisor reaches every other over the fabric;
    /// on failure everything made so far is removed.
    public init(_ spec: CloudTopologySpec) throws {
        try spec.validate()
        self.spec = spec
        let server = try EchoServer()
        let book = AddressBook()
        var hypervisors: [HypervisorTopology] = []
        for (i, hv) in spec.hypervisors.enumerated() {
            let topology = TopologySpec(instances: hv.instances, hypervisorAddresses: spec.addresses(ofHypervisorAt: i))
            hypervisors.append(try HypervisorTopology(topology, hypervisorName: hv.name, server: server, book: book))
        }
        let fabric = try TestNamespace(prefix: "fabric")
        try Self.wire(fabric, to: hypervisors, spec: spec)

        self.server = server
        self.book = book
        self.hypervisors = hypervisors
        self.fabric = fabric
        let nodes = hypervisors.flatMap(\.nodes)
        nodesByName = Dictionary(uniqueKeysWithValues: nodes.map { ($0.name, $0) })
        hypervisorIndex = Dictionary(uniqueKeysWithValues: hypervisors.enumerated().flatMap { i, hv in hv.nodes.map { ($0.name, i) } })
        // Across the fabric: every hypervisor to every other one's own addresses (which also
        // warms the fabric's and the uplinks' neighbour entries; see HypervisorTopology).
        let probes = hypervisors.flatMap { a in
            hypervisors.filter { $0 !== a }.flatMap { b in readinessProbes(from: a.hypervisorNode, to: b.hypervisorNode) }
        }
        let fabricRetries = try retryUntilAnswered(probes, what: "cloud fabric", diagnostics: diagnostics)
        setupRetries = hypervisors.map(\.setupRetries).reduce(fabricRetries, +)
    }

    public convenience init(hypervisors: [CloudHypervisorSpec]) throws {
        try self.init(CloudTopologySpec(hypervisors: hypervisors))
    }

    /// The fabric's half: per hypervisor a veth (fabric end named after the hypervisor, other
    /// end its uplink), the link addresses on both ends, the hypervisor's default routes to the
    /// fabric, and the fabric's host route to each of the hypervisor's addresses (its own and
    /// its instances').
    private static func wire(_ fabric: TestNamespace, to hypervisors: [HypervisorTopology], spec: CloudTopologySpec) throws {
        try fabric.run(["sysctl", "-q", "-w"] + RoutedNamespace.quietSysctls + RoutedNamespace.routerSysctls, check: true)
        var links: [String] = []
        var routes: [String] = []
        for (hvSpec, hv) in zip(spec.hypervisors, hypervisors) {
            let down = hvSpec.name
            links += [
                "link add \(down) type veth peer name \(hvSpec.uplink) netns \(hv.hypervisor.name)",
                "link set \(down) up",
                "addr add \(fabricIPv4)/32 dev \(down) scope link",
                "addr add \(fabricIPv6)/64 dev \(down) nodad",
            ]
            for node in [hv.hypervisorNode] + hv.instances {
                routes += node.addresses.map { FabricWiring.route(to: $0, device: down) }
            }
        }
        try runCommand(["ip", "-n", fabric.name, "-batch", "-"], input: links.joined(separator: "\n") + "\n", check: true)
        for (hvSpec, hv) in zip(spec.hypervisors, hypervisors) {
            let up = hvSpec.uplink
            let source = hv.hypervisorNode
            let batch = [
                "link set \(up) up",
                "addr add \(uplinkIPv4)/32 dev \(up) scope link",
                "addr add \(uplinkIPv6)/64 dev \(up) nodad",
                "route add default via \(fabricIPv4) dev \(up) onlink" + (source.ipv4.map { " src \($0)" } ?? ""),
                "route add default via \(fabricIPv6) dev \(up)" + (source.ipv6.map { " src \($0)" } ?? ""),
            ]
            try runCommand(["ip", "-n", hv.hypervisor.name, "-batch", "-"], input: batch.joined(separator: "\n") + "\n", check: true)
            // The uplink answers ARP for its own address only (the hypervisor's "default" has
            // proxy ARP on, for its taps).
            try hv.hypervisor.run(["sysctl", "-q", "-w", "net/ipv4/conf/\(up)/proxy_arp=0"], check: true)
        }
        try runCommand(["ip", "-n", fabric.name, "-batch", "-"], input: routes.joined(separator: "\n") + "\n", check: true)
    }

    deinit { destroy() }

    /// Closes every listener and removes every namespace of the cloud (idempotent).
    public func destroy() {
        guard destroyed.claim() else { return }
        server.stop()
        for hv in hypervisors { hv.destroy() }
        removeNamespace(fabric.name)
    }

    /// Every namespace name of the cloud: the fabric's, then each hypervisor's (its own first).
    public var namespaceNames: [String] {
        [fabric.name] + hypervisors.flatMap(\.namespaceNames)
    }

    /// The hypervisor called `name` (as in its spec); traps on an unknown name.
    public func hypervisor(_ name: String) -> HypervisorTopology {
        guard let i = hypervisorIndex[name], hypervisors[i].hypervisorNode.name == name else {
            preconditionFailure("no hypervisor \(name) in the cloud")
        }
        return hypervisors[i]
    }

    /// The namespace of hypervisor `name`: run its firewall or daemon there
    /// (`ip netns exec <namespace> rampartd ...`).
    public func namespace(ofHypervisor name: String) -> String {
        hypervisor(name).hypervisor.name
    }

    /// The device of hypervisor `name` towards the fabric (its uplink).
    public func uplink(ofHypervisor name: String) -> String {
        spec.hypervisors[hypervisorIndex[name]!].uplink
    }

    /// The hypervisor a node (instance or hypervisor) belongs to, or nil for an unknown name.
    public func hypervisor(of node: String) -> HypervisorTopology? {
        hypervisorIndex[node].map { hypervisors[$0] }
    }

    /// Every instance, hypervisor by hypervisor.
    public var instances: [TopologyNode] { hypervisors.flatMap(\.instances) }

    /// Every node: each hypervisor followed by its instances.
    public var nodes: [TopologyNode] { hypervisors.flatMap(\.nodes) }

    /// The node called `name` (an instance, or a hypervisor by its name), or nil; `cloud[name]`
    /// traps instead.
    public func node(_ name: String) -> TopologyNode? { nodesByName[name] }

    /// The node that owns `address`, on whichever hypervisor.
    public func owner(of address: String) -> TopologyNode? {
        book.owner(of: address).flatMap { nodesByName[$0] }
    }

    public func probe(_ probes: [Probe]) throws -> [ProbeResult] {
        try ProbeRunner.run(probes, node: { self.nodesByName[$0] }, owner: owner(of:), server: server)
    }

    /// Every hypervisor's diagnostics, then the fabric's links, routes and neighbours.
    public func diagnostics() -> String {
        (hypervisors.map { $0.diagnostics() } + ["== fabric [\(fabric.name)]", RoutedNamespace.links(fabric.name)])
            .joined(separator: "\n")
    }
}
