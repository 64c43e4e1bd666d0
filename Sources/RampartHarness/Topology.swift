import Foundation

// A routed hypervisor in network namespaces, for checking a firewall with real packets.
// See docs/topology.md for the picture. Nothing here touches the machine's own namespace:
// every `ip` and `sysctl` runs inside a namespace the topology made, and every namespace is
// removed by `destroy()` (also called on deinit).

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

/// One namespace of a topology: the hypervisor, an instance or an outside host.
public final class TopologyNode: @unchecked Sendable, CustomStringConvertible {
    public enum Role: String, Sendable { case hypervisor, instance, outside }

    /// The name probes use ("hv" for the hypervisor).
    public let name: String
    public let role: Role
    public let namespace: TestNamespace
    /// The device inside the node that carries its addresses: "eth0" (the hypervisor: "lo").
    public let interface: String
    /// The node's device on the hypervisor (tap or uplink); nil for the hypervisor itself.
    public let hostInterface: String?

    private let lock = NSLock()
    private var currentAddresses: [String]
    private let book: AddressBook
    private let hypervisorNamespace: String
    private let hypervisorSource: (v4: String?, v6: String?)

    init(name: String, role: Role, namespace: TestNamespace, interface: String, hostInterface: String?,
         addresses: [String], book: AddressBook, hypervisorNamespace: String, hypervisorSource: (String?, String?)) {
        self.name = name
        self.role = role
        self.namespace = namespace
        self.interface = interface
        self.hostInterface = hostInterface
        self.currentAddresses = addresses
        self.book = book
        self.hypervisorNamespace = hypervisorNamespace
        self.hypervisorSource = hypervisorSource
    }

    /// The node's addresses (those of its spec, then those added), canonical text.
    public var addresses: [String] {
        lock.lock(); defer { lock.unlock() }
        return currentAddresses
    }

    /// The first IPv4 address (the default source of its IPv4 traffic), if any.
    public var ipv4: String? { addresses.first { !isIPv6($0) } }
    /// The first IPv6 address (the default source of its IPv6 traffic), if any.
    public var ipv6: String? { addresses.first { isIPv6($0) } }

    /// Runs a command inside the node's namespace.
    @discardableResult
    public func run(_ arguments: [String], input: String? = nil, check: Bool = false) throws -> CommandResult {
        try namespace.run(arguments, input: input, check: check)
    }

    /// Adds an address to the node's interface (/32 or /128, no DAD), e.g. to send from an
    /// address that is not in its spec (spoofing) with any probe, ICMP included. Probes to
    /// the address then find their listener here. With `routeOnHypervisor` the hypervisor also
    /// routes the address to this node, so that replies to it come back (as for an address the
    /// instance legitimately owns); without it, traffic from it is one-way.
    public func addAddress(_ address: String, routeOnHypervisor: Bool = false) throws {
        guard let a = canonicalAddress(address) else { throw HarnessError("not an address: \(address)") }
        let v6 = isIPv6(a)
        var command = ["ip", "-n", namespace.name, v6 ? "-6" : "-4", "addr", "add", "\(a)/\(v6 ? 128 : 32)", "dev", interface]
        if v6 { command.append("nodad") }
        try runCommand(command, check: true)
        if routeOnHypervisor, let tap = hostInterface {
            var route = ["ip", "-n", hypervisorNamespace, v6 ? "-6" : "-4", "route", "add", "\(a)/\(v6 ? 128 : 32)", "dev", tap]
            if let src = v6 ? hypervisorSource.v6 : hypervisorSource.v4 { route += ["src", src] }
            try runCommand(route, check: true)
        }
        lock.lock()
        if !currentAddresses.contains(a) { currentAddresses.append(a) }
        lock.unlock()
        book.set(a, owner: name)
    }

    /// Removes an address added with `addAddress` (and its hypervisor route, if any).
    public func removeAddress(_ address: String) throws {
        guard let a = canonicalAddress(address) else { throw HarnessError("not an address: \(address)") }
        let v6 = isIPv6(a)
        try runCommand(["ip", "-n", namespace.name, v6 ? "-6" : "-4", "addr", "del", "\(a)/\(v6 ? 128 : 32)", "dev", interface], check: true)
        if let tap = hostInterface {
            _ = try runCommand(["ip", "-n", hypervisorNamespace, v6 ? "-6" : "-4", "route", "del", "\(a)/\(v6 ? 128 : 32)", "dev", tap])
        }
        lock.lock()
        currentAddresses.removeAll { $0 == a }
        lock.unlock()
        book.remove(a, owner: name)
    }

