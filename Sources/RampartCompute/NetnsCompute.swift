import Foundation
import RampartCore
import RampartEC2
import RampartStore
import RampartSystem
import RampartWiring

/// rampart-api's `--compute netns`: each instance becomes a network namespace named as its id
/// (`i-…`), joined to its hypervisor's namespace by a veth whose hypervisor end carries the
/// instance's interface name, wired as the harness wires a routed instance (`RoutedWiring`):
/// `eth0` with its MAC and address, default route via the gateway; on the hypervisor the
/// gateway addresses and a host route; in the fabric, if any, a route to its address. For demos
/// and tests: a real deployment's compute creates its own devices.
///
/// It only ever creates and deletes namespaces named like an instance id, only changes devices
/// it created (the tap in the hypervisor's namespace and its per-device sysctls) and routes to
/// its instances' addresses in the fabric, and never runs anything in the machine's own
/// namespace: every `ip` names its namespace. Calls are serialised.
public final class NetnsCompute: InstanceCompute, @unchecked Sendable {
    public let configuration: NetnsComputeConfiguration
    private let lock = NSLock()
    /// Which instance holds each address it wired, so that terminating an instance does not take
    /// the fabric route of a newer one that was given the freed address.
    private var holders: [String: String] = [:]

    /// How long a new instance's link may take to come up (the kernel's link watcher).
    static let linkTimeout = 5.0

    /// Checks the configuration (`NetnsComputeConfiguration.validate`).
    public init(_ configuration: NetnsComputeConfiguration) throws(WiringError) {
        try configuration.validate()
        self.configuration = configuration
    }

    /// `i-` and 8 or 17 lowercase hex digits: the only namespaces this driver creates or deletes.
    public static func isInstanceNamespace(_ name: String) -> Bool {
        guard name.hasPrefix("i-") else { return false }
        let hex = name.dropFirst(2)
        return (hex.count == 8 || hex.count == 17) && hex.allSatisfy { $0.isHexDigit && !$0.isUppercase }
    }

    public func refusal(host: String) -> String? {
        configuration.hosts[host] == nil ? "no hypervisor namespace is mapped for it (--compute-host \(host)=NETNS)" : nil
    }

    public func launch(_ instances: [EC2Instance]) throws {
        try lock.withLock {
            for i in instances where i.state != .terminated {
                try create(i)
                if i.state == .stopped { try link(i.id, up: false) }
            }
        }
    }

    public func terminate(_ id: String, record: Instance?) throws {
        try lock.withLock {
            guard try Self.checked(id).exists else { return }
            let addresses = try self.addresses(of: id)
            // The tap first: a namespace outlives `ip netns del` while a socket in it is open
            // (a probe's listener), and so would the veth; deleting one end deletes both, with
            // the tap's host routes.
            if let record, let tap = record.interface, let hypervisor = configuration.hosts[record.host] {
                _ = try? runChecked(["ip", "-n", hypervisor, "link", "del", "dev", tap])
            }
            try runChecked(["ip", "netns", "del", id])
            try removeFabricRoutes(addresses, of: id)
        }
    }

    public func setRunning(_ id: String, _ running: Bool) throws {
        try lock.withLock {
            guard try Self.checked(id).exists else { throw WiringError("instance \(id) has no namespace") }
            try link(id, up: running)
        }
    }

    // MARK: steps

