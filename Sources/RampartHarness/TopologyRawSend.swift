import Foundation
import RampartSystem
#if canImport(Glibc)
import Glibc
#endif

// Sending crafted frames and packets from a node, around its own stack or through it.

extension HypervisorTopology {
    /// The MAC of `device` in `node`'s namespace.
    public func deviceMAC(_ node: String, device: String) throws -> String {
        let out = try self[node].run(["ip", "-j", "link", "show", "dev", device], check: true).stdout
        guard let links = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]],
              let address = links.first?["address"] as? String else {
            throw HarnessError("cannot read the MAC of \(device) in \(node)")
        }
        return address
    }

    /// The first link-local IPv6 address of `device` in `node` (the hypervisor's: that of the
    /// node's tap, or of the bridge).
    public func linkLocal(_ node: String, device: String? = nil) throws -> String {
        let n = self[node]
        let dev = device ?? n.interface
        let out = try n.run(["ip", "-6", "-j", "addr", "show", "dev", dev, "scope", "link"], check: true).stdout
        guard let links = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]],
              let infos = links.first?["addr_info"] as? [[String: Any]],
              let local = infos.compactMap({ $0["local"] as? String }).first(where: { $0.hasPrefix("fe80:") && $0 != "fe80::1" })
                ?? infos.compactMap({ $0["local"] as? String }).first else {
            throw HarnessError("no link-local address on \(dev) in \(node)")
        }
        return local
    }

    /// The hypervisor's device that `node` is attached to at the IP level: its tap or uplink
    /// (routed), the bridge (bridged).
    public func hypervisorDevice(facing node: String) -> String {
        hypervisorNode.interface == TopologySpec.bridge ? TopologySpec.bridge : self[node].hostInterface!
    }

    /// The destination MAC of a frame from `node` to `address`: the hypervisor's device facing
    /// the node (routed: every packet goes to the gateway), or the owner's (bridged: on-link).
    public func nextHopMAC(from node: String, to address: String) throws -> String {
        let bridged = hypervisorNode.interface == TopologySpec.bridge
        guard bridged else { return try deviceMAC(Self.hypervisorName, device: self[node].hostInterface!) }
        guard let owner = owner(of: address) else { throw HarnessError("no node owns \(address)") }
        if owner.role == .hypervisor { return try deviceMAC(Self.hypervisorName, device: TopologySpec.bridge) }
        return try owner.mac()
    }

    /// Sends Ethernet frames as they are from `node`'s interface (AF_PACKET: the node's own
    /// stack and firewall see nothing of them).
    public func sendFrames(from node: String, _ frames: [[UInt8]]) throws {
        let n = self[node]
        let (fd, index) = try NetworkNamespace.named(n.namespace.name).perform {
            (socket(AF_PACKET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0), Int32(if_nametoindex(n.interface)))
        }
        guard fd >= 0 else { throw HarnessError("AF_PACKET socket in \(node): \(errnoText(errno))") }
        defer { Glibc.close(fd) }
        guard index > 0 else { throw HarnessError("no \(n.interface) in \(node)") }
        let address = linkAddress(ifindex: index, mac: [0, 0, 0, 0, 0, 0])
        for f in frames {
            let sent = address.withUnsafeBytes { a in
                f.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, a.baseAddress!.assumingMemoryBound(to: sockaddr.self), 20) }
            }
            guard sent == f.count else { throw HarnessError("sending a frame from \(node): \(errnoText(errno))") }
        }
    }

    /// Sends IP packets from `node` addressed to their own destination, each wrapped in a
    /// frame from the node's MAC (or `sourceMAC`) to the next hop's.
    public func sendPackets(from node: String, to address: String, sourceMAC: String? = nil, _ packets: [[UInt8]]) throws {
        let src = try sourceMAC ?? self[node].mac()
        let dst = try nextHopMAC(from: node, to: address)
        try sendFrames(from: node, packets.map { try RawPacket.frame(dst: dst, src: src, $0) })
    }

    /// Sends a whole IPv4 packet through `node`'s own stack (a raw socket with IP_HDRINCL): it
    /// takes the node's output hook and routing, e.g. the hypervisor's own traffic. False when
    /// the output hook dropped it at once (EPERM).
    @discardableResult
    public func sendIPv4ThroughStack(from node: String, _ packet: [UInt8]) throws -> Bool {
        let n = self[node]
        let fd = try namespacedSocket(n.namespace.name, "raw socket in \(node)") {
            socket(AF_INET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_RAW))
        }
        defer { Glibc.close(fd) }
        let dst = RawPacket.addressText(packet[16..<20])
        let sa = try SocketAddress(dst, port: 0)
        let sent = sa.withPointer { p, l in packet.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, p, l) } }
        if sent < 0 && errno == EPERM { return false }
        guard sent == packet.count else { throw HarnessError("raw send from \(node) to \(dst): \(errnoText(errno))") }
        return true
    }
}
