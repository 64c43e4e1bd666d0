import Crypto
import RampartCore
import RampartNetlink

/// How the nftables backend lays out the dispatch from an instance's interface to the chains of
/// its groups. The core's IR describes it logically (an `in-`/`out-` chain per instance, reached
/// through the interface → verdict maps `to-inst`/`from-inst`); the layout decides what the
/// kernel holds for it.
public enum NFTLayout: String, Sendable, CaseIterable {
    /// No per-instance object but map elements: `inst-groups` maps (interface, slot) to the group
    /// in that slot, `groups-in`/`groups-out` map a group to a jump to its chain, and one shared
    /// chain per direction (`dispatch-in`/`dispatch-out`) looks the slots up in order. A plug,
    /// unplug or groups change is a few data-map elements (no chain, no jump element: no
    /// commit-time validation walk); a rules change walks the group chains only. The default.
    case slots
    /// The layout before: two chains per instance (`in-<id>`/`out-<id>`, a jump per group) reached
    /// through the interface → verdict maps. Kept so that the benchmark can measure both.
    case instanceChains
}

/// The slot layout's names, keys and fixed rules (docs/nftables.md, "Kernel layout").
///
/// For each local instance with groups g0 … gn-1 on interface I, `inst-groups` holds
/// `I . 0 : key(g0)`, …, `I . n-1 : key(gn-1)` and the end marker `I . n : 0` (each element
/// commented with its group's id, the end marker with the instance's). `dispatch-out` has one
/// rule per slot, in order: `iifname . k` looked up in `inst-groups`, the key found looked up
/// in `groups-out` (`key(g) : jump gout-g`, or a chain shared by every group whose rules accept
/// all of a family, `GroupForm`; `0 : drop`), so a packet is offered to each group's chain in turn
/// and dropped at the end marker; a final `drop` catches an interface without
/// elements. nft's syntax cannot express such chained lookups; see `slotRule` for how nft 1.0.6
/// is kept able to list them.
///
/// A group's key is the first 12 bytes of HMAC-SHA256(table secret, group id): fixed length (ids
/// run to 64 bytes), and no one can choose ids whose keys collide without knowing the table's
/// secret (16 random bytes made with the table, kept in its userdata).
enum Slots {
    /// (interface . slot) → group key; the comments name groups and, on the end marker, the instance.
    static let instanceGroups = "inst-groups"
    /// Bytes of a group key in `inst-groups` (a value) and in the groups maps (a key, after a
    /// zero word: see `slotRule`).
    static let keyBytes = 12
    static let groupKeyBytes = 16
    /// The end marker's key.
    static let endKey = [UInt8](repeating: 0, count: keyBytes)

    /// One direction of dispatch: `out` for traffic from an instance (its egress, `iifname`),
    /// `in` for traffic to it (`oifname`).
    enum Direction: CaseIterable, Hashable, Sendable {
        case out, `in`

        /// group key → jump to the group's chain of this direction.
        var groupsMap: String { self == .out ? "groups-out" : "groups-in" }
        /// The chain that walks an instance's slots.
        var dispatchChain: String { self == .out ? "dispatch-out" : "dispatch-in" }
        /// The core's logical dispatch map of this direction.
        var logicalMap: String { self == .out ? Naming.fromInstanceMap : Naming.toInstanceMap }
        var interfaceKey: NFTMetaKey { self == .out ? .iifname : .oifname }
        /// Prefix of the core's per-instance chains and of its group chains in this direction.
        var instancePrefix: String { self == .out ? "out-" : "in-" }
        var groupPrefix: String { self == .out ? "gout-" : "gin-" }

        init?(logicalMap m: String) {
            switch m {
            case Naming.fromInstanceMap: self = .out
            case Naming.toInstanceMap: self = .in
            default: return nil
            }
        }
    }

    /// Names the slot layout gives kernel objects, which no id-derived name can take (ids never
    /// start a name: every derived name has a prefix such as `in-`, `gin-`, `m4-`).
    static let objectNames: Set<String> = Set([instanceGroups, "groups-out", "groups-in", "dispatch-out", "dispatch-in",
                                               Members.set4, Members.set6]).union(AcceptAll.chainNames)

