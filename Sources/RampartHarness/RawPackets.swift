import Foundation
import RampartNetlink
#if canImport(Glibc)
import Glibc
#endif

// Crafted packets for attack tests: frames built byte by byte (Ethernet, ARP, IPv4, IPv6, UDP,
// TCP, ICMPv6 with correct checksums) and sent from a node with an AF_PACKET socket, so that
// nothing about them (source address, source MAC, hop limit, TCP flags, sequence numbers) is
// up to the sender's kernel; and captures that tell whether such a packet arrived: on a node's
// link (AF_PACKET, before any firewall of that node: "did the hypervisor forward it here?"), or
// delivered to a node's own stack (raw IP or UDP sockets, after its input hook: "did the
// hypervisor accept it?"). Only the C library: nothing to install on a fresh machine.
// Sockets are made with the thread briefly inside the node's namespace, like the probes.

/// Builders for crafted packets. Addresses are text ("10.0.1.11", "fd00::11",
/// "02:00:00:00:01:11"); every builder returns the bytes on the wire.
public enum RawPacket {
    public static let etherIPv4: UInt16 = 0x0800
    public static let etherIPv6: UInt16 = 0x86DD
    public static let etherARP: UInt16 = 0x0806

    /// TCP flag bits.
    public static let fin: UInt8 = 0x01, syn: UInt8 = 0x02, rst: UInt8 = 0x04, psh: UInt8 = 0x08, ack: UInt8 = 0x10

    /// A unique marker to put in a payload and look for at the receiving end (12 bytes).
    public static func token() -> [UInt8] {
        Array(String(format: "RMPT%08x", UInt32.random(in: 0...UInt32.max)).utf8)
    }

    public static func mac(_ text: String) throws -> [UInt8] {
        let parts = text.split(separator: ":")
        let bytes = parts.compactMap { UInt8($0, radix: 16) }
        guard parts.count == 6, bytes.count == 6 else { throw HarnessError("not a MAC address: \(text)") }
        return bytes
    }

    public static func macText(_ bytes: ArraySlice<UInt8>) -> String {
        bytes.map { String(format: "%02x", $0) }.joined(separator: ":")
    }

    /// The 4 or 16 bytes of an address.
    public static func addressBytes(_ text: String) throws -> [UInt8] {
        var a4 = in_addr()
        if inet_pton(AF_INET, text, &a4) == 1 { return withUnsafeBytes(of: &a4) { Array($0) } }
        var a6 = in6_addr()
        if inet_pton(AF_INET6, text, &a6) == 1 { return withUnsafeBytes(of: &a6) { Array($0) } }
        throw HarnessError("not an IPv4 or IPv6 address: \(text)")
    }

