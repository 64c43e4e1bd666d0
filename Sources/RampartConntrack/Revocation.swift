#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import RampartCore
import RampartNetlink
import RampartSystem

/// Revocation is immediate (contract rule 8): after a commit that narrowed the policy, the
/// conntrack entries the new policy no longer allows are deleted, so that `ct state established`
/// cannot keep a revoked connection alive.
///
/// For each candidate entry the packet that opened it is rebuilt from its tuples (original
/// direction, state new, a TCP SYN; the input device is the source instance's interface, the
/// output device the destination instance's, an outside placeholder otherwise, none for the host
/// itself) and evaluated with `Evaluate.packet` against the committed IR: exactly the verdict the
/// kernel would give that first packet today. Entries it drops are deleted over ctnetlink; entries
/// still allowed are not touched.
public enum Revocation {
    /// What a run did.
    public struct Report: Hashable, Sendable, CustomStringConvertible {
        /// Entries deleted (the summary's `conntrack: N cut`).
        public var cut = 0
        /// Entries to delete that were already gone.
        public var alreadyGone = 0
        /// Entries that crossed into user space (after the kernel's filtering).
        public var examined = 0
        /// Entries evaluated (those with a local instance at one end).
        public var evaluated = 0
        /// Dump requests sent.
        public var dumps = 0
        /// Whether the entries came from a fresh `ConntrackIndex` (no dump).
        public var indexed = false
        /// The table's size when the run chose how to dump (nil: not asked).
        public var tableSize: Int?
        /// Whether the run looked at the whole table (per family) or only at affected addresses.
        public var scope: Scope = .none
        public var nanoseconds: UInt64 = 0
        /// Of which: finding and evaluating the entries (dumps or the index), and deleting them.
        public var findNanoseconds: UInt64 = 0
        public var deleteNanoseconds: UInt64 = 0

        public init() {}

        public var description: String {
            "conntrack: \(cut) cut"
        }
    }

    /// Which entries a run looks at.
    public enum Scope: Hashable, Sendable {
        /// The plan only adds access: nothing to do.
        case none
        /// Entries with one of these addresses at one end (kernel-side filtered dumps).
        case addresses(Set<IPAddress>)
        /// Every entry of the families with local instances.
        case all
    }

    /// The name evaluation gives the device of a packet's outside end: a space cannot be in an
    /// interface name, so it is in no set and matches no guarded prefix.
    public static let outsideInterface = " outside"

    /// The cost model that picks filtered walks or one whole dump, in nanoseconds, measured on
    /// this kernel (`costsWithABigTable`, docs/conntrack.md). Every dump, filtered or not, walks
    /// the kernel's whole conntrack hash: all its buckets (~11 ms for 262,144 buckets, even with
    /// an empty namespace) and every entry (~0.25 µs each); a whole dump also carries and parses
    /// every entry of the namespace (~5.4 µs each, debug build).
    public static let walkBase = 11_000_000
    public static let walkPerEntry = 250
    public static let carriedPerEntry = 5_400

    /// Whether `walks` filtered walks cost less than one whole dump of a table of `size` entries.
    public static func filteredIsCheaper(walks: Int, size: Int) -> Bool {
        walks * (walkBase + size * walkPerEntry) < walkBase + size * (walkPerEntry + carriedPerEntry)
    }

    // MARK: the run

    /// Finds and deletes the entries the committed `ir` no longer allows. `departed` are
    /// addresses that belonged to a local instance before the change and to none now (an
    /// instance removed, an address taken away): every entry with one of them at one end is cut,
    /// since its instance is gone. `hostAddresses` are the hypervisor's own addresses (their
    /// end of a connection is the host itself: the input or output hook).
    ///
    /// With a fresh `index` (of the same namespace), the entries are looked up in it and no dump
    /// is sent: the same entries are evaluated (every indexed entry with an address of the scope
    /// at one end; for `.all`, those with a local instance's or a departed address at one end)
    /// and deleted the same way. A stale index (events were lost, or it is rebuilding) answers
    /// nil and the run dumps as without one.
    public static func run(_ conntrack: ConntrackConnection, ir: RulesetIR, scope: Scope,
                           departed: Set<IPAddress> = [], hostAddresses: Set<IPAddress> = [],
                           index: ConntrackIndex? = nil, local: (any LocalInstances)? = nil) throws(NetlinkError) -> Report {
        try run(conntrack, ir: ir, scope: scope, departed: departed, hostAddresses: { () throws(NetlinkError) in hostAddresses }, index: index, local: local)
    }