    /// The MAC of the node's interface, as the kernel reports it.
    public func mac() throws -> String {
        let out = try runCommand(["ip", "-n", namespace.name, "-j", "link", "show", "dev", interface], check: true).stdout
        guard let links = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]],
              let address = links.first?["address"] as? String else {
            throw HarnessError("cannot read the MAC of \(interface) in \(namespace.name)")
        }
        return address
    }

    /// Changes the MAC of the node's interface (e.g. to spoof another instance's MAC), and
    /// flushes the hypervisor's neighbour entries on its tap so replies follow the new MAC.
    public func setMAC(_ mac: String) throws {
        guard let tap = hostInterface else { throw HarnessError("setMAC: the hypervisor has no instance interface") }
        try runCommand(["ip", "-n", namespace.name, "link", "set", "dev", interface, "address", mac], check: true)
        try runCommand(["ip", "-n", hypervisorNamespace, "-4", "neigh", "flush", "dev", tap], check: true)
        try runCommand(["ip", "-n", hypervisorNamespace, "-6", "neigh", "flush", "dev", tap], check: true)
    }

    public var description: String {
        "\(role) \(name) [\(namespace.name)\(hostInterface.map { ", \($0) on hv" } ?? "")] \(addresses.joined(separator: " "))"
    }
}

/// Which node owns which address (canonical text).
final class AddressBook: @unchecked Sendable {
    private let lock = NSLock()
    private var owners: [String: String] = [:]

    func set(_ address: String, owner: String) {
        lock.lock(); defer { lock.unlock() }
        owners[address] = owner
    }

    func remove(_ address: String, owner: String) {
        lock.lock(); defer { lock.unlock() }
        if owners[address] == owner { owners[address] = nil }
    }

    func owner(of address: String) -> String? {
        lock.lock(); defer { lock.unlock() }
        return canonicalAddress(address).flatMap { owners[$0] }
    }
}

/// A routed hypervisor in network namespaces: the hypervisor `hv` (where the firewall is
/// programmed), instances on veth pairs (hypervisor end = the instance's interface, no bridge),
/// and outside hosts on uplinks, plus echo listeners and probes between them.
public final class HypervisorTopology: @unchecked Sendable {
    /// The gateway every node uses: on each hypervisor-side device, 169.254.0.1/32 (scope link)
    /// and fe80::1/64.
    public static let gatewayIPv4 = "169.254.0.1"
    public static let gatewayIPv6 = "fe80::1"
    /// The probe name of the hypervisor node.
    public static let hypervisorName = "hv"

    public let spec: TopologySpec
    /// The hypervisor's namespace: program the firewall here (`hypervisor.name`).
    public let hypervisor: TestNamespace
    /// The hypervisor as a node (name "hv", its addresses on "lo").
    public let hypervisorNode: TopologyNode
    public let instances: [TopologyNode]
    public let outsideHosts: [TopologyNode]

    private let nodesByName: [String: TopologyNode]
    private let book: AddressBook
    private let server: EchoServer
    private let lock = NSLock()
    private var destroyed = false
    private var sessions: [WeakSession] = []