    /// Every group's member addresses in one set per family, keyed `tag . address`, instead of
    /// the core's set per group and family (`m4-<g>`, `m6-<g>`).
    ///
    /// Why: the kernel finds an element message's set by walking the table's sets comparing
    /// names (`nft_set_lookup`), so with a set per referenced group a membership change or a plug
    /// paid a walk of up to thousands of names (host-10k with 2,000 groups: ~3,500 sets), and a
    /// plug sent one message per group of the instance. Here a plug sends one message per family
    /// whatever its groups, and every lookup by name finds its set among a dozen. A packet pays
    /// one immediate more per remote-group rule of a new flow, and looks up a set of every
    /// group's members rather than a small one (measured: a new flow +0.4 to +1.0 µs against the
    /// instance-chains layout, against +0.4 to +0.7 µs with a set per group; established packets
    /// never reach a group chain).
    ///
    /// A group's tag is its kernel id when that fits an interface name (at most 15 bytes), so
    /// that `nft list` shows `"web" . ip saddr @members4`; a longer id becomes `#` and 15
    /// characters of the base64url SHA-256 of the id (90 bits: no two groups share one, and no
    /// id can be chosen to take another's, since `#` is never part of an id). Every element is
    /// commented with its group's id.
    enum Members {
        static let set4 = "members4"
        static let set6 = "members6"

        static func set(_ f: IPFamily) -> String { f == .ipv4 ? set4 : set6 }

        static func definition(_ f: IPFamily, table: String) -> NFTSetDefinition {
            NFTSetDefinition(family: Translate.family, table: table, name: set(f), keyType: f == .ipv4 ? .ifnameIPv4 : .ifnameIPv6,
                             comment: "group tag . address: the members (any host) of each group some rule here names")
        }

        /// (family, group kernel id) of a core member-set name (`m4-<g>`, `m6-<g>`).
        static func group(ofSet name: String) -> (IPFamily, String)? {
            if name.hasPrefix("m4-") { return (.ipv4, String(name.dropFirst(3))) }
            if name.hasPrefix("m6-") { return (.ipv6, String(name.dropFirst(3))) }
            return nil
        }

        /// The core's member-set name for a group's kernel id.
        static func logicalSet(_ f: IPFamily, _ group: String) -> String { (f == .ipv4 ? "m4-" : "m6-") + group }

        /// The 16-byte tag of a group (its kernel id, NUL-padded, or `#` and a digest).
        static func tag(_ group: String) -> [UInt8] {
            let id = Array(group.utf8)
            if id.count <= 15 { return id + [UInt8](repeating: 0, count: 16 - id.count) }
            let digest = Array(SHA256.hash(data: id))
            let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
            var out: [UInt8] = [UInt8(ascii: "#")]
            var bits = 0, acc = 0
            for b in digest where out.count < 16 {
                acc = acc << 8 | Int(b)
                bits += 8
                while bits >= 6 && out.count < 16 {
                    bits -= 6
                    out.append(alphabet[(acc >> bits) & 63])
                }
            }
            return out
        }

        /// The group's elements for these addresses, its tag computed once (a long id's tag is
        /// a SHA-256: a deleted member set names thousands of elements).
        static func elements<S: Sequence<SetElement>>(_ group: String, _ addresses: S) -> [NFTSetElement] {
            let t = tag(group)
            return addresses.compactMap { e in
                switch e {
                case .ipv4(let a): NFTSetElement(key: t + Translate.bytes(a), comment: group)
                case .ipv6(let a): NFTSetElement(key: t + Translate.bytes(a), comment: group)
                default: nil
                }
            }
        }

        /// The group a tag names without help: a short id is its own tag (a digest needs the id).
        static func literalGroup(_ t: [UInt8]) -> String? {
            guard t.count == 16, t.first != UInt8(ascii: "#") else { return nil }
            let id = String(decoding: t.prefix { $0 != 0 }, as: UTF8.self)
            return !id.isEmpty && tag(id) == t ? id : nil
        }

