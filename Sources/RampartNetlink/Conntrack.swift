#if canImport(Glibc)
import Glibc
#endif
import CNetfilter
import RampartSystem

// ctnetlink: the kernel's connection-tracking table over a NETLINK_NETFILTER socket (subsystem
// NFNL_SUBSYS_CTNETLINK). Messages are written by hand with libmnl's attribute helpers and parsed
// by a small TLV walk: a dump entry needs only its tuples, status, id and zone, and
// libnetfilter_conntrack (another library and an allocation per entry) would add nothing here.

/// An address in a conntrack tuple, as two big-endian halves: IPv4 sits in the low 32 bits of
/// `low` (`high` = 0), in the same numeric form as RampartCore's `IPv4Address.raw`; IPv6 is
/// `high`:`low` as in `IPv6Address`.
public struct ConntrackAddress: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64
    public init(high: UInt64 = 0, low: UInt64) { self.high = high; self.low = low }
    public init(ipv4 raw: UInt32) { high = 0; low = UInt64(raw) }

    public var description: String {
        if high == 0 && low <= UInt64(UInt32.max) {
            let v = UInt32(low)
            return "\(v >> 24).\((v >> 16) & 0xff).\((v >> 8) & 0xff).\(v & 0xff)"
        }
        let groups = (0..<8).map { i -> String in
            let half = i < 4 ? high : low
            return String((half >> (48 - 16 * UInt64(i % 4))) & 0xffff, radix: 16)
        }
        return groups.joined(separator: ":")
    }
}

/// The layer-3 family of a conntrack entry (the nfgenmsg family).
public enum ConntrackFamily: UInt8, Sendable, Hashable, CaseIterable {
    case ipv4 = 2    // AF_INET
    case ipv6 = 10   // AF_INET6
}

/// One direction of a connection as conntrack keys it.
public struct ConntrackTuple: Hashable, Sendable, CustomStringConvertible {
    public var family: ConntrackFamily
    public var protocolNumber: UInt8
    public var source: ConntrackAddress
    public var destination: ConntrackAddress
    /// TCP, UDP, SCTP, DCCP, UDP-Lite.
    public var sourcePort: UInt16?
    public var destinationPort: UInt16?
    /// ICMP and ICMPv6 (echo-like queries: conntrack tracks the id, the type and the code).
    public var icmpType: UInt8?
    public var icmpCode: UInt8?
    public var icmpID: UInt16?

    public init(family: ConntrackFamily, protocolNumber: UInt8, source: ConntrackAddress, destination: ConntrackAddress,
                sourcePort: UInt16? = nil, destinationPort: UInt16? = nil,
                icmpType: UInt8? = nil, icmpCode: UInt8? = nil, icmpID: UInt16? = nil) {
        self.family = family
        self.protocolNumber = protocolNumber
        self.source = source
        self.destination = destination
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.icmpType = icmpType
        self.icmpCode = icmpCode
        self.icmpID = icmpID
    }

    public var description: String {
        var s = "proto \(protocolNumber) \(source)"
        if let p = sourcePort { s += ":\(p)" }
        s += " → \(destination)"
        if let p = destinationPort { s += ":\(p)" }
        if let t = icmpType { s += " type \(t) code \(icmpCode ?? 0) id \(icmpID ?? 0)" }
        return s
    }
}

/// One conntrack entry as a dump returns it.
public struct ConntrackEntry: Hashable, Sendable, CustomStringConvertible {
    /// The direction of the connection's first packet.
    public var original: ConntrackTuple
    /// The direction of its replies (differs from the inverted original under NAT).
    public var reply: ConntrackTuple?
    /// For an expected (related) connection, such as FTP data: the original tuple of the
    /// connection that expected it (CTA_TUPLE_MASTER).
    public var master: ConntrackTuple?
    /// `IPS_*` bits (IPS_SEEN_REPLY 0x2, IPS_ASSURED 0x4, IPS_CONFIRMED 0x8, ...).
    public var status: UInt32
    /// The kernel's id of the entry: a delete that carries it removes this entry only, never a
    /// newer one that happens to have the same tuple.
    public var id: UInt32?
    /// The conntrack zone (0: the default).
    public var zone: UInt16
    public var mark: UInt32?

    public init(original: ConntrackTuple, reply: ConntrackTuple? = nil, master: ConntrackTuple? = nil, status: UInt32 = 0,
                id: UInt32? = nil, zone: UInt16 = 0, mark: UInt32? = nil) {
        self.original = original
        self.reply = reply
        self.master = master
        self.status = status
        self.id = id
        self.zone = zone
        self.mark = mark
    }

    public var description: String {
        "\(original)" + (id.map { " id \($0)" } ?? "") + " status 0x\(String(status, radix: 16))" + (zone != 0 ? " zone \(zone)" : "")
    }
}