    /// Creates instance `i`'s namespace and wiring, unless its namespace exists; on failure
    /// removes what it made.
    private func create(_ i: EC2Instance) throws {
        let ns = i.id
        guard try !Self.checked(ns).exists else { return }
        guard let record = i.record, let tap = record.interface else { throw WiringError("instance \(ns) has no interface") }
        guard let hypervisor = configuration.hosts[record.host] else { throw WiringError(refusal(host: record.host)!) }
        let addresses = record.ips.map(\.description)
        try runChecked(["ip", "netns", "add", ns])
        do {
            // Before eth0 arrives: new devices copy the namespace's "default" settings.
            try runChecked(["sysctl", "-q", "-w"] + RoutedWiring.quietSysctls, in: .named(ns))
            try runIPBatch(in: hypervisor, RoutedWiring.hypervisorSide(tap: tap, instanceNamespace: ns, addresses: addresses))
            try runChecked(["sysctl", "-q", "-w"] + RoutedWiring.tapSysctls(tap), in: .named(hypervisor))
            try runIPBatch(in: ns, RoutedWiring.instanceSide(mac: record.mac?.description, addresses: addresses))
            if let fabric = configuration.fabric {
                try runIPBatch(in: fabric, addresses.map { FabricWiring.route("replace", to: $0, device: record.host) })
            }
            for a in addresses { holders[a] = ns }
            try waitUntilUp([(ns, RoutedWiring.instanceDevice), (hypervisor, tap)])
        } catch {
            _ = try? runChecked(["ip", "netns", "del", ns])
            try? removeFabricRoutes(addresses, of: ns)
            throw error
        }
    }

    /// Stop: `eth0` down (the tap loses its carrier, as a stopped VM's does). Start: `eth0` up
    /// and its default routes back (a link going down loses its IPv4 routes).
    private func link(_ ns: String, up: Bool) throws {
        let device = RoutedWiring.instanceDevice
        guard up else { return try runIPBatch(in: ns, ["link set \(device) down"]) }
        try runIPBatch(in: ns, ["link set \(device) up"] + RoutedWiring.instanceRoutes(addresses: try addresses(of: ns)))
        // The tap stayed up: eth0 up means the carrier is back on both ends.
        try waitUntilUp([(ns, device)])
    }

    /// The addresses on the instance's `eth0`.
    private func addresses(of ns: String) throws -> [String] {
        let out = try runChecked(["ip", "-n", ns, "-j", "addr", "show", "dev", RoutedWiring.instanceDevice]).stdout
        let links = (try? JSONSerialization.jsonObject(with: Data(out.utf8))) as? [[String: Any]] ?? []
        return links.flatMap { ($0["addr_info"] as? [[String: Any]]) ?? [] }
            .filter { ($0["scope"] as? String) == "global" }.compactMap { $0["local"] as? String }
    }

    /// Deletes the fabric's routes to `addresses` that `ns` holds (not those a newer instance
    /// was given since).
    private func removeFabricRoutes(_ addresses: [String], of ns: String) throws {
        let mine = addresses.filter { holders[$0] == nil || holders[$0] == ns }
        for a in mine where holders[a] == ns { holders[a] = nil }
        guard let fabric = configuration.fabric, !mine.isEmpty else { return }
        for a in mine {
            // A route already gone is fine (a failed launch may not have added it).
            _ = try? runChecked(["ip", "-n", fabric, "route", "del", a + (a.contains(":") ? "/128" : "/32")])
        }
    }

    /// Returns once every (namespace, device) is operationally up: a veth just raised drops
    /// what is sent before the kernel's link watcher has attached its queue, and the watcher
    /// sets the operational state in the same step, under the lock a link dump also takes.
    private func waitUntilUp(_ devices: [(namespace: String, device: String)]) throws {
        let deadline = Date().addingTimeInterval(Self.linkTimeout)
        func up(_ namespace: String, _ device: String) -> Bool {
            let out = (try? runChecked(["ip", "-n", namespace, "-j", "link", "show", "dev", device]).stdout) ?? ""
            let links = (try? JSONSerialization.jsonObject(with: Data(out.utf8))) as? [[String: Any]] ?? []
            return links.first?["operstate"] as? String == "UP"
        }
        while let down = devices.first(where: { !up($0.namespace, $0.device) }) {
            guard Date() < deadline else {
                throw WiringError("\(down.device) in \(down.namespace) did not come up within \(Self.linkTimeout) s")
            }
            usleep(20_000)
        }
    }

    /// Refuses a name this driver must not touch; says whether the namespace exists.
    private static func checked(_ name: String) throws -> (name: String, exists: Bool) {
        guard isInstanceNamespace(name) else { throw WiringError("\"\(name)\" is not an instance id: not a namespace of this driver") }
        return (name, FileManager.default.fileExists(atPath: "/run/netns/\(name)"))
    }
}