        /// (group, address) of an element: the group its comment names if the tag is that
        /// group's, else the group a short tag spells (an element added by hand without a
        /// comment still reads back as that group's member, and is repaired as one); nil for an
        /// element whose tag names no group it can tell.
        /// `tags`: tags already computed, by group (a read-back parses every member of every
        /// group; a long id's tag is a SHA-256).
        static func parse(_ e: NFTSetElement, _ f: IPFamily, tags: inout [String: [UInt8]]) -> (group: String, element: SetElement)? {
            guard e.data == nil, e.verdict == nil, e.key.count == (f == .ipv4 ? 20 : 32) else { return nil }
            let t = Array(e.key[0..<16])
            func tagOf(_ g: String) -> [UInt8] {
                if let known = tags[g] { return known }
                let computed = tag(g)
                tags[g] = computed
                return computed
            }
            guard let g = e.comment.flatMap({ tagOf($0) == t ? $0 : nil }) ?? literalGroup(t) else { return nil }
            let addr = Array(e.key[16...])
            switch f {
            case .ipv4: return Translate.ipv4(addr).map { (g, .ipv4($0)) }
            case .ipv6: return Translate.ipv6(addr).map { (g, .ipv6($0)) }
            }
        }

        /// A member-set lookup as the slot layout writes it: `tag . ip saddr @members4` (the tag
        /// into r1, the address into r2, the concatenation looked up).
        static func lookup(_ f: IPFamily, group: String, field: NFTMatch.AddressField) -> [NFTExpr] {
            let (offset, length) = field.location(ipv6: f == .ipv6)
            return [.immediate(dreg: .r1, data: tag(group)), .payload(base: .network, offset: offset, length: length, dreg: .r2),
                    .lookup(set: set(f), sreg: .r1, dreg: nil, inverted: false)]
        }
    }

    /// The logical chain a name denotes, if it is a per-instance or group chain.
    enum ChainRole: Equatable {
        case instance(Direction, String)  // the kernel id after the prefix
        case group(Direction, String)
    }

    /// A chain's role without its id: for the many places that only ask which kind a chain
    /// is (a commit's summary asks for every op), without allocating the id.
    enum ChainKind: Equatable {
        case instance(Direction), group(Direction)
    }

    static func kind(of chain: String) -> ChainKind? {
        for d in Direction.allCases where chain.hasPrefix(d.groupPrefix) { return .group(d) }
        for d in Direction.allCases where chain.hasPrefix(d.instancePrefix) { return .instance(d) }
        return nil
    }

    static func isGroupChain(_ chain: String) -> Bool {
        if case .group? = kind(of: chain) { true } else { false }
    }

    static func role(of chain: String) -> ChainRole? {
        switch kind(of: chain) {
        case .group(let d)?: .group(d, String(chain.dropFirst(d.groupPrefix.count)))
        case .instance(let d)?: .instance(d, String(chain.dropFirst(d.instancePrefix.count)))
        case nil: nil
        }
    }

    // MARK: keys and values

    /// `ifname . slot`: 16 bytes of name, then the slot as a 32-bit word in host order (the
    /// concatenation's second register; nft prints a `mark` in host order).
    static func key(_ iface: String, _ slot: Int) -> [UInt8] {
        NFTMatch.ifnameBytes(iface) + slotWord(slot)
    }

    static func slotWord(_ slot: Int) -> [UInt8] {
        withUnsafeBytes(of: UInt32(slot)) { Array($0) }
    }

    /// (interface, slot) of an `inst-groups` key.
    static func parseKey(_ k: [UInt8]) -> (iface: String, slot: Int)? {
        guard k.count == 20 else { return nil }
        let slot = k[16..<20].withUnsafeBytes { Int($0.loadUnaligned(as: UInt32.self)) }
        return (Translate.ifname(Array(k[0..<16])), slot)
    }

