import Foundation
import RampartWiring

/// Where the netns compute driver puts instances: the namespace of each hypervisor (by the
/// store's host name) and, optionally, the fabric namespace that routes between them
/// (rampart-api's `--compute-host HOST=NETNS`, `--compute-fabric NETNS`).
public struct NetnsComputeConfiguration: Sendable, Equatable {
    /// Host → the named network namespace that is that hypervisor (its firewall and rampartd
    /// run there). The namespace must route (forwarding on): the driver changes no
    /// namespace-wide setting of a namespace it did not create.
    public var hosts: [String: String]
    /// The fabric's namespace, whose device towards each hypervisor is named as its host
    /// (`CloudTopology`'s wiring); nil: instances reach only instances on their own hypervisor.
    public var fabric: String?

    public init(hosts: [String: String], fabric: String? = nil) {
        self.hosts = hosts
        self.fabric = fabric
    }

    /// Parses `HOST=NETNS` mappings; a host given twice, or an empty side, is an error.
    public init(mappings: [String], fabric: String?) throws(WiringError) {
        var hosts: [String: String] = [:]
        for m in mappings {
            let parts = m.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw WiringError("--compute-host \(m): expected HOST=NETNS")
            }
            guard hosts[parts[0]] == nil else { throw WiringError("--compute-host: host \(parts[0]) is given twice") }
            hosts[parts[0]] = parts[1]
        }
        self.init(hosts: hosts, fabric: fabric)
    }

    /// Refuses a configuration the driver could not use safely: no host; a namespace that does
    /// not exist, or that is the machine's own (or this process's), or that looks like an
    /// instance's; a fabric without a device named after a host.
    public func validate() throws(WiringError) {
        guard !hosts.isEmpty else { throw WiringError("--compute netns needs at least one --compute-host HOST=NETNS") }
        let own = Set(["/proc/1/ns/net", "/proc/self/ns/net"].compactMap(Self.identity))
        var named: [(what: String, name: String)] = hosts.sorted { $0.key < $1.key }.map { ("host \($0.key)", $0.value) }
        if let fabric { named.append(("the fabric", fabric)) }
        for (what, name) in named {
            guard !name.contains("/"), name != ".", name != "..", let id = Self.identity("/run/netns/\(name)") else {
                throw WiringError("\(what): network namespace \"\(name)\" does not exist (ip netns list)")
            }
            guard !own.contains(id) else { throw WiringError("\(what): \"\(name)\" is the machine's own network namespace; the driver never works there") }
            guard !NetnsCompute.isInstanceNamespace(name) else { throw WiringError("\(what): \"\(name)\" is named like an instance's namespace") }
        }
        if let fabric {
            for host in hosts.keys.sorted() {
                do { try runChecked(["ip", "-n", fabric, "link", "show", "dev", host]) } catch {
                    throw WiringError("the fabric \(fabric) has no device named \(host) (its device towards each hypervisor is named as the host)")
                }
            }
        }
    }

    /// The device and inode of a namespace file, which identify the namespace.
    static func identity(_ path: String) -> FileIdentity? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return FileIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    struct FileIdentity: Hashable {
        var device: UInt64
        var inode: UInt64
    }
}