    /// `run`, reading the host's addresses (`hostAddresses`) only if an entry needs them: a run
    /// that finds no entry (the common case with an index: nothing connected) costs neither
    /// that read nor the evaluator's set-up, which both grow with the host. `local` describes
    /// `ir` (a daemon passes its engine, whose indexes answer without a walk; nil: `ir` answers,
    /// indexing itself on the first entry found).
    public static func run(_ conntrack: ConntrackConnection, ir: RulesetIR, scope: Scope,
                           departed: Set<IPAddress> = [], hostAddresses readHostAddresses: () throws(NetlinkError) -> Set<IPAddress>,
                           index: ConntrackIndex? = nil, local view: (any LocalInstances)? = nil) throws(NetlinkError) -> Report {
        let start = DispatchTime.now().uptimeNanoseconds
        var report = Report()
        report.scope = scope
        let local = view ?? IRLocalInstances(ir)
        let sourcePortsRead = Lazily { Revocation.sourcePortsRead(by: ir) }  // a walk of the IR: only if an entry is found
        var hostAddressesCache: Set<IPAddress>?  // read only if an entry needs it (its read throws)
        var doomed: [ConntrackEntry] = []
        var seen: Set<ConntrackEntry> = []
        // What each flow pattern came to, keyed by the tuple the policy sees (integers: cheaper
        // to hash than the packet with its interface names): the entries of a revoked service
        // are mostly one pattern with many source ports, evaluated once. The source port is in
        // the key only where a rule reads it (`udp sport`).
        var outcomes: [ConntrackTuple: Outcome] = [:]

        func consider(_ e: ConntrackEntry) throws(NetlinkError) {
            report.examined += 1
            // A related connection (FTP data, ...) passed as `ct state related`: it stands or
            // falls with the connection that expected it, so that one's first packet is evaluated.
            let t = e.master ?? e.original
            let source = IPAddress(t.source, t.family)
            // The destination the policy saw: after destination NAT, the reply's source.
            let destination = e.master != nil ? IPAddress(t.destination, t.family)
                : e.reply.map { IPAddress($0.source, $0.family) } ?? IPAddress(t.destination, t.family)
            if departed.contains(source) || departed.contains(destination) {
                doomed.append(e)
                return
            }
            let ports = [6, 17, 132, 33, 136].contains(t.protocolNumber)
            let destinationPort = ports ? (e.master == nil ? e.reply?.sourcePort ?? t.destinationPort : t.destinationPort) : nil
            var pattern = t
            pattern.destination = destination.conntrack
            pattern.destinationPort = destinationPort
            pattern.icmpID = nil
            if !ports { pattern.sourcePort = nil } else if let p = t.sourcePort, !sourcePortsRead.value.contains(p) { pattern.sourcePort = 0 }
            if let known = outcomes[pattern] {
                if known != .notAnInstances { report.evaluated += 1 }
                if known == .refused { doomed.append(e) }
                return
            }
            let sourceIface = local.interface(of: source)
            let destinationIface = local.interface(of: destination)
            guard sourceIface != nil || destinationIface != nil else {  // not an instance's
                outcomes[pattern] = .notAnInstances
                return
            }
            let hostAddresses: Set<IPAddress>
            if let h = hostAddressesCache { hostAddresses = h } else { hostAddresses = try readHostAddresses() }
            hostAddressesCache = hostAddresses
            let input = sourceIface ?? (hostAddresses.contains(source) ? nil : outsideInterface)
            let output = destinationIface ?? (hostAddresses.contains(destination) ? nil : outsideInterface)
            let packet = PacketDescription(
                from: input, to: output, source: source, destination: destination, protocolNumber: t.protocolNumber,
                sourcePort: pattern.sourcePort, destinationPort: destinationPort,
                icmpType: t.icmpType, icmpCode: t.icmpCode, connectionState: .new, tcpFlags: 0x02)
            report.evaluated += 1
            let allowed = Evaluate.packet(packet, in: ir).allowed
            outcomes[pattern] = allowed ? .allowed : .refused
            if !allowed { doomed.append(e) }
        }

        switch scope {
        case .none:
            break
        case .all:
            if let index, let found = index.entries(involving: local.everyAddress.union(departed)) {
                report.indexed = true
                for e in found { try consider(e) }
                break
            }
            // One walk for both families (a family filter would not make the walk shorter).
            report.dumps += 1
            try conntrack.dump(.all) { (e) throws(NetlinkError) in try consider(e) }
        case .addresses(let addresses):
            let wanted = addresses.union(departed)
            if let index, let found = index.entries(involving: wanted) {
                report.indexed = true
                for e in found { try consider(e) }
                break
            }
            let families = Set(wanted.map(\.family.conntrack))
            // Two filtered walks per address (original source, original destination), or one
            // whole dump (of one family, or both): whichever costs less, given the table's size now.
            let filteredWalks = 2 * wanted.count
            let size = try conntrack.count()
            report.tableSize = size
            if !filteredIsCheaper(walks: filteredWalks, size: size) {
                report.dumps += 1
                let filter = families.count == 1 ? ConntrackFilter(family: families.first!) : .all
                try conntrack.dump(filter) { (e) throws(NetlinkError) in
                    let f = e.original.family
                    let s = IPAddress(e.original.source, f), d = IPAddress(e.original.destination, f)
                    let r = e.reply.map { IPAddress($0.source, f) }
                    if wanted.contains(s) || wanted.contains(d) || r.map(wanted.contains) == true { try consider(e) }
                }
            } else {
                for a in wanted.sorted() {
                    for field in [ConntrackFilter.Field.originalSource(a.conntrack), .originalDestination(a.conntrack)] {
                        report.dumps += 1
                        try conntrack.dump(ConntrackFilter(family: a.family.conntrack, field: field)) { (e) throws(NetlinkError) in
                            // An entry with the address at both ends comes twice.
                            if seen.insert(e).inserted { try consider(e) }
                        }
                    }
                }
            }
        }
        let found = DispatchTime.now().uptimeNanoseconds
        report.findNanoseconds = found - start
        if !doomed.isEmpty {
            // Deleted, not expired (timeout 0, 2–5× cheaper): a packet of a busy flow that found
            // the entry just before would refresh its timeout and bring it back to life, and the
            // kernel refuses a timeout change on an entry whose timeout was frozen first
            // (docs/conntrack.md, "Tried and not kept").
            // Through the index when it found them: it leaves the DESTROY events out meanwhile.
            let d = try report.indexed && index != nil
                ? index!.deleting(doomed) { (e) throws(NetlinkError) in try conntrack.delete(e) }
                : conntrack.delete(doomed)
            report.cut = d.deleted
            report.alreadyGone = d.alreadyGone
        }
        let end = DispatchTime.now().uptimeNanoseconds
        report.deleteNanoseconds = end - found
        report.nanoseconds = end - start
        return report
    }