    public static func addressText(_ bytes: ArraySlice<UInt8>) -> String {
        var buffer = [CChar](repeating: 0, count: 64)
        let family = bytes.count == 4 ? AF_INET : AF_INET6
        Array(bytes).withUnsafeBytes { _ = inet_ntop(family, $0.baseAddress, &buffer, socklen_t(buffer.count)) }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// The Internet checksum (RFC 1071) of `bytes`, starting from `sum`.
    static func checksum(_ bytes: [UInt8], sum initial: UInt32 = 0) -> UInt16 {
        var sum = initial
        var i = 0
        while i + 1 < bytes.count { sum &+= UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1]); i += 2 }
        if i < bytes.count { sum &+= UInt32(bytes[i]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xffff) &+ (sum >> 16) }
        return ~UInt16(sum)
    }

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
    static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)] }

    /// An Ethernet frame (padded to 60 bytes).
    public static func ethernet(dst: String, src: String, type: UInt16, _ payload: [UInt8]) throws -> [UInt8] {
        var f = try mac(dst) + mac(src) + be16(type) + payload
        if f.count < 60 { f += [UInt8](repeating: 0, count: 60 - f.count) }
        return f
    }

    /// An Ethernet frame carrying an IP packet (the EtherType from its version).
    public static func frame(dst: String, src: String, _ ipPacket: [UInt8]) throws -> [UInt8] {
        try ethernet(dst: dst, src: src, type: ipPacket.first.map { $0 >> 4 == 6 } == true ? etherIPv6 : etherIPv4, ipPacket)
    }

    /// An ARP packet for IPv4 over Ethernet (op 1 request, 2 reply).
    public static func arp(op: UInt16, senderMAC: String, senderIP: String, targetMAC: String, targetIP: String) throws -> [UInt8] {
        be16(1) + be16(0x0800) + [6, 4] + be16(op)
            + (try mac(senderMAC)) + (try addressBytes(senderIP)) + (try mac(targetMAC)) + (try addressBytes(targetIP))
    }

    /// An IPv4 or IPv6 packet around `payload` (DF set for IPv4; `ttl` is the hop limit for IPv6).
    public static func ip(src: String, dst: String, proto: UInt8, ttl: UInt8 = 64, _ payload: [UInt8]) throws -> [UInt8] {
        let s = try addressBytes(src), d = try addressBytes(dst)
        guard s.count == d.count else { throw HarnessError("\(src) and \(dst) are of different families") }
        if s.count == 4 {
            var h: [UInt8] = [0x45, 0] + be16(UInt16(20 + payload.count)) + be16(0) + [0x40, 0] + [ttl, proto] + [0, 0] + s + d
            let c = checksum(h)
            h[10] = UInt8(c >> 8); h[11] = UInt8(c & 0xff)
            return h + payload
        }
        return [0x60, 0, 0, 0] + be16(UInt16(payload.count)) + [proto, ttl] + s + d + payload
    }

    /// The transport checksum over the pseudo-header and `segment` (its checksum field zero).
    static func transportChecksum(src: String, dst: String, proto: UInt8, _ segment: [UInt8]) throws -> UInt16 {
        let s = try addressBytes(src), d = try addressBytes(dst)
        let pseudo = s.count == 4
            ? s + d + [0, proto] + be16(UInt16(segment.count))
            : s + d + be32(UInt32(segment.count)) + [0, 0, 0, proto]
        let c = checksum(pseudo + segment)
        return c == 0 && proto == 17 ? 0xffff : c
    }

    static func withChecksum(_ segment: [UInt8], at offset: Int, src: String, dst: String, proto: UInt8) throws -> [UInt8] {
        var s = segment
        let c = try transportChecksum(src: src, dst: dst, proto: proto, s)
        s[offset] = UInt8(c >> 8); s[offset + 1] = UInt8(c & 0xff)
        return s
    }

    /// A whole IP packet carrying one UDP datagram.
    public static func udp(src: String, dst: String, sport: UInt16, dport: UInt16, ttl: UInt8 = 64, _ payload: [UInt8]) throws -> [UInt8] {
        let seg = be16(sport) + be16(dport) + be16(UInt16(8 + payload.count)) + [0, 0] + payload
        return try ip(src: src, dst: dst, proto: 17, ttl: ttl, withChecksum(seg, at: 6, src: src, dst: dst, proto: 17))
    }

    /// A whole IP packet carrying one TCP segment (no options).
    public static func tcp(src: String, dst: String, sport: UInt16, dport: UInt16, seq: UInt32, ack: UInt32,
                           flags: UInt8, window: UInt16 = 502, ttl: UInt8 = 64, _ payload: [UInt8]) throws -> [UInt8] {
        let seg = be16(sport) + be16(dport) + be32(seq) + be32(ack) + [0x50, flags] + be16(window) + [0, 0, 0, 0] + payload
        return try ip(src: src, dst: dst, proto: 6, ttl: ttl, withChecksum(seg, at: 16, src: src, dst: dst, proto: 6))
    }

    /// A whole IPv6 packet carrying one ICMPv6 message (`body`: what follows type, code and checksum).
    public static func icmpv6(src: String, dst: String, type: UInt8, code: UInt8 = 0, hopLimit: UInt8 = 255, _ body: [UInt8]) throws -> [UInt8] {
        let msg = [type, code, 0, 0] + body
        return try ip(src: src, dst: dst, proto: 58, ttl: hopLimit, withChecksum(msg, at: 2, src: src, dst: dst, proto: 58))
    }

    /// An NDP option carrying `token` (type 253, "experimental": ignored by receivers), 16 bytes.
    public static func tokenOption(_ token: [UInt8]) -> [UInt8] {
        var o: [UInt8] = [253, 2] + token.prefix(14)
        while o.count < 16 { o.append(0) }
        return o
    }

    /// A link-layer address option (1 source, 2 target).
    public static func linkLayerOption(_ type: UInt8, _ mac: String) throws -> [UInt8] {
        [type, 1] + (try RawPacket.mac(mac))
    }

    /// A neighbour solicitation for `target` (source link-layer option unless from ::), marked with `token`.
    public static func neighbourSolicitation(src: String, dst: String, target: String, mac: String, hopLimit: UInt8 = 255,
                                             token: [UInt8]) throws -> [UInt8] {
        let sllao = src == "::" ? [] : try linkLayerOption(1, mac)
        return try icmpv6(src: src, dst: dst, type: 135, hopLimit: hopLimit, [0, 0, 0, 0] + addressBytes(target) + sllao + tokenOption(token))
    }

    /// An unsolicited (override) neighbour advertisement claiming `target` is at `mac`.
    public static func neighbourAdvertisement(src: String, dst: String, target: String, mac: String, hopLimit: UInt8 = 255,
                                              token: [UInt8]) throws -> [UInt8] {
        try icmpv6(src: src, dst: dst, type: 136, hopLimit: hopLimit,
                   [0x20, 0, 0, 0] + addressBytes(target) + linkLayerOption(2, mac) + tokenOption(token))
    }

    /// A router advertisement (default router, lifetime 1800 s) with a source link-layer option.
    public static func routerAdvertisement(src: String, dst: String, mac: String, hopLimit: UInt8 = 255, token: [UInt8]) throws -> [UInt8] {
        try icmpv6(src: src, dst: dst, type: 134, hopLimit: hopLimit,
                   [64, 0] + be16(1800) + be32(0) + be32(0) + linkLayerOption(1, mac) + tokenOption(token))
    }

    /// The solicited-node multicast address of `address` (ff02::1:ffXX:XXXX).
    public static func solicitedNode(_ address: String) throws -> String {
        let b = try addressBytes(address)
        return addressText(ArraySlice([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff] + b[13...15]))
    }

    /// The Ethernet multicast MAC of an IPv6 multicast address (33:33 + its last 4 bytes).
    public static func multicastMAC(_ address: String) throws -> String {
        let b = try addressBytes(address)
        return macText(ArraySlice([0x33, 0x33] + b[12...15]))
    }

    /// True if `needle` occurs in `haystack`.
    public static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, haystack.count >= needle.count else { return needle.isEmpty }
        let first = needle[0]
        var i = 0
        while i <= haystack.count - needle.count {
            if haystack[i] == first && haystack[i..<(i + needle.count)].elementsEqual(needle) { return true }
            i += 1
        }
        return false
    }

    /// A TCP segment seen on a link (Ethernet frame, IPv4 or IPv6 without extension headers).
    public struct TCPSegment: Sendable {
        public var src: String, dst: String, sport: UInt16, dport: UInt16
        public var seq: UInt32, ack: UInt32, flags: UInt8, window: UInt16, payloadLength: Int
        /// The sequence number that follows this segment.
        public var nextSeq: UInt32 {
            seq &+ UInt32(payloadLength) &+ (flags & (RawPacket.syn | RawPacket.fin) != 0 ? 1 : 0)
        }
    }

    /// Parses the TCP segment in an Ethernet frame, if it carries one.
    public static func parseTCP(frame f: [UInt8]) -> TCPSegment? {
        guard f.count >= 14 else { return nil }
        let type = UInt16(f[12]) << 8 | UInt16(f[13])
        var l4 = 0, total = 0, src = "", dst = ""
        if type == etherIPv4, f.count >= 34, f[23] == 6 {
            let ihl = Int(f[14] & 0x0f) * 4
            total = 14 + Int(UInt16(f[16]) << 8 | UInt16(f[17]))
            l4 = 14 + ihl
            src = addressText(f[26..<30]); dst = addressText(f[30..<34])
        } else if type == etherIPv6, f.count >= 54, f[20] == 6 {
            total = 54 + Int(UInt16(f[18]) << 8 | UInt16(f[19]))
            l4 = 54
            src = addressText(f[22..<38]); dst = addressText(f[38..<54])
        } else { return nil }
        guard f.count >= l4 + 20 else { return nil }
        func u16(_ i: Int) -> UInt16 { UInt16(f[i]) << 8 | UInt16(f[i + 1]) }
        func u32(_ i: Int) -> UInt32 { UInt32(u16(i)) << 16 | UInt32(u16(i + 2)) }
        let dataOffset = Int(f[l4 + 12] >> 4) * 4
        return TCPSegment(src: src, dst: dst, sport: u16(l4), dport: u16(l4 + 2), seq: u32(l4 + 4), ack: u32(l4 + 8),
                          flags: f[l4 + 13], window: u16(l4 + 14), payloadLength: max(0, min(total, f.count) - l4 - dataOffset))
    }

    /// An ARP packet seen on a link.
    public struct ARP: Sendable, Equatable {
        public var op: UInt16, senderMAC: String, senderIP: String, targetMAC: String, targetIP: String
    }

    public static func parseARP(frame f: [UInt8]) -> ARP? {
        guard f.count >= 42, f[12] == 0x08, f[13] == 0x06 else { return nil }
        return ARP(op: UInt16(f[20]) << 8 | UInt16(f[21]), senderMAC: macText(f[22..<28]), senderIP: addressText(f[28..<32]),
                   targetMAC: macText(f[32..<38]), targetIP: addressText(f[38..<42]))
    }
}

