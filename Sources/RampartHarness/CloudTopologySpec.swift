import Foundation

// What a cloud is made of: hypervisors, each with its instances, joined by one fabric.

/// One hypervisor of a cloud: its name, its instances (wired as in `HypervisorTopology`), its
/// own addresses and the name of its device towards the fabric.
public struct CloudHypervisorSpec: Sendable, Hashable {
    /// "hv1": the probe name of its node, its namespace's prefix (`rt-hv1-...`), and the name of
    /// the fabric's device towards it (so 1–15 characters, no `/`, `:` or space).
    public var name: String
    public var instances: [InstanceSpec]
    /// Its own addresses (on its loopback); nil means 10.255.0.<n> and fd00:ff::<n> for the
    /// n-th hypervisor (from 1).
    public var addresses: [String]?
    /// Its device towards the fabric: what a Rampart document running here treats as the
    /// uplink (it names no instance), so the firewall leaves it alone.
    public var uplink: String

    public static let defaultUplink = "fabric0"

    public init(name: String, instances: [InstanceSpec], addresses: [String]? = nil, uplink: String = defaultUplink) {
        self.name = name
        self.instances = instances
        self.addresses = addresses
        self.uplink = uplink
    }
}

/// The whole cloud: hypervisors, in order.
public struct CloudTopologySpec: Sendable, Hashable {
    public var hypervisors: [CloudHypervisorSpec]

    public init(hypervisors: [CloudHypervisorSpec]) {
        self.hypervisors = hypervisors
    }

    /// `hypervisors` hypervisors "hv1", "hv2", ... with `instancesEach` instances each:
    /// on hv<h>, instance "vm<h>-<k>" (k from 1) on tap "tap<h>-<k>", with 10.0.<h>.<10+k>,
    /// fd00:0:0:<h>::<10+k> (hex) and MAC 02:00:00:00:<h>:<k> (hex), so hv<h>'s instances lie in
    /// 10.0.<h>.0/24 and fd00:0:0:<h>::/64.
    public static func grid(hypervisors: Int, instancesEach: Int) -> CloudTopologySpec {
        CloudTopologySpec(hypervisors: (1...max(1, hypervisors)).map { h in
            CloudHypervisorSpec(name: "hv\(h)", instances: (1...max(1, instancesEach)).map { k in
                InstanceSpec(name: "vm\(h)-\(k)", interface: "tap\(h)-\(k)",
                             addresses: ["10.0.\(h).\(10 + k)", "fd00:0:0:\(String(h, radix: 16))::\(String(10 + k, radix: 16))"],
                             mac: String(format: "02:00:00:00:%02x:%02x", h, k))
            })
        })
    }

    /// The addresses of the n-th hypervisor (from 0): its spec's, or the default.
    func addresses(ofHypervisorAt index: Int) -> [String] {
        hypervisors[index].addresses ?? ["10.255.0.\(index + 1)", "fd00:ff::\(String(index + 1, radix: 16))"]
    }

    /// What no single hypervisor's `TopologySpec` can check: names and addresses unique across
    /// the cloud, hypervisor and uplink names usable as interface names.
    func validate() throws {
        guard (1...250).contains(hypervisors.count) else { throw HarnessError("a cloud has 1–250 hypervisors, not \(hypervisors.count)") }
        var names: Set<String> = []
        var seen: Set<String> = []
        for (i, hv) in hypervisors.enumerated() {
            try checkInterfaceName(hv.name, of: "hypervisor \(hv.name)")
            guard hv.name != "lo" else { throw HarnessError("a hypervisor cannot be called lo (the fabric's loopback)") }
            try checkInterfaceName(hv.uplink, of: "uplink of \(hv.name)")
            if hv.instances.contains(where: { $0.interface == hv.uplink }) {
                throw HarnessError("\(hv.name): uplink \(hv.uplink) is also an instance's interface")
            }
            for name in [hv.name] + hv.instances.map(\.name) where !names.insert(name).inserted {
                throw HarnessError("node name \"\(name)\" is used twice in the cloud")
            }
            for a in addresses(ofHypervisorAt: i) + hv.instances.flatMap(\.addresses) {
                if let c = canonicalAddress(a), !seen.insert(c).inserted {
                    throw HarnessError("address \(a) is used twice in the cloud")
                }
            }
        }
    }
}
