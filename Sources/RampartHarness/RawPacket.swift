import Foundation
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

    /// A whole IPv4 packet carrying one ICMP message (`body`: what follows type, code and checksum).
    public static func icmp(src: String, dst: String, type: UInt8, code: UInt8 = 0, ttl: UInt8 = 64, _ body: [UInt8]) throws -> [UInt8] {
        var msg = [type, code, 0, 0] + body
        let c = checksum(msg)
        msg[2] = UInt8(c >> 8); msg[3] = UInt8(c & 0xff)
        return try ip(src: src, dst: dst, proto: 1, ttl: ttl, msg)
    }

    /// A "destination (port) unreachable" error from `src` to `dst` quoting `quoted` (a whole IP
    /// packet of the family): ICMP type 3 code 3, or ICMPv6 type 1 code 4.
    public static func portUnreachable(src: String, dst: String, quoting quoted: [UInt8]) throws -> [UInt8] {
        try addressBytes(src).count == 4
            ? icmp(src: src, dst: dst, type: 3, code: 3, [0, 0, 0, 0] + quoted)
            : icmpv6(src: src, dst: dst, type: 1, code: 4, hopLimit: 64, [0, 0, 0, 0] + quoted)
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
}
