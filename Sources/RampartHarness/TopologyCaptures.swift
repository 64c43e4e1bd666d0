import Foundation
import RampartSystem
#if canImport(Glibc)
import Glibc
#endif

// Opening captures on a node: its link, its stack, a UDP socket.

extension HypervisorTopology {
    /// Every frame arriving on `node`'s interface (or `device` in it) from now on: what the
    /// hypervisor forwarded (or bridged) to it, before the node's own stack (with `outgoing`,
    /// also what the node sends).
    public func captureLink(_ node: String, device: String? = nil, outgoing: Bool = false) throws -> PacketCapture {
        let n = self[node]
        let dev = device ?? n.interface
        let (fd, index) = try NetworkNamespace.named(n.namespace.name).perform {
            (socket(AF_PACKET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue),
                    Int32(ethPAll.bigEndian)), Int32(if_nametoindex(dev)))
        }
        guard fd >= 0 else { throw HarnessError("AF_PACKET socket in \(node): \(errnoText(errno))") }
        guard index > 0 else { Glibc.close(fd); throw HarnessError("no \(dev) in \(node)") }
        let address = linkAddress(ifindex: index, protocol: ethPAll)
        let rc = address.withUnsafeBytes { bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 20) }
        guard rc == 0 else { Glibc.close(fd); throw HarnessError("bind AF_PACKET on \(dev) in \(node): \(errnoText(errno))") }
        return PacketCapture(kind: .link, fd: fd, label: "frames on \(dev) in \(node)", outgoing: outgoing)
    }

    /// Every IPv4 or IPv6 packet of `ipProtocol` (6 TCP, 17 UDP, 58 ICMPv6, ...) delivered to
    /// `node`'s own stack from now on, i.e. accepted by its input hook (a raw socket).
    public func captureDelivered(_ node: String, ipv6: Bool, protocol ipProtocol: Int32) throws -> PacketCapture {
        let n = self[node]
        let fd = try namespacedSocket(n.namespace.name, "raw socket in \(node)") {
            socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), ipProtocol)
        }
        return PacketCapture(kind: .delivered, fd: fd, label: "IPv\(ipv6 ? 6 : 4) protocol \(ipProtocol) delivered to \(node)")
    }

    /// A UDP socket bound to `address`:`port` in `node` (SO_REUSEADDR, SO_BROADCAST): what it
    /// receives, and a way to send from it.
    public func udpSocket(_ node: String, address: String = "0.0.0.0", port: UInt16) throws -> PacketCapture {
        let n = self[node]
        let sa = try SocketAddress(address, port: port)
        let fd = try namespacedSocket(n.namespace.name, "UDP socket in \(node)") {
            socket(sa.family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        }
        var one: Int32 = 1
        for option in [SO_REUSEADDR, SO_BROADCAST] {
            _ = setsockopt(fd, SOL_SOCKET, option, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        if sa.family == AF_INET6 { _ = setsockopt(fd, 41, 26 /* IPV6_V6ONLY */, &one, socklen_t(MemoryLayout<Int32>.size)) }
        let rc = sa.withPointer { bind(fd, $0, $1) }
        guard rc == 0 else {
            let e = errno
            Glibc.close(fd)
            throw HarnessError("bind UDP \(address):\(port) in \(node): \(errnoText(e))")
        }
        return PacketCapture(kind: .udp, fd: fd, label: "UDP \(address):\(port) in \(node)")
    }
}