    /// Builds the topology; on failure everything made so far is removed.
    public init(_ spec: TopologySpec) throws {
        try Self.validate(spec)
        self.spec = spec
        let book = AddressBook()
        self.book = book
        let hvAddresses = spec.hypervisorAddresses.map { canonicalAddress($0)! }
        let hvSource = (hvAddresses.first { !isIPv6($0) }, hvAddresses.first { isIPv6($0) })

        let hv = try TestNamespace(prefix: "hv")
        struct Plan { var name: String; var role: TopologyNode.Role; var tap: String; var addresses: [String]; var mac: String? }
        let plans = spec.instances.map { Plan(name: $0.name, role: .instance, tap: $0.interface,
                                               addresses: $0.addresses.map { canonicalAddress($0)! }, mac: $0.mac) }
            + spec.outside.enumerated().map { i, o in
                Plan(name: o.name, role: .outside, tap: o.interface ?? "up\(i)",
                     addresses: o.addresses.map { canonicalAddress($0)! }, mac: o.mac)
            }
        let namespaces = try plans.map { try TestNamespace(prefix: Self.namespacePrefix($0.name)) }

        // 1. Namespace-wide settings, before any device exists (new devices copy "default").
        let common = ["net/ipv6/conf/all/accept_dad=0", "net/ipv6/conf/default/accept_dad=0",
                      "net/ipv6/conf/all/accept_ra=0", "net/ipv6/conf/default/accept_ra=0",
                      "net/ipv4/conf/all/rp_filter=0", "net/ipv4/conf/default/rp_filter=0"]
        try hv.run(["sysctl", "-q", "-w"] + common + [
            "net/ipv4/ip_forward=1", "net/ipv6/conf/all/forwarding=1", "net/ipv6/conf/default/forwarding=1",
            "net/ipv4/conf/all/proxy_arp=1", "net/ipv4/conf/default/proxy_arp=1",
        ], check: true)
        for ns in namespaces { try ns.run(["sysctl", "-q", "-w"] + common, check: true) }

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
            hvBatch += [
                "link add \(plan.tap) type veth peer name eth0 netns \(ns.name)",
                "link set \(plan.tap) up",
                "addr add \(Self.gatewayIPv4)/32 dev \(plan.tap) scope link",
                "addr add \(Self.gatewayIPv6)/64 dev \(plan.tap) nodad",
            ]
            for a in plan.addresses {
                let v6 = isIPv6(a)
                var route = "route add \(a)/\(v6 ? 128 : 32) dev \(plan.tap)"
                if let src = v6 ? hvSource.1 : hvSource.0 { route += " src \(src)" }
                hvBatch.append(route)
            }
        }
        try runCommand(["ip", "-n", hv.name, "-batch", "-"], input: hvBatch.joined(separator: "\n") + "\n", check: true)
        // proxy_delay has no namespace default: set it (and the rest, to be sure) per device,
        // else proxy ARP answers wait up to 0.8 s.
        if !plans.isEmpty && !spec.bridged {
            try hv.run(["sysctl", "-q", "-w"] + plans.flatMap { p in [
                "net/ipv4/conf/\(p.tap)/proxy_arp=1", "net/ipv4/neigh/\(p.tap)/proxy_delay=0",
                "net/ipv4/conf/\(p.tap)/rp_filter=0", "net/ipv6/conf/\(p.tap)/accept_dad=0",
            ] }, check: true)
        }

        // 3. Each node: its MAC, its addresses (/32, /128), default routes to the gateway.
        for (plan, ns) in zip(plans, namespaces) {
            var batch = ["link set lo up"]
            if let mac = plan.mac { batch.append("link set eth0 address \(mac)") }
            batch.append("link set eth0 up")
            for a in plan.addresses {
                batch.append(isIPv6(a) ? "addr add \(a)/128 dev eth0 nodad" : "addr add \(a)/32 dev eth0")
            }
            let v4 = plan.addresses.first { !isIPv6($0) }, v6 = plan.addresses.first { isIPv6($0) }
            if spec.bridged {
                // Everything on-link: ARP/NDP for every destination, answered across the bridge.
                batch.append("route add default dev eth0" + (v4.map { " src \($0)" } ?? ""))
                batch.append("route add ::/0 dev eth0" + (v6.map { " src \($0)" } ?? ""))
            } else {
                batch.append("route add default via \(Self.gatewayIPv4) dev eth0 onlink" + (v4.map { " src \($0)" } ?? ""))
                batch.append("route add default via \(Self.gatewayIPv6) dev eth0" + (v6.map { " src \($0)" } ?? ""))
            }
            try runCommand(["ip", "-n", ns.name, "-batch", "-"], input: batch.joined(separator: "\n") + "\n", check: true)
        }