    /// A new table's secret.
    static func newSecret() -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<16).map { _ in UInt8.random(in: 0...255, using: &g) }
    }

    // MARK: definitions and rules

    static func instanceGroupsDefinition(table: String) -> NFTSetDefinition {
        var d = NFTSetDefinition(family: Translate.family, table: table, name: instanceGroups, keyType: .ifnameMark, dataType: .integer,
                                 comment: "interface . slot : group key; after the last group: 0, the end")
        d.dataLength = UInt32(keyBytes)
        return d
    }

    static func groupsMapDefinition(_ d: Direction, table: String) -> NFTSetDefinition {
        var def = NFTSetDefinition(family: Translate.family, table: table, name: d.groupsMap, keyType: .integer, isVerdictMap: true,
                                   comment: "group key : jump to the group's \(d == .out ? "egress" : "ingress") chain; 0 : drop")
        def.keyLength = UInt32(groupKeyBytes)
        return def
    }

    /// Rule `k` of a dispatch chain: the group in slot `k`, then its chain.
    ///
    /// The kernel reads: key `iifname . k` (r1, r2) looked up in `inst-groups`, the 12-byte value
    /// stored in r3's words 1–3, then r3 (a zero word and that value) looked up in the groups map.
    /// The zero immediate into r3 comes first; it is what nft 1.0.6 believes r3 holds when it
    /// decodes the second lookup (it tracks a register by the expression that started it and
    /// crashes, `netlink_parse_concat_expr: consumed > 0`, on a lookup keyed by another
    /// lookup's result), so `nft list` prints the rule as `0x0 vmap @groups-out` with its
    /// comment, instead of failing for the whole ruleset.
    static func slotRule(_ d: Direction, _ k: Int) -> [NFTExpr] {
        [.meta(key: d.interfaceKey, dreg: .r1), .immediate(dreg: .r2, data: slotWord(k)),
         .immediate(dreg: .r3, data: [UInt8](repeating: 0, count: groupKeyBytes)),
         .lookup(set: instanceGroups, sreg: .r1, dreg: .r32_09, inverted: false),
         .lookup(set: d.groupsMap, sreg: .r3, dreg: .verdict, inverted: false)]
    }

    /// The comment of a dispatch rule, for whoever reads `nft list`.
    static func slotComment(_ d: Direction, _ k: Int) -> String {
        "slot \(k): \(d == .out ? "iifname" : "oifname") . \(k) map @\(instanceGroups) vmap @\(d.groupsMap)"
    }

    /// The dispatch chain's rules for `slots` slots, then the catch-all drop.
    static func dispatchRules(_ d: Direction, slots: Int) -> [[NFTExpr]] {
        (0..<slots).map { slotRule(d, $0) } + [[.verdict(.drop)]]
    }

    /// What a base chain's `iifname vmap @from-inst` / `oifname vmap @to-inst` becomes: every
    /// instance interface goes through the dispatch chain, which ends in drop.
    static func entryRule(_ d: Direction) -> [NFTExpr] {
        NFTMatch.interface(d.interfaceKey, inSet: Naming.instanceInterfaces) + [.verdict(.jump(d.dispatchChain))]
    }
}

/// Group keys under one table secret.
struct SlotKeys: Sendable, Equatable {
    let secret: [UInt8]

    /// The value `inst-groups` holds for a group.
    func value(_ group: String) -> [UInt8] {
        let mac = HMAC<SHA256>.authenticationCode(for: Array(group.utf8), using: SymmetricKey(data: secret))
        return Array(Array(mac).prefix(Slots.keyBytes))
    }

    /// The key of a group in the groups maps.
    func mapKey(_ group: String) -> [UInt8] { [0, 0, 0, 0] + value(group) }

    func groupElement(_ d: Slots.Direction, _ group: String) -> NFTSetElement {
        NFTSetElement(key: mapKey(group), verdict: .jump(d.groupPrefix + group), comment: group)
    }

    /// The end marker's element in a groups map.
    static let endElement = NFTSetElement(key: [0, 0, 0, 0] + Slots.endKey, verdict: .drop, comment: "the end: no group accepted")
}

/// One interface's slots as the kernel holds them: slot → (value, comment).
typealias SlotEntries = [Int: SlotEntry]

struct SlotEntry: Hashable, Sendable {
    var value: [UInt8]
    /// The group's id; on the end marker, the instance's.
    var comment: String?
}