/// What a dump asks the kernel to return. A family is filtered in the kernel (the nfgenmsg
/// family; nil: both in one walk); an address filter uses `CTA_FILTER` (Linux ≥ 5.8, needs a
/// family), which the kernel applies while walking its table, so only matching entries cross
/// into user space. Every dump walks the kernel's whole table, whatever it filters.
public struct ConntrackFilter: Hashable, Sendable {
    public enum Field: Hashable, Sendable {
        /// The original direction's source address equals this one.
        case originalSource(ConntrackAddress)
        /// The original direction's destination address equals this one.
        case originalDestination(ConntrackAddress)
    }
    public var family: ConntrackFamily?
    public var field: Field?

    /// Every entry of both families.
    public static let all = ConntrackFilter(family: nil)

    public init(family: ConntrackFamily?, field: Field? = nil) {
        self.family = family
        self.field = field
    }
}

/// What a delete run did.
public struct ConntrackDeletion: Hashable, Sendable {
    /// Entries the kernel removed.
    public var deleted = 0
    /// Entries already gone (ENOENT: expired, or removed by someone else): not an error.
    public var alreadyGone = 0
    public init(deleted: Int = 0, alreadyGone: Int = 0) { self.deleted = deleted; self.alreadyGone = alreadyGone }
}

/// A ctnetlink connection to the conntrack table of one network namespace: dump (whole, per
/// family, or filtered by an address in the kernel) and delete by original tuple.
///
/// Not Sendable: one owner, like `NFTablesConnection` (replies are matched by sequence number).
public final class ConntrackConnection {
    private let socket: NetlinkSocket
    public let namespace: NetworkNamespace

    /// Opens a socket in `namespace` (the calling thread's by default).
    public init(namespace: NetworkNamespace = .current) throws(NetlinkError) {
        self.namespace = namespace
        socket = try NetlinkSocket(namespace: namespace)
        try socket.setReceiveTimeout(seconds: 10)
    }

    static func messageType(_ msg: UInt32) -> UInt16 {
        UInt16((UInt32(NFNL_SUBSYS_CTNETLINK) << 8) | msg)
    }

    // MARK: dump

    /// Every entry the filter selects, each passed to `body` as it is parsed (a dump of a big
    /// table never has to sit in memory whole). An entry the kernel flags as interrupted
    /// (NLM_F_DUMP_INTR) is not an error: conntrack changes all the time, and a dump is a
    /// best-effort walk by nature; the caller decides per entry.
    /// Returns the number of datagrams the dump took.
    @discardableResult
    public func dump(_ filter: ConntrackFilter, _ body: (ConntrackEntry) throws(NetlinkError) -> Void) throws(NetlinkError) -> Int {
        let seq = socket.reserveSequence(1)
        try withScratch(512) { (buf) throws(NetlinkError) in
            let n = Self.buildDump(into: buf, sequence: seq, filter: filter)
            try socket.send(buf, length: n)
        }
        var done = false
        var datagrams = 0
        while !done {
            datagrams += 1
            let got = try socket.receive(wait: true) { (nlh) throws(NetlinkError) in
                guard nlh.pointee.nlmsg_seq == seq else { return }
                switch Int32(nlh.pointee.nlmsg_type) {
                case NLMSG_DONE:
                    done = true
                case NLMSG_ERROR:
                    var err = rampart_nlerr()
                    _ = rampart_parse_nlerr(nlh, &err)
                    if err.error != 0 {
                        let text = err.message.map { ": " + String(cString: $0) } ?? ""
                        throw .systemCall("IPCTNL_MSG_CT_GET (dump\(text))", Errno(err.error))
                    }
                    done = true
                default:
                    let raw = UnsafeRawBufferPointer(start: UnsafeRawPointer(nlh), count: Int(nlh.pointee.nlmsg_len))
                    if let entry = try Self.parseEntry(message: raw) { try body(entry) }
                }
            }
            if !got { throw .protocolError("no reply to the conntrack dump") }
        }
        return datagrams
    }

    /// Every entry the filter selects, in an array.
    public func entries(_ filter: ConntrackFilter) throws(NetlinkError) -> [ConntrackEntry] {
        var all: [ConntrackEntry] = []
        try dump(filter) { (e) throws(NetlinkError) in all.append(e) }
        return all
    }

    /// How many entries the namespace's table holds now (IPCTNL_MSG_CT_GET_STATS, one round
    /// trip): what a whole dump would have to carry.
    public func count() throws(NetlinkError) -> Int {
        let seq = socket.reserveSequence(1)
        try withScratch(64) { (buf) throws(NetlinkError) in
            let nlh = Self.header(buf, type: IPCTNL_MSG_CT_GET_STATS.rawValue, flags: NLM_F_ACK, sequence: seq, family: nil)
            try socket.send(buf, length: Int(nlh.pointee.nlmsg_len))
        }
        var result: Int?
        var acked = false
        while result == nil || !acked {
            let got = try socket.receive(wait: true) { (nlh) throws(NetlinkError) in
                guard nlh.pointee.nlmsg_seq == seq else { return }
                if nlh.pointee.nlmsg_type == UInt16(NLMSG_ERROR) {
                    var err = rampart_nlerr()
                    _ = rampart_parse_nlerr(nlh, &err)
                    if err.error != 0 { throw .systemCall("IPCTNL_MSG_CT_GET_STATS", Errno(err.error)) }
                    acked = true
                    return
                }
                let raw = UnsafeRawBufferPointer(start: UnsafeRawPointer(nlh), count: Int(nlh.pointee.nlmsg_len))
                let start = MemoryLayout<nlmsghdr>.size + MemoryLayout<nfgenmsg>.size
                guard raw.count >= start else { throw .protocolError("short conntrack stats message") }
                try Self.attributes(UnsafeRawBufferPointer(rebasing: raw[start...])) { (type, payload) throws(NetlinkError) in
                    if UInt32(type) == CTA_STATS_GLOBAL_ENTRIES.rawValue { result = Int(try Self.be32(payload)) }
                }
                if result == nil { throw .protocolError("conntrack stats without an entry count") }
            }
            if !got { throw .protocolError("no reply to IPCTNL_MSG_CT_GET_STATS") }
        }
        return result!
    }

