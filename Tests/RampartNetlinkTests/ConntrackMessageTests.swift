import Foundation
import Testing
import CNetfilter
@testable import RampartNetlink

/// ctnetlink messages built and parsed without a kernel: a delete carries the tuple a dump
/// returns, attribute for attribute.
@Suite("ctnetlink messages") struct ConntrackMessageTests {
    static func build(_ body: (UnsafeMutableRawPointer) -> Int) -> [UInt8] {
        let p = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
        defer { p.deallocate() }
        p.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        let n = body(p)
        return Array(UnsafeRawBufferPointer(start: p, count: n))
    }

    /// The bytes in memory of their own (closures with typed throws through `withUnsafeBytes`
    /// crash the 6.3.1 compiler's IR generation).
    static func raw(_ bytes: [UInt8]) -> UnsafeRawBufferPointer {
        let p = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
        p.copyBytes(from: bytes)
        return UnsafeRawBufferPointer(p)
    }

    static let v4 = ConntrackEntry(
        original: ConntrackTuple(family: .ipv4, protocolNumber: 6, source: ConntrackAddress(ipv4: 0x0A00_0905),
                                 destination: ConntrackAddress(ipv4: 0x0A00_010B), sourcePort: 40123, destinationPort: 22),
        id: 0xDEAD_BEEF, zone: 7)
    static let v6 = ConntrackEntry(
        original: ConntrackTuple(family: .ipv6, protocolNumber: 58, source: ConntrackAddress(high: 0x2001_0db8_0000_0000, low: 0x10),
                                 destination: ConntrackAddress(high: 0xfd00_0000_0000_0000, low: 0x11),
                                 icmpType: 128, icmpCode: 0, icmpID: 4242))

    @Test func deleteRoundTrips() throws {
        for entry in [Self.v4, Self.v6] {
            let bytes = Self.build { ConntrackMessages.buildDelete(into: $0, sequence: 9, entry: entry) }
            let header = bytes.withUnsafeBytes { $0.loadUnaligned(as: nlmsghdr.self) }
            #expect(Int(header.nlmsg_len) == bytes.count)
            #expect(header.nlmsg_type == UInt16(NFNL_SUBSYS_CTNETLINK << 8) | UInt16(IPCTNL_MSG_CT_DELETE.rawValue))
            #expect(header.nlmsg_flags == UInt16(NLM_F_REQUEST | NLM_F_ACK))
            #expect(header.nlmsg_seq == 9)
            #expect(bytes[MemoryLayout<nlmsghdr>.size] == entry.original.family.rawValue)
            let buffer = Self.raw(bytes)
            defer { buffer.deallocate() }
            let parsed = try ConntrackMessages.parseEntry(message: buffer)
            #expect(parsed == entry)
        }
    }