        let hvNode = TopologyNode(name: Self.hypervisorName, role: .hypervisor, namespace: hv, interface: hvDev,
                                  hostInterface: nil, addresses: hvAddresses, book: book,
                                  hypervisorNamespace: hv.name, hypervisorSource: hvSource)
        let nodes = zip(plans, namespaces).map { plan, ns in
            TopologyNode(name: plan.name, role: plan.role, namespace: ns, interface: "eth0", hostInterface: plan.tap,
                         addresses: plan.addresses, book: book, hypervisorNamespace: hv.name, hypervisorSource: hvSource)
        }
        for node in [hvNode] + nodes { for a in node.addresses { book.set(a, owner: node.name) } }
        self.server = try EchoServer()
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
    private func waitUntilReady(within limit: Double = 10) throws {
        var pending: [Probe] = []
        for node in instances + outsideHosts {
            for target in [hypervisorNode.ipv4, hypervisorNode.ipv6].compactMap({ $0 }) {
                if (isIPv6(target) ? node.ipv6 : node.ipv4) != nil {
                    pending.append(.udp(from: node.name, to: target, port: Self.readinessPort, timeout: 0.2))
                }
            }
        }
        let start = Date()
        var round = 0
        while !pending.isEmpty {
            if round > 0 {
                guard Date().timeIntervalSince(start) < limit else {
                    throw HarnessError("topology not ready after \(limit) s: \(pending)\n\(diagnostics())")
                }
                usleep(50_000)
            }
            let results = try probe(pending)
            pending = results.filter { !$0.answered }.map(\.probe)
            round += 1
        }
        setupRetries = round - 1
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
        for name in namespaceNames { _ = try? runCommand(["ip", "netns", "del", name]) }
    }

    /// Every namespace name of the topology (hypervisor first).
    public var namespaceNames: [String] {
        [hypervisor.name] + (instances + outsideHosts).map(\.namespace.name)
    }

    /// Every node: the hypervisor, the instances, the outside hosts.
    public var nodes: [TopologyNode] { [hypervisorNode] + instances + outsideHosts }

    /// The node called `name` ("hv" is the hypervisor); traps on an unknown name.
    public subscript(_ name: String) -> TopologyNode {
        guard let node = nodesByName[name] else { preconditionFailure("no node \(name) in the topology") }
        return node
    }

    /// The node called `name`, or nil.
    public func node(_ name: String) -> TopologyNode? { nodesByName[name] }

    /// The node that owns `address` (spec addresses and those added with `addAddress`).
    public func owner(of address: String) -> TopologyNode? {
        book.owner(of: address).flatMap { nodesByName[$0] }
    }