    // MARK: delete

    /// Deletes these entries (by original tuple, zone and, when known, id), many per datagram.
    /// ENOENT (already gone) is counted, not thrown; any other refusal is thrown after the rest
    /// were tried.
    @discardableResult
    public func delete(_ entries: [ConntrackEntry]) throws(NetlinkError) -> ConntrackDeletion {
        let (done, gone, failure) = try requests(entries, "IPCTNL_MSG_CT_DELETE") { Self.buildDelete(into: $0, sequence: $1, entry: $2) }
        if let failure { throw failure }
        return ConntrackDeletion(deleted: done, alreadyGone: gone)
    }

    /// Inserts entries (IPCTNL_MSG_CT_NEW with NLM_F_CREATE | NLM_F_EXCL), many per datagram:
    /// for tests and benchmarks that need a big table without real flows. `timeout` in seconds.
    public func create(_ entries: [ConntrackEntry], timeout: UInt32 = 600) throws(NetlinkError) {
        let (_, _, failure) = try requests(entries, "IPCTNL_MSG_CT_NEW") { Self.buildCreate(into: $0, sequence: $1, entry: $2, timeout: timeout) }
        if let failure { throw failure }
    }

    /// Sends one acked request per entry, packed into datagrams of at most 60 KiB (the kernel
    /// handles every message of a datagram inside sendto, and each acks), and counts the
    /// answers: done, ENOENT, and the first other failure.
    private func requests(_ entries: [ConntrackEntry], _ label: String,
                          _ build: (UnsafeMutableRawPointer, UInt32, ConntrackEntry) -> Int) throws(NetlinkError) -> (Int, Int, NetlinkError?) {
        var done = 0, gone = 0
        var firstFailure: NetlinkError?
        let capacity = 60 * 1024
        var index = 0
        while index < entries.count {
            let first = socket.reserveSequence(0)
            var count = 0
            try withScratch(capacity) { (buf) throws(NetlinkError) in
                var offset = 0
                while index < entries.count, offset + 512 <= capacity {
                    offset += build(buf + offset, first &+ UInt32(count), entries[index])
                    index += 1
                    count += 1
                }
                _ = socket.reserveSequence(count)
                try socket.send(buf, length: offset)
            }
            var answered = 0
            while answered < count {
                let got = try socket.receive(wait: true) { (nlh) throws(NetlinkError) in
                    guard nlh.pointee.nlmsg_type == UInt16(NLMSG_ERROR) else { return }
                    var err = rampart_nlerr()
                    guard rampart_parse_nlerr(nlh, &err) else { throw .protocolError("truncated error message") }
                    guard err.seq &- first < UInt32(count) else { return }
                    answered += 1
                    switch err.error {
                    case 0: done += 1
                    case ENOENT: gone += 1
                    default:
                        if firstFailure == nil {
                            let text = err.message.map { ": " + String(cString: $0) } ?? ""
                            firstFailure = .systemCall("\(label)\(text)", Errno(err.error))
                        }
                    }
                }
                if !got { throw .protocolError("no reply to \(label)") }
            }
        }
        return (done, gone, firstFailure)
    }

    // MARK: messages (static, so that tests build and parse them without a socket)

    /// `CTA_FILTER` flag bits (the kernel's CTA_FILTER_F_CTA_*; not in the uapi headers).
    static let filterIPSource: UInt32 = 1 << 0
    static let filterIPDestination: UInt32 = 1 << 1

    private static func header(_ buf: UnsafeMutableRawPointer, type: UInt32, flags: Int32, sequence: UInt32,
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
    private static func be32(_ p: UnsafeRawBufferPointer) throws(NetlinkError) -> UInt32 {
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

extension ConntrackTuple {
    /// The reply direction of a connection without NAT.
    public var inverted: ConntrackTuple {
        var r = self
        r.source = destination
        r.destination = source
        r.sourcePort = destinationPort
        r.destinationPort = sourcePort
        if let t = icmpType {
            // Echo request ↔ reply (ICMP 8 ↔ 0, ICMPv6 128 ↔ 129); other queries as the kernel pairs them.
            let pairs: [UInt8: UInt8] = family == .ipv4 ? [8: 0, 13: 14, 15: 16, 17: 18] : [128: 129]
            r.icmpType = pairs[t] ?? t
        }
        return r
    }
}
