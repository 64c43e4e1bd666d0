/// The desired-state document, version 1 (see `docs/state-format.md`), as validated values.
///
/// Values of these types are what `Document.parse` produces from JSON and what the incremental
/// events of `Engine` take; they can also be built directly (tests, a controller), in which case
/// `Document.validate()` checks the rules that the types alone cannot express.
public struct Document: Hashable, Sendable {
    /// The hypervisor this document is for.
    public var host: String
    /// Every group that an instance here belongs to and every group a rule references.
    public var groups: [String: Group]
    /// Instances on this host and instances elsewhere that are members of referenced groups.
    public var instances: [String: Instance]
    /// Interface-name prefixes of instance devices on this host (`guarded_prefixes`, contract
    /// rule 9): a device with such a name that is no instance's passes nothing. Empty: none.
    public var guardedPrefixes: [String]

    public init(host: String, groups: [String: Group] = [:], instances: [String: Instance] = [:], guardedPrefixes: [String] = []) {
        self.host = host
        self.groups = groups
        self.instances = instances
        self.guardedPrefixes = guardedPrefixes
    }
}

/// A security group: a list of rules.
public struct Group: Hashable, Sendable {
    /// Free text, at most 255 characters.
    public var description: String?
    /// What the group allows, in document order.
    public var rules: [Rule]

    public init(description: String? = nil, rules: [Rule] = []) {
        self.description = description
        self.rules = rules
    }
}

/// Direction of a rule, seen from the member.
public enum Direction: String, Hashable, Sendable {
    /// Traffic to a member; the remote side is the source.
    case ingress
    /// Traffic from a member; the remote side is the destination.
    case egress
}

/// The IP protocol of a rule. Names are normalised to numbers at parse time (`tcp` is 6),
/// so `"tcp"` and `6` compile identically.
public enum RuleProtocol: Hashable, Sendable, CustomStringConvertible {
    /// Every protocol: no layer-4 match.
    case any
    /// One protocol number, 1–255 (0 is rejected as ambiguous).
    case number(UInt8)

    public static let tcp = RuleProtocol.number(6)
    public static let udp = RuleProtocol.number(17)
    public static let sctp = RuleProtocol.number(132)
    public static let icmp = RuleProtocol.number(1)
    public static let icmpv6 = RuleProtocol.number(58)

    /// Names accepted in documents, with their numbers.
    static let names: [String: UInt8] = ["tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58]

    /// Whether `ports` may be given (tcp, udp, sctp).
    public var hasPorts: Bool { self == .tcp || self == .udp || self == .sctp }
    /// Whether `icmp_type` may be given (icmp, icmpv6).
    public var isICMP: Bool { self == .icmp || self == .icmpv6 }

    public var description: String {
        switch self {
        case .any: return "any"
        case .number(let n): return RuleProtocol.names.first { $0.value == n }?.key ?? String(n)
        }
    }
}

/// The remote side of a rule.
public enum Remote: Hashable, Sendable {
    /// A prefix with zero host bits.
    case cidr(IPPrefix)
    /// The addresses of every member of this group in the document, on any host.
    case group(String)
}

/// One rule of a group.
public struct Rule: Hashable, Sendable {
    /// Stable name shown in kernel comments and errors (any string).
    public var id: String?
    /// Ingress (to the member) or egress (from it).
    public var direction: Direction
    /// The IP protocol.
    public var proto: RuleProtocol
    /// Destination ports (only with tcp/udp/sctp); nil means all.
    public var ports: ClosedRange<UInt16>?
    /// ICMP type (only with icmp/icmpv6); nil means every type.
    public var icmpType: UInt8?
    /// ICMP code (only with `icmpType`).
    public var icmpCode: UInt8?
    /// The remote side: source for ingress, destination for egress.
    public var remote: Remote
    /// With a cidr it agrees with the prefix; with a group it limits the rule to one family.
    public var ethertype: IPFamily?

    public init(id: String? = nil, direction: Direction = .ingress, proto: RuleProtocol, ports: ClosedRange<UInt16>? = nil,
                icmpType: UInt8? = nil, icmpCode: UInt8? = nil, remote: Remote, ethertype: IPFamily? = nil) {
        self.id = id
        self.direction = direction
        self.proto = proto
        self.ports = ports
        self.icmpType = icmpType
        self.icmpCode = icmpCode
        self.remote = remote
        self.ethertype = ethertype
    }

    /// The families this rule compiles to: one kernel rule per family.
    /// A cidr fixes the family; a group gives both unless `ethertype` or an ICMP protocol narrows it.
    public var families: [IPFamily] {
        switch remote {
        case .cidr(let p): return [p.family]
        case .group:
            if let e = ethertype { return [e] }
            if proto == .icmp { return [.ipv4] }
            if proto == .icmpv6 { return [.ipv6] }
            return [.ipv4, .ipv6]
        }
    }
}

/// An instance (a VM or container) with its addresses and groups.
public struct Instance: Hashable, Sendable {
    /// Where it runs.
    public var host: String
    /// Its groups in document order (order decides the order of jumps in its chains).
    public var groups: [String]
    /// Its addresses (at least one).
    public var ips: [IPAddress]
    /// Host-side interface; required when `host` is this document's host.
    public var interface: String?
    /// Source MAC its frames must carry, when given.
    public var mac: MACAddress?

    /// The most groups an instance on a host may have (repeats counted once): EC2's limit per
    /// network interface, and the number of group slots the nftables layout gives an instance
    /// (docs/nftables.md). An instance of another host is not held to it by this host.
    public static let maxGroups = 16

    public init(host: String, groups: [String] = [], ips: [IPAddress], interface: String? = nil, mac: MACAddress? = nil) {
        self.host = host
        self.groups = groups
        self.ips = ips
        self.interface = interface
        self.mac = mac
    }
}