/// What the kernel holds of the slot layout's objects, so that a commit sends only differences.
/// Valid for the backend's mirror; reset when the table is created or deleted.
struct SlotState: Sendable {
    /// The table's secret (nil: no table, or a table without one).
    var keys: SlotKeys?
    var hasInstanceGroups = false
    /// Groups in each existing groups map (the end marker is not listed).
    var groups: [Slots.Direction: Set<String>] = [:]
    /// Slot rules each existing dispatch chain holds (it only grows while the table lives, so
    /// that a plug never rewrites it unless it brings more groups than any instance before).
    var dispatchSlots: [Slots.Direction: Int] = [:]
    /// `inst-groups` by interface.
    var entries: [String: SlotEntries] = [:]
    /// Instance kernel id → its interface (from the end markers' comments).
    var interfaceOf: [String: String] = [:]
    /// The `members` sets that exist (they live as long as the table).
    var hasMembers: Set<IPFamily> = []
    /// The core's member sets (`m4-<g>`, `m6-<g>`) and their addresses, as the `members` sets
    /// hold them: a deleted member set's elements must be named to be removed.
    var memberSets: [String: Set<SetElement>] = [:]

    /// Group chains as the kernel holds them when their rules are elements (`RuleShapes`): every
    /// group chain of the table, from the read-back or from the batches since.
    var groupChains: [String: RuleShapes.Lowered] = [:]
    /// The shapes' sets that exist (they live as long as the table).
    var shapeSets: Set<String> = []
    /// Groups whose element in a groups map jumps to a shared chain (`GroupForm.acceptsAll`),
    /// with the families it accepts; they have no chain of their own.
    var acceptsAll: [Slots.Direction: [String: Set<IPFamily>]] = [:]
    /// The shared chains that exist (`Slots.AcceptAll`; they live as long as the table).
    var acceptAllChains: Set<String> = []

    /// The sized sets that exist, with their element counts and sizes (`SetSizes`).
    var sizedSets: [String: SetFill] = [:]

    /// Group → its `inst-groups` value under `keys`, each computed once: an HMAC is a few
    /// microseconds, and a plug or unplug would otherwise pay one per group of the instance.
    /// Emptied with the rest of the state when the table (and so its secret) changes.
    var valueCache: [String: [UInt8]] = [:]

    /// The value of `group` under `keys`, from the cache.
    mutating func value(_ group: String, keys: SlotKeys) -> [UInt8] {
        if let v = valueCache[group] { return v }
        let v = keys.value(group)
        valueCache[group] = v
        return v
    }

    /// The elements an interface should hold for an instance with these groups.
    mutating func entries(instance: String, groups: [String], keys: SlotKeys) -> SlotEntries {
        var e: SlotEntries = [:]
        for (k, g) in groups.enumerated() { e[k] = SlotEntry(value: value(g, keys: keys), comment: g) }
        e[groups.count] = SlotEntry(value: Slots.endKey, comment: instance)
        return e
    }

    /// (instance, groups) when the entries are well formed: groups in slots 0 … n-1, each with
    /// its own key, the end marker with the instance's id in slot n, nothing after it.
    static func decode(_ e: SlotEntries, keys: SlotKeys?) -> (instance: String, groups: [String])? {
        guard let endSlot = e.first(where: { $0.value.value == Slots.endKey })?.key, e.count == endSlot + 1,
              endSlot <= Instance.maxGroups, let id = e[endSlot]?.comment, !id.isEmpty else { return nil }
        var groups: [String] = []
        for k in 0..<endSlot {
            guard let g = e[k], let name = g.comment, keys.map({ $0.value(name) == g.value }) ?? true else { return nil }
            groups.append(name)
        }
        return (id, groups)
    }

    /// `inst-groups` elements by interface, or nil when one is not an element Rampart writes.
    static func entries(_ elements: [NFTSetElement]) -> [String: SlotEntries]? {
        var out: [String: SlotEntries] = [:]
        for e in elements {
            guard let (iface, slot) = Slots.parseKey(e.key), let data = e.data, data.count == Slots.keyBytes, e.verdict == nil,
                  out[iface]?[slot] == nil else { return nil }
            out[iface, default: [:]][slot] = SlotEntry(value: data, comment: e.comment)
        }
        return out
    }
}
