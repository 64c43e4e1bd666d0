#if canImport(Glibc)
import Glibc
#endif
import CNetfilter

// ctnetlink messages (subsystem NFNL_SUBSYS_CTNETLINK of a NETLINK_NETFILTER socket), written by
// hand with libmnl's attribute helpers and parsed by a small TLV walk: a dump entry needs only its
// tuples, status, id and zone, and libnetfilter_conntrack (another library and an allocation per
// entry) would add nothing here. No socket: tests build and parse them without a kernel.

/// Building and parsing of ctnetlink messages.
enum ConntrackMessages {
    static func messageType(_ msg: UInt32) -> UInt16 {
        UInt16((UInt32(NFNL_SUBSYS_CTNETLINK) << 8) | msg)
    }

    /// `CTA_FILTER` flag bits (the kernel's CTA_FILTER_F_CTA_*; not in the uapi headers).
    static let filterIPSource: UInt32 = 1 << 0
    static let filterIPDestination: UInt32 = 1 << 1

    static func header(_ buf: UnsafeMutableRawPointer, type: UInt32, flags: Int32, sequence: UInt32,
                       family: ConntrackFamily?) -> UnsafeMutablePointer<nlmsghdr> {
        let nlh = mnl_nlmsg_put_header(buf)!
        nlh.pointee.nlmsg_type = messageType(type)
        nlh.pointee.nlmsg_flags = UInt16(NLM_F_REQUEST | flags)
        nlh.pointee.nlmsg_seq = sequence
        let nfg = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<nfgenmsg>.size)!.assumingMemoryBound(to: nfgenmsg.self)
        nfg.pointee.nfgen_family = family?.rawValue ?? UInt8(AF_UNSPEC)
        nfg.pointee.version = UInt8(NFNETLINK_V0)
        nfg.pointee.res_id = 0
        return nlh
    }

    private static func putAddress(_ nlh: UnsafeMutablePointer<nlmsghdr>, _ type: UInt32, _ a: ConntrackAddress, _ family: ConntrackFamily) {
        switch family {
        case .ipv4:
            var be = UInt32(truncatingIfNeeded: a.low).bigEndian
            mnl_attr_put(nlh, UInt16(type), 4, &be)
        case .ipv6:
            var halves = (a.high.bigEndian, a.low.bigEndian)
            mnl_attr_put(nlh, UInt16(type), 16, &halves)
        }
    }

    private static func putTuple(_ nlh: UnsafeMutablePointer<nlmsghdr>, _ type: UInt32, _ t: ConntrackTuple) {
        let outer = mnl_attr_nest_start(nlh, UInt16(type))
        let ip = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_IP.rawValue))
        let (s, d) = t.family == .ipv4 ? (CTA_IP_V4_SRC.rawValue, CTA_IP_V4_DST.rawValue) : (CTA_IP_V6_SRC.rawValue, CTA_IP_V6_DST.rawValue)
        putAddress(nlh, s, t.source, t.family)
        putAddress(nlh, d, t.destination, t.family)
        mnl_attr_nest_end(nlh, ip)
        let proto = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_PROTO.rawValue))
        mnl_attr_put_u8(nlh, UInt16(CTA_PROTO_NUM.rawValue), t.protocolNumber)
        if let p = t.sourcePort { mnl_attr_put_u16(nlh, UInt16(CTA_PROTO_SRC_PORT.rawValue), p.bigEndian) }
        if let p = t.destinationPort { mnl_attr_put_u16(nlh, UInt16(CTA_PROTO_DST_PORT.rawValue), p.bigEndian) }
        let v6 = t.family == .ipv6
        if let x = t.icmpID { mnl_attr_put_u16(nlh, UInt16(v6 ? CTA_PROTO_ICMPV6_ID.rawValue : CTA_PROTO_ICMP_ID.rawValue), x.bigEndian) }
        if let x = t.icmpType { mnl_attr_put_u8(nlh, UInt16(v6 ? CTA_PROTO_ICMPV6_TYPE.rawValue : CTA_PROTO_ICMP_TYPE.rawValue), x) }
        if let x = t.icmpCode { mnl_attr_put_u8(nlh, UInt16(v6 ? CTA_PROTO_ICMPV6_CODE.rawValue : CTA_PROTO_ICMP_CODE.rawValue), x) }
        mnl_attr_nest_end(nlh, proto)
        mnl_attr_nest_end(nlh, outer)
    }

    /// IPCTNL_MSG_CT_GET with NLM_F_DUMP for one family, with an address filter if asked.
    /// Returns the message's length.
    static func buildDump(into buf: UnsafeMutableRawPointer, sequence: UInt32, filter: ConntrackFilter) -> Int {
        let nlh = header(buf, type: IPCTNL_MSG_CT_GET.rawValue, flags: NLM_F_DUMP, sequence: sequence, family: filter.family)
        if let field = filter.field, let family = filter.family {
            let (flag, address): (UInt32, ConntrackAddress) = switch field {
            case .originalSource(let a): (filterIPSource, a)
            case .originalDestination(let a): (filterIPDestination, a)
            }
            let f = mnl_attr_nest_start(nlh, UInt16(CTA_FILTER.rawValue))
            mnl_attr_put_u32(nlh, UInt16(CTA_FILTER_ORIG_FLAGS.rawValue), flag)
            mnl_attr_nest_end(nlh, f)
            // The values to compare with, in a tuple; only the flagged field is read.
            let outer = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_ORIG.rawValue))
            let ip = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_IP.rawValue))
            let v4 = family == .ipv4
            let type = switch field {
            case .originalSource: v4 ? CTA_IP_V4_SRC.rawValue : CTA_IP_V6_SRC.rawValue
            case .originalDestination: v4 ? CTA_IP_V4_DST.rawValue : CTA_IP_V6_DST.rawValue
            }
            putAddress(nlh, type, address, family)
            mnl_attr_nest_end(nlh, ip)
            mnl_attr_nest_end(nlh, outer)
        }
        return Int(nlh.pointee.nlmsg_len)
    }

    /// IPCTNL_MSG_CT_DELETE of one entry, asking for an ack. Returns the message's length.
    static func buildDelete(into buf: UnsafeMutableRawPointer, sequence: UInt32, entry: ConntrackEntry) -> Int {
        let nlh = header(buf, type: IPCTNL_MSG_CT_DELETE.rawValue, flags: NLM_F_ACK, sequence: sequence, family: entry.original.family)
        putTuple(nlh, CTA_TUPLE_ORIG.rawValue, entry.original)
        if entry.zone != 0 { mnl_attr_put_u16(nlh, UInt16(CTA_ZONE.rawValue), entry.zone.bigEndian) }
        if let id = entry.id { mnl_attr_put_u32(nlh, UInt16(CTA_ID.rawValue), id.bigEndian) }
        return Int(nlh.pointee.nlmsg_len)
    }

    /// IPCTNL_MSG_CT_NEW creating one entry (both tuples, a timeout), asking for an ack.
    static func buildCreate(into buf: UnsafeMutableRawPointer, sequence: UInt32, entry: ConntrackEntry, timeout: UInt32) -> Int {
        let nlh = header(buf, type: IPCTNL_MSG_CT_NEW.rawValue, flags: NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                         sequence: sequence, family: entry.original.family)
        putTuple(nlh, CTA_TUPLE_ORIG.rawValue, entry.original)
        let reply = entry.reply ?? entry.original.inverted
        putTuple(nlh, CTA_TUPLE_REPLY.rawValue, reply)
        mnl_attr_put_u32(nlh, UInt16(CTA_TIMEOUT.rawValue), timeout.bigEndian)
        if entry.status != 0 { mnl_attr_put_u32(nlh, UInt16(CTA_STATUS.rawValue), entry.status.bigEndian) }
        if entry.original.protocolNumber == 6 {
            // A TCP entry needs a state: ESTABLISHED (3).
            let info = mnl_attr_nest_start(nlh, UInt16(CTA_PROTOINFO.rawValue))
            let tcp = mnl_attr_nest_start(nlh, UInt16(CTA_PROTOINFO_TCP.rawValue))
            mnl_attr_put_u8(nlh, UInt16(CTA_PROTOINFO_TCP_STATE.rawValue), 3)
            mnl_attr_nest_end(nlh, tcp)
            mnl_attr_nest_end(nlh, info)
        }
        if entry.zone != 0 { mnl_attr_put_u16(nlh, UInt16(CTA_ZONE.rawValue), entry.zone.bigEndian) }
        return Int(nlh.pointee.nlmsg_len)
    }

    // MARK: parsing

    /// Walks the attributes in `bytes` (a TLV run), calling `body(type, payload)`.
    static func attributes(_ bytes: UnsafeRawBufferPointer, _ body: (UInt16, UnsafeRawBufferPointer) throws(NetlinkError) -> Void) throws(NetlinkError) {
        var offset = 0
        while offset + 4 <= bytes.count {
            let len = Int(bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            let type = bytes.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self) & 0x3fff  // NLA_TYPE_MASK: without NLA_F_NESTED, NLA_F_NET_BYTEORDER
            guard len >= 4, offset + len <= bytes.count else { throw .protocolError("malformed conntrack attribute (length \(len))") }
            try body(type, UnsafeRawBufferPointer(rebasing: bytes[(offset + 4)..<(offset + len)]))
            offset += (len + 3) & ~3
        }
    }

    private static func u8(_ p: UnsafeRawBufferPointer) throws(NetlinkError) -> UInt8 {
        guard p.count >= 1 else { throw .protocolError("short conntrack attribute") }
        return p[0]
    }
    private static func be16(_ p: UnsafeRawBufferPointer) throws(NetlinkError) -> UInt16 {
        guard p.count >= 2 else { throw .protocolError("short conntrack attribute") }
        return UInt16(bigEndian: p.loadUnaligned(as: UInt16.self))
    }
    static func be32(_ p: UnsafeRawBufferPointer) throws(NetlinkError) -> UInt32 {
        guard p.count >= 4 else { throw .protocolError("short conntrack attribute") }
        return UInt32(bigEndian: p.loadUnaligned(as: UInt32.self))
    }
    private static func address(_ p: UnsafeRawBufferPointer) throws(NetlinkError) -> ConntrackAddress {
        switch p.count {
        case 4: return ConntrackAddress(ipv4: UInt32(bigEndian: p.loadUnaligned(as: UInt32.self)))
        case 16: return ConntrackAddress(high: UInt64(bigEndian: p.loadUnaligned(as: UInt64.self)),
                                         low: UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
        default: throw .protocolError("conntrack address of \(p.count) bytes")
        }
    }

    static func parseTuple(_ bytes: UnsafeRawBufferPointer, family: ConntrackFamily) throws(NetlinkError) -> ConntrackTuple {
        var t = ConntrackTuple(family: family, protocolNumber: 0, source: ConntrackAddress(low: 0), destination: ConntrackAddress(low: 0))
        try attributes(bytes) { (type, payload) throws(NetlinkError) in
            switch UInt32(type) {
            case CTA_TUPLE_IP.rawValue:
                try attributes(payload) { (k, v) throws(NetlinkError) in
                    switch UInt32(k) {
                    case CTA_IP_V4_SRC.rawValue, CTA_IP_V6_SRC.rawValue: t.source = try address(v)
                    case CTA_IP_V4_DST.rawValue, CTA_IP_V6_DST.rawValue: t.destination = try address(v)
                    default: break
                    }
                }
            case CTA_TUPLE_PROTO.rawValue:
                try attributes(payload) { (k, v) throws(NetlinkError) in
                    switch UInt32(k) {
                    case CTA_PROTO_NUM.rawValue: t.protocolNumber = try u8(v)
                    case CTA_PROTO_SRC_PORT.rawValue: t.sourcePort = try be16(v)
                    case CTA_PROTO_DST_PORT.rawValue: t.destinationPort = try be16(v)
                    case CTA_PROTO_ICMP_ID.rawValue, CTA_PROTO_ICMPV6_ID.rawValue: t.icmpID = try be16(v)
                    case CTA_PROTO_ICMP_TYPE.rawValue, CTA_PROTO_ICMPV6_TYPE.rawValue: t.icmpType = try u8(v)
                    case CTA_PROTO_ICMP_CODE.rawValue, CTA_PROTO_ICMPV6_CODE.rawValue: t.icmpCode = try u8(v)
                    default: break
                    }
                }
            default: break
            }
        }
        return t
    }

    /// Parses one ctnetlink message (header, nfgenmsg, attributes) into an entry; nil for a
    /// message without an original tuple or of a family other than IPv4 and IPv6.
    static func parseEntry(message: UnsafeRawBufferPointer) throws(NetlinkError) -> ConntrackEntry? {
        let start = MemoryLayout<nlmsghdr>.size + MemoryLayout<nfgenmsg>.size
        guard message.count >= start else { throw .protocolError("short conntrack message") }
        guard let family = ConntrackFamily(rawValue: message[MemoryLayout<nlmsghdr>.size]) else { return nil }
        var original: ConntrackTuple?
        var entry = ConntrackEntry(original: ConntrackTuple(family: family, protocolNumber: 0, source: ConntrackAddress(low: 0),
                                                            destination: ConntrackAddress(low: 0)))
        try attributes(UnsafeRawBufferPointer(rebasing: message[start...])) { (type, payload) throws(NetlinkError) in
            switch UInt32(type) {
            case CTA_TUPLE_ORIG.rawValue: original = try parseTuple(payload, family: family)
            case CTA_TUPLE_REPLY.rawValue: entry.reply = try parseTuple(payload, family: family)
            case CTA_TUPLE_MASTER.rawValue: entry.master = try parseTuple(payload, family: family)
            case CTA_STATUS.rawValue: entry.status = try be32(payload)
            case CTA_ID.rawValue: entry.id = try be32(payload)
            case CTA_ZONE.rawValue: entry.zone = try be16(payload)
            case CTA_MARK.rawValue: entry.mark = try be32(payload)
            default: break
            }
        }
        guard let original else { return nil }
        entry.original = original
        return entry
    }
}
