import Foundation
#if canImport(Glibc)
import Glibc
#endif

// Reading crafted (and captured) packets back: TCP segments and ARP packets in frames.

extension RawPacket {
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