    /// The addresses of the network namespace's own devices (the hypervisor's), read with
    /// getifaddrs from inside it.
    public static func hostAddresses(in namespace: NetworkNamespace) throws(NetlinkError) -> Set<IPAddress> {
        try namespace.run { () throws(NetlinkError) -> Set<IPAddress> in
            var list: UnsafeMutablePointer<ifaddrs>?
            guard getifaddrs(&list) == 0 else { throw .systemCall("getifaddrs", Errno(errno)) }
            defer { freeifaddrs(list) }
            var out: Set<IPAddress> = []
            var p = list
            while let i = p {
                defer { p = i.pointee.ifa_next }
                guard let sa = i.pointee.ifa_addr else { continue }
                switch Int32(sa.pointee.sa_family) {
                case AF_INET:
                    let v = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
                    out.insert(.v4(IPv4Address(raw: v)))
                case AF_INET6:
                    let (hi, lo) = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { s -> (UInt64, UInt64) in
                        withUnsafeBytes(of: s.pointee.sin6_addr) { b in
                            (UInt64(bigEndian: b.loadUnaligned(as: UInt64.self)), UInt64(bigEndian: b.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
                        }
                    }
                    out.insert(.v6(IPv6Address(hi: hi, lo: lo)))
                default: break
                }
            }
            return out
        }
    }
}

/// What the evaluation of one flow pattern came to (`Revocation.run`).
enum Outcome { case notAnInstances, allowed, refused }

/// A value built on first use: what walks the whole IR is built only by a run that needs it.
final class Lazily<Value> {
    private let make: () -> Value
    private var built: Value?
    init(_ make: @escaping () -> Value) { self.make = make }
    var value: Value {
        if let v = built { return v }
        let v = make()
        built = v
        return v
    }
}

extension Revocation {
    /// The source ports some rule of `ir` matches (`udp sport`): the only ones that can change a
    /// verdict, so the only ones a flow pattern keeps.
    static func sourcePortsRead(by ir: RulesetIR) -> Set<UInt16> {
        var ports: Set<UInt16> = []
        for c in ir.chains.values {
            for r in c.rules {
                for m in r.matches { if case .udpSport(let p) = m { ports.insert(p) } }
            }
        }
        return ports
    }
}

extension IPAddress {
    init(_ a: ConntrackAddress, _ family: ConntrackFamily) {
        switch family {
        case .ipv4: self = .v4(IPv4Address(raw: UInt32(truncatingIfNeeded: a.low)))
        case .ipv6: self = .v6(IPv6Address(hi: a.high, lo: a.low))
        }
    }

    /// The address as ctnetlink carries it.
    public var conntrack: ConntrackAddress {
        switch self {
        case .v4(let a): ConntrackAddress(ipv4: a.raw)
        case .v6(let a): ConntrackAddress(high: a.hi, low: a.lo)
        }
    }
}

extension IPFamily {
    /// The family as ctnetlink names it.
    public var conntrack: ConntrackFamily { self == .ipv4 ? .ipv4 : .ipv6 }
}