private func errnoText(_ code: Int32) -> String { String(cString: strerror(code)).lowercased() }

private func monotonic() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// `struct sockaddr_ll` (20 bytes), built by hand: Glibc does not export <netpacket/packet.h>.
private func linkAddress(ifindex: Int32, protocol: UInt16 = 0, mac: [UInt8] = []) -> [UInt8] {
    var a = [UInt8](repeating: 0, count: 20)
    withUnsafeBytes(of: UInt16(AF_PACKET)) { a.replaceSubrange(0..<2, with: $0) }
    a[2] = UInt8(`protocol` >> 8); a[3] = UInt8(`protocol` & 0xff)
    withUnsafeBytes(of: ifindex) { a.replaceSubrange(4..<8, with: $0) }
    a[11] = UInt8(mac.count)
    for (i, b) in mac.prefix(8).enumerated() { a[12 + i] = b }
    return a
}

private let ethPAll: UInt16 = 0x0003
private let packetOutgoing: UInt8 = 4

/// What arrived somewhere since the capture was opened: frames on a link (incoming only), IP
/// packets delivered to a node's stack (raw socket), or datagrams received by a UDP socket.
public final class PacketCapture: @unchecked Sendable, CustomStringConvertible {
    public enum Kind: Sendable { case link, delivered, udp }
    public let kind: Kind
    public let label: String
    private let outgoing: Bool
    private let lock = NSLock()
    private var fd: Int32
    private var packets: [[UInt8]] = []