    /// A dump of every namespace (links, addresses, routes, neighbours, forwarding sysctls and
    /// the hypervisor's ruleset), for a failing test's message.
    public func diagnostics() -> String {
        var out: [String] = []
        for node in nodes {
            out.append("== \(node)")
            for args in [["-br", "link"], ["-br", "addr"], ["-4", "route"], ["-6", "route"], ["neigh"]] {
                let r = try? runCommand(["ip", "-n", node.namespace.name] + args)
                out.append("$ ip \(args.joined(separator: " "))\n" + (r.map { $0.stdout + $0.stderr } ?? "(failed)"))
            }
        }
        let sysctls = try? hypervisor.run(["sysctl", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"])
        out.append("== hv sysctl\n" + (sysctls?.stdout ?? ""))
        let rules = try? hypervisor.run(["nft", "list", "ruleset"])
        out.append("== hv nft list ruleset\n" + (rules?.stdout ?? ""))
        return out.joined(separator: "\n")
    }

    // MARK: Probes

    /// Runs probes concurrently (all at once, one poll loop): the batch takes about as long as
    /// its slowest probe, i.e. ≈ the timeout if any is denied. Results are in input order.
    /// Throws only for a broken set-up (unknown node, address owned by no node, a listener that
    /// cannot bind), never because a probe was denied.
    public func probe(_ probes: [Probe]) throws -> [ProbeResult] {
        let resolved = try probes.map { p -> ResolvedProbe in
            guard let from = nodesByName[p.from] else { throw HarnessError("probe \(p): no node \(p.from)") }
            var destination: String?
            if p.kind != .icmp {
                guard let owner = owner(of: p.to) else {
                    throw HarnessError("probe \(p): no node owns \(p.to), so there is nowhere to listen")
                }
                destination = owner.namespace.name
            }
            return ResolvedProbe(probe: p, sourceNamespace: from.namespace.name, destinationNamespace: destination)
        }
        return try ProbeRunner.run(resolved, server: server)
    }

    /// Runs one probe.
    public func probe(_ probe: Probe) throws -> ProbeResult {
        try self.probe([probe])[0]
    }

    /// TCP connect + echo from node `from` to `to`:`port`; true iff it got through.
    public func tcp(from: String, to: String, port: UInt16, source: String? = nil, timeout: Double = 1) throws -> Bool {
        try probe(.tcp(from: from, to: to, port: port, source: source, timeout: timeout)).passed
    }

    /// One UDP datagram from node `from` to `to`:`port`; true iff the listener received it.
    public func udp(from: String, to: String, port: UInt16, source: String? = nil, timeout: Double = 1) throws -> Bool {
        try probe(.udp(from: from, to: to, port: port, source: source, timeout: timeout)).passed
    }

    /// One ICMP echo from node `from` to `to`; true iff the reply came.
    public func ping(from: String, to: String, source: String? = nil, timeout: Double = 1) throws -> Bool {
        try probe(.icmp(from: from, to: to, source: source, timeout: timeout)).passed
    }

    /// Opens one TCP connection from node `from` to `to`:`port` (an echo listener is started
    /// there) and keeps it; throws if it cannot be established within `timeout`.
    public func openTCPSession(from: String, to: String, port: UInt16, source: String? = nil,
                               timeout: Double = 1) throws -> TCPSession {
        guard let node = nodesByName[from] else { throw HarnessError("TCP session: no node \(from)") }
        guard let owner = owner(of: to) else { throw HarnessError("TCP session: no node owns \(to)") }
        let session = try TCPSession(from: from, sourceNamespace: node.namespace.name, to: canonicalAddress(to) ?? to,
                                     destinationNamespace: owner.namespace.name, port: port, source: source,
                                     timeout: timeout, server: server)
        lock.lock()
        sessions.removeAll { $0.session == nil }
        sessions.append(WeakSession(session: session))
        lock.unlock()
        return session
    }

    // MARK: Validation and naming

    /// `rt-<name>-<pid>-<n>`: the node name reduced to [A-Za-z0-9_] and 12 characters.
    static func namespacePrefix(_ name: String) -> String {
        let cleaned = String(name.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") ? $0 : "_" }.prefix(12))
        return cleaned.isEmpty ? "n" : cleaned
    }

    static func validate(_ spec: TopologySpec) throws {
        var names: Set<String> = [hypervisorName]
        var devices: Set<String> = ["lo"]
        var addresses: Set<String> = []
        func address(_ a: String, of owner: String) throws {
            guard !a.contains("/"), let c = canonicalAddress(a) else {
                throw HarnessError("\(owner): \(a) is not a bare IPv4 or IPv6 address")
            }
            guard addresses.insert(c).inserted else { throw HarnessError("\(owner): address \(a) is used twice") }
        }
        func device(_ d: String, of owner: String) throws {
            let ok = (1...15).contains(d.utf8.count) && d != "." && d != ".."
                && !d.contains { $0 == "/" || $0 == ":" || $0.isWhitespace }
            guard ok else { throw HarnessError("\(owner): \"\(d)\" is not a Linux interface name (1–15 characters, no / : or space)") }
            guard devices.insert(d).inserted else { throw HarnessError("\(owner): interface \(d) is used twice") }
        }
        for a in spec.hypervisorAddresses { try address(a, of: hypervisorName) }
        let all = spec.instances.map { ($0.name, $0.interface, $0.addresses) }
            + spec.outside.enumerated().map { i, o in (o.name, o.interface ?? "up\(i)", o.addresses) }
        for (name, tap, addrs) in all {
            guard !name.isEmpty, names.insert(name).inserted else {
                throw HarnessError("node name \"\(name)\" is empty, reserved or used twice")
            }
            try device(tap, of: name)
            for a in addrs { try address(a, of: name) }
        }
    }
}

private struct WeakSession {
    weak var session: TCPSession?
}