    /// A dump entry of a related connection carries its master's tuple; build one the way the
    /// kernel does (the create message has the same attributes) and parse it.
    @Test func relatedEntriesNameTheirMaster() throws {
        let data = ConntrackEntry(original: ConntrackTuple(family: .ipv4, protocolNumber: 6, source: ConntrackAddress(ipv4: 0x0A00_0905),
                                                           destination: ConntrackAddress(ipv4: 0x0A00_010B), sourcePort: 20, destinationPort: 40001))
        let bytes = Self.build { buf in
            var n = ConntrackMessages.buildCreate(into: buf, sequence: 1, entry: data, timeout: 60)
            // append CTA_TUPLE_MASTER = the control connection (21), as a dump would carry it
            let nlh = buf.assumingMemoryBound(to: nlmsghdr.self)
            let outer = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_MASTER.rawValue))
            let ip = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_IP.rawValue))
            mnl_attr_put_u32(nlh, UInt16(CTA_IP_V4_SRC.rawValue), UInt32(0x0A00_010B).bigEndian)
            mnl_attr_put_u32(nlh, UInt16(CTA_IP_V4_DST.rawValue), UInt32(0x0A00_0905).bigEndian)
            mnl_attr_nest_end(nlh, ip)
            let proto = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_PROTO.rawValue))
            mnl_attr_put_u8(nlh, UInt16(CTA_PROTO_NUM.rawValue), 6)
            mnl_attr_put_u16(nlh, UInt16(CTA_PROTO_SRC_PORT.rawValue), UInt16(50000).bigEndian)
            mnl_attr_put_u16(nlh, UInt16(CTA_PROTO_DST_PORT.rawValue), UInt16(21).bigEndian)
            mnl_attr_nest_end(nlh, proto)
            mnl_attr_nest_end(nlh, outer)
            n = Int(nlh.pointee.nlmsg_len)
            return n
        }
        let buffer = Self.raw(bytes)
        defer { buffer.deallocate() }
        let parsed = try #require(try ConntrackMessages.parseEntry(message: buffer))
        #expect(parsed.original == data.original && parsed.reply == data.original.inverted)
        #expect(parsed.master?.destinationPort == 21 && parsed.master?.source == ConntrackAddress(ipv4: 0x0A00_010B))
    }

    @Test func dumpRequests() throws {
        let plain = Self.build { ConntrackMessages.buildDump(into: $0, sequence: 1, filter: ConntrackFilter(family: .ipv6)) }
        let header = plain.withUnsafeBytes { $0.loadUnaligned(as: nlmsghdr.self) }
        #expect(header.nlmsg_flags == UInt16(NLM_F_REQUEST | NLM_F_DUMP))
        #expect(header.nlmsg_type == UInt16(NFNL_SUBSYS_CTNETLINK << 8) | UInt16(IPCTNL_MSG_CT_GET.rawValue))
        #expect(plain.count == MemoryLayout<nlmsghdr>.size + MemoryLayout<nfgenmsg>.size)
        #expect(plain[MemoryLayout<nlmsghdr>.size] == 10)

        // A filter: CTA_FILTER { ORIG_FLAGS = IP_DST } and CTA_TUPLE_ORIG { CTA_TUPLE_IP { V4_DST } }.
        let filtered = Self.build {
            ConntrackMessages.buildDump(into: $0, sequence: 2, filter: ConntrackFilter(family: .ipv4, field: .originalDestination(ConntrackAddress(ipv4: 0x0A00_010B))))
        }
        var seen: [UInt16] = []
        let b = Self.raw(filtered)
        defer { b.deallocate() }
        do {
            try ConntrackMessages.attributes(UnsafeRawBufferPointer(rebasing: b[(MemoryLayout<nlmsghdr>.size + 4)...])) { (type, payload) throws(NetlinkError) in
                seen.append(type)
                if UInt32(type) == CTA_FILTER.rawValue {
                    try ConntrackMessages.attributes(payload) { (k, v) throws(NetlinkError) in
                        #expect(UInt32(k) == CTA_FILTER_ORIG_FLAGS.rawValue)
                        #expect(v.loadUnaligned(as: UInt32.self) == 2)
                    }
                }
                if UInt32(type) == CTA_TUPLE_ORIG.rawValue {
                    let t = try ConntrackMessages.parseTuple(payload, family: .ipv4)
                    #expect(t.destination == ConntrackAddress(ipv4: 0x0A00_010B))
                }
            }
        }
        #expect(seen == [UInt16(CTA_FILTER.rawValue), UInt16(CTA_TUPLE_ORIG.rawValue)])
    }

    @Test func malformedAttributesAreErrors() {
        let bad: [UInt8] = Array(repeating: 0, count: 16) + [2, 0, 0, 0] + [0x40, 0x00, 0x01, 0x00]  // IPv4; an attribute longer than the message
        let b = Self.raw(bad)
        defer { b.deallocate() }
        #expect(throws: NetlinkError.self) { try ConntrackMessages.parseEntry(message: b) }
    }

    @Test func addressesPrint() {
        #expect(ConntrackAddress(ipv4: 0x0A00_010B).description == "10.0.1.11")
        #expect(Self.v6.original.source.description == "2001:db8:0:0:0:0:0:10")
    }
}