    init(kind: Kind, fd: Int32, label: String, outgoing: Bool = false) {
        self.kind = kind
        self.outgoing = outgoing
        self.fd = fd
        self.label = label
    }

    deinit { close() }

    public func close() {
        lock.lock(); defer { lock.unlock() }
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    /// Reads whatever is queued.
    private func drainLocked() {
        guard fd >= 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            var from = [UInt8](repeating: 0, count: 128)
            var length = socklen_t(from.count)
            let n = from.withUnsafeMutableBytes { fp in
                buffer.withUnsafeMutableBytes { bp in
                    recvfrom(fd, bp.baseAddress, bp.count, Int32(MSG_DONTWAIT), fp.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
                }
            }
            if n < 0 { if errno == EINTR { continue }; return }
            if kind == .link && !outgoing && from[10] == packetOutgoing { continue }
            packets.append(Array(buffer[0..<n]))
        }
    }

    /// Everything received so far.
    public var received: [[UInt8]] {
        lock.lock(); defer { lock.unlock() }
        drainLocked()
        return packets
    }

    /// True as soon as a received packet satisfies `predicate`, waiting up to `within` seconds.
    public func saw(within: Double = 0, _ predicate: ([UInt8]) -> Bool) -> Bool {
        let deadline = monotonic() + within
        var checked = 0
        while true {
            lock.lock()
            drainLocked()
            let current = packets
            let open = fd
            lock.unlock()
            if current[checked...].contains(where: predicate) { return true }
            checked = current.count
            let remaining = deadline - monotonic()
            if remaining <= 0 || open < 0 { return false }
            var p = pollfd(fd: open, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, Int32(max(1, min(remaining, 0.05) * 1000)))
        }
    }

    /// True as soon as a packet containing `token` was received, waiting up to `within` seconds.
    public func saw(_ token: [UInt8], within: Double = 0) -> Bool {
        saw(within: within) { RawPacket.contains($0, token) }
    }

    /// Sends a datagram (UDP captures only).
    public func send(_ payload: [UInt8], to address: String, port: UInt16) throws {
        let sa = try SocketAddress(address, port: port)
        lock.lock(); defer { lock.unlock() }
        let n = sa.withPointer { p, l in payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, p, l) } }
        guard n == payload.count else { throw HarnessError("\(label): sendto \(address):\(port): \(errnoText(errno))") }
    }

    public var description: String { label }
}

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
        let fd = try NetworkNamespace.named(n.namespace.name).perform {
            socket(AF_INET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_RAW))
        }
        guard fd >= 0 else { throw HarnessError("raw socket in \(node): \(errnoText(errno))") }
        defer { Glibc.close(fd) }
        let dst = RawPacket.addressText(packet[16..<20])
        let sa = try SocketAddress(dst, port: 0)
        let sent = sa.withPointer { p, l in packet.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, p, l) } }
        if sent < 0 && errno == EPERM { return false }
        guard sent == packet.count else { throw HarnessError("raw send from \(node) to \(dst): \(errnoText(errno))") }
        return true
    }

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
        let fd = try NetworkNamespace.named(n.namespace.name).perform {
            socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), ipProtocol)
        }
        guard fd >= 0 else { throw HarnessError("raw socket in \(node): \(errnoText(errno))") }
        return PacketCapture(kind: .delivered, fd: fd, label: "IPv\(ipv6 ? 6 : 4) protocol \(ipProtocol) delivered to \(node)")
    }

    /// A UDP socket bound to `address`:`port` in `node` (SO_REUSEADDR, SO_BROADCAST): what it
    /// receives, and a way to send from it.
    public func udpSocket(_ node: String, address: String = "0.0.0.0", port: UInt16) throws -> PacketCapture {
        let n = self[node]
        let sa = try SocketAddress(address, port: port)
        let fd = try NetworkNamespace.named(n.namespace.name).perform {
            socket(sa.family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        }
        guard fd >= 0 else { throw HarnessError("UDP socket in \(node): \(errnoText(errno))") }
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
