import Foundation

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
