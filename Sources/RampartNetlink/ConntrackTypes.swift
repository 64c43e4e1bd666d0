// The values of ctnetlink (the kernel's connection-tracking table): addresses, tuples, entries,
// dump filters and delete results. Plain data: the messages that carry them are built and parsed
// in ConntrackMessages.swift, and sent by ConntrackConnection.


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

    /// Every field, packed into six words: the synthesized hash fed the hasher fourteen values
    /// of mixed widths, and hashing tuples is most of what the conntrack index does per event.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(source.high)
        hasher.combine(source.low)
        hasher.combine(destination.high)
        hasher.combine(destination.low)
        var present: UInt64 = 0
        if sourcePort != nil { present |= 1 }
        if destinationPort != nil { present |= 2 }
        if icmpID != nil { present |= 4 }
        if icmpType != nil { present |= 8 }
        if icmpCode != nil { present |= 16 }
        hasher.combine(UInt64(family.rawValue) | UInt64(protocolNumber) << 8 | UInt64(icmpType ?? 0) << 16
                       | UInt64(icmpCode ?? 0) << 24 | present << 32)
        hasher.combine(UInt64(sourcePort ?? 0) | UInt64(destinationPort ?? 0) << 16 | UInt64(icmpID ?? 0) << 32)
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
