import RampartCore
import RampartNetlink

/// A group chain's rules as elements of shared sets, so that an ordinary rule edit is an element
/// delta (docs/nftables.md, "Group rules as elements").
///
/// Why: the kernel re-validates the whole table (every group chain, every element of the groups
/// maps) at the commit of any batch that adds a rule, never for elements of a set without jump
/// verdicts. With a group's rules as rules, adding or changing one costs that walk, which grows
/// with the groups on the host (~5 ms at 2,000 groups); as an element it costs what a
/// membership change costs.
///
/// A group rule's *shape* is what it matches on — its family, its remote side's kind (any
/// address, a prefix of one length, the members of one group) and which of protocol, port, ICMP
/// type and code it names — and its *content* is the values. A group chain holds one rule per
/// shape it uses; that rule builds a key from the packet (the group's tag, the remote part, the
/// protocol and port or type and code) and looks it up in the shape's set, shared by every
/// group, whose elements are `tag(group) . [remote] . protocol . port …` with the rule's comment:
///
/// ```
/// chain gin-web
///   meta nfproto ipv4 "admin" . ip saddr @members4 "web" . "admin" . meta l4proto . th dport @rules4-in-grp-pp counter accept
///   meta nfproto ipv4 "web" . meta l4proto . th dport @rules4-in-any-pp counter accept
/// set rules4-in-grp-pp  elements = { "web" . "admin" . tcp . 22 comment "web/ssh", … }
/// set rules4-in-any-pp  elements = { "web" . tcp . 80 comment "web/http", "web" . tcp . 443 comment "web/https", … }
/// ```
///
/// So changing a port, adding a rule of a shape the group already uses or removing one (while
/// another of its shape stays) sends elements only; a new shape — typically a new remote group
/// — adds a rule (and the walk). A rule no shape can hold (a port range, which a hash set cannot
/// match) stays a rule of its own after the shape rules. Group chains only accept, so the order
/// of their rules does not change what they allow.
///
/// The tag is the group's `members` tag (its id, or `#` and a digest for ids over 15 bytes),
/// unique per group, so a lookup from one group's chain can never find another group's element;
/// the sets are per family and direction, a prefix's length is part of its set's name, and a
/// remote group's tag is part of the key, so no element can be found by a shape it was not
/// written for.
enum RuleShapes {
    /// The remote side, as far as the shape goes.
    enum Remote: Hashable, Sendable {
        /// Any address of the family (`0.0.0.0/0`, `::/0`).
        case any
        /// A prefix of this length (1 … 32 or 128).
        case prefix(UInt8)
        /// The members of this group (kernel id).
        case group(String)
    }

    /// What the key names after the tag and the remote part.
    enum Fields: String, Hashable, Sendable {
        /// Nothing: any protocol.
        case all
        /// The protocol.
        case p
        /// Protocol and destination port.
        case pp
        /// Protocol and ICMP type.
        case pt
        /// Protocol, ICMP type and code.
        case ptc
    }

    struct Shape: Hashable, Sendable {
        var family: IPFamily
        var direction: Slots.Direction
        var remote: Remote
        var fields: Fields

        private var remoteName: String {
            switch remote {
            case .any: "any"
            case .prefix(let l): "net\(l)"
            case .group: "grp"
            }
        }

        /// `rules4-in-grp-pp`: one set per family, direction, remote kind (and prefix length)
        /// and fields.
        var setName: String {
            "\(RuleShapes.setPrefix)\(family == .ipv4 ? "4" : "6")-\(direction == .in ? "in" : "out")-\(remoteName)-\(fields.rawValue)"
        }

        private var addressBytes: Int { family == .ipv4 ? 4 : 16 }
        private var field: NFTMatch.AddressField { direction == .in ? .source : .destination }

        /// Bytes of the remote part of the key.
        var remoteLength: Int {
            switch remote {
            case .any: 0
            case .prefix: addressBytes
            case .group: 16
            }
        }

        var fieldWords: Int {
            switch fields {
            case .all: 0
            case .p: 1
            case .pp, .pt: 2
            case .ptc: 3
            }
        }

        var keyLength: Int { 16 + remoteLength + 4 * fieldWords }

        /// nft's type of the key, each component's id in 6 bits (so `nft list` prints
        /// `"web" . "admin" . tcp . 22`).
        var keyType: NFTSetKeyType {
            var ids: [UInt32] = [41]  // ifname: the tag
            switch remote {
            case .any: break
            case .prefix: ids.append(family == .ipv4 ? 7 : 8)
            case .group: ids.append(41)
            }
            let icmp = family == .ipv4 ? (type: UInt32(14), code: UInt32(32)) : (type: UInt32(29), code: UInt32(33))
            switch fields {
            case .all: break
            case .p: ids += [12]
            case .pp: ids += [12, 13]
            case .pt: ids += [12, icmp.type]
            case .ptc: ids += [12, icmp.type, icmp.code]
            }
            return NFTSetKeyType(rawValue: ids.reduce(0) { $0 << 6 | $1 })
        }

        func definition(table: String) -> NFTSetDefinition {
            var d = NFTSetDefinition(family: Translate.family, table: table, name: setName, keyType: keyType,
                                     comment: "group rules of one shape: tag(group) . \(remoteComment)\(fieldsComment)")
            d.keyLength = UInt32(keyLength)
            return d
        }

        private var remoteComment: String {
            switch remote {
            case .any: ""
            case .prefix(let l): "address/\(l) . "
            case .group: "tag(remote group) . "
            }
        }

        private var fieldsComment: String {
            switch fields {
            case .all: "(any protocol)"
            case .p: "protocol"
            case .pp: "protocol . port"
            case .pt: "protocol . type"
            case .ptc: "protocol . type . code"
            }
        }

        /// The shape's rule in `group`'s chain.
        func rule(group: String) -> [NFTExpr] {
            var x: [NFTExpr] = [.meta(key: .nfproto, dreg: .r1), .cmp(sreg: .r1, op: .eq, data: [family == .ipv4 ? 2 : 10])]
            var w = 4
            switch remote {
            case .any: break
            case .group(let r):
                x += Slots.Members.lookup(family, group: r, field: field)
            case .prefix: break
            }
            x.append(.immediate(dreg: .r1, data: Slots.Members.tag(group)))
            switch remote {
            case .any: break
            case .group(let r):
                x.append(.immediate(dreg: .word(4), data: Slots.Members.tag(r)))
                w = 8
            case .prefix(let l):
                let (offset, length) = field.location(ipv6: family == .ipv6)
                x.append(.payload(base: .network, offset: offset, length: length, dreg: .word(4)))
                if Int(l) < addressBytes * 8 {
                    x.append(.bitwise(sreg: .word(4), dreg: .word(4), mask: RuleShapes.mask(l, bytes: addressBytes),
                                      xor: [UInt8](repeating: 0, count: addressBytes)))
                }
                w = 4 + addressBytes / 4
            }
            if fields != .all { x.append(.meta(key: .l4proto, dreg: .word(w))) }
            switch fields {
            case .all, .p: break
            case .pp: x.append(.payload(base: .transport, offset: 2, length: 2, dreg: .word(w + 1)))
            case .pt: x.append(.payload(base: .transport, offset: 0, length: 1, dreg: .word(w + 1)))
            case .ptc:
                x.append(.payload(base: .transport, offset: 0, length: 1, dreg: .word(w + 1)))
                x.append(.payload(base: .transport, offset: 1, length: 1, dreg: .word(w + 2)))
            }
            x += [.lookup(set: setName, sreg: .r1, dreg: nil, inverted: false), .counter(packets: 0, bytes: 0), .verdict(.accept)]
            return x
        }

        /// The shape rule's comment, for whoever reads `nft list`.
        var ruleComment: String {
            switch remote {
            case .group(let r): "rules from/to group \(r): elements of @\(setName)"
            default: "rules: elements of @\(setName)"
            }
        }
    }

    static let setPrefix = "rules"

    /// Whether a set of the table is one of the shapes' sets.
    static func isShapeSet(_ name: String) -> Bool {
        (name.hasPrefix("rules4-") || name.hasPrefix("rules6-"))
    }

    static func mask(_ bits: UInt8, bytes: Int) -> [UInt8] {
        var m = [UInt8](repeating: 0, count: bytes)
        for b in 0..<Int(bits) { m[b / 8] |= 0x80 >> UInt8(b % 8) }
        return m
    }

    // MARK: one rule ↔ one element

    /// The shape and element of a group rule, or nil when no shape holds it (it stays a rule).
    /// Only a rule that the element reads back to exactly is given one.
    static func element(_ r: IRRule, direction d: Slots.Direction, group: String) -> (Shape, NFTSetElement)? {
        guard r.verdict == .accept, r.counter else { return nil }
        var family: IPFamily?
        var remote: Remote?
        var remotePart: [UInt8] = []
        var proto: UInt8?
        var tail: [UInt8] = []
        var fields = Fields.all
        func setFamily(_ f: IPFamily) -> Bool {
            if let have = family, have != f { return false }
            family = f
            return true
        }
        for m in r.matches {
            switch m {
            case .nfproto(let f) where remote == nil && proto == nil:
                guard setFamily(f) else { return nil }
                remote = .any
            case .ip4Saddr(let p) where d == .in && remote == nil && p.length > 0, .ip4Daddr(let p) where d == .out && remote == nil && p.length > 0:
                guard setFamily(.ipv4) else { return nil }
                remote = .prefix(p.length)
                remotePart = zip(Translate.bytes(p.address), mask(p.length, bytes: 4)).map { $0 & $1 }
            case .ip6Saddr(let p) where d == .in && remote == nil && p.length > 0, .ip6Daddr(let p) where d == .out && remote == nil && p.length > 0:
                guard setFamily(.ipv6) else { return nil }
                remote = .prefix(p.length)
                remotePart = zip(Translate.bytes(p.address), mask(p.length, bytes: 16)).map { $0 & $1 }
            case .saddrInSet(let f, let s) where d == .in && remote == nil, .daddrInSet(let f, let s) where d == .out && remote == nil:
                guard let (sf, g) = Slots.Members.group(ofSet: s), sf == f, setFamily(f) else { return nil }
                remote = .group(g)
                remotePart = Slots.Members.tag(g)
            case .l4proto(let n) where remote != nil && proto == nil:
                proto = n
                fields = .p
            case .thDport(let ports) where fields == .p && ports.lowerBound == ports.upperBound:
                tail = [UInt8(ports.lowerBound >> 8), UInt8(ports.lowerBound & 0xff), 0, 0]
                fields = .pp
            case .icmpType(let t) where fields == .p && proto == 1:
                tail = [t, 0, 0, 0]
                fields = .pt
            case .icmpv6Type(let t) where fields == .p && proto != 1 && t.lowerBound == t.upperBound:
                tail = [t.lowerBound, 0, 0, 0]
                fields = .pt
            case .icmpCode(let c) where fields == .pt && proto == 1, .icmpv6Code(let c) where fields == .pt && proto != 1:
                tail += [c, 0, 0, 0]
                fields = .ptc
            default:
                return nil
            }
        }
        guard let f = family, let rem = remote else { return nil }
        let shape = Shape(family: f, direction: d, remote: rem, fields: fields)
        var key = Slots.Members.tag(group) + remotePart
        if let p = proto { key += [p, 0, 0, 0] + tail }
        let e = NFTSetElement(key: key, comment: r.comment)
        // Exactly the inverse, or not at all: a rule the element would read back as something
        // else (a prefix written with host bits set, a comment the kernel would not keep) stays
        // a rule, so that a read-back always equals what was compiled.
        guard key.count == shape.keyLength, rule(of: shape, e) == r else { return nil }
        return (shape, e)
    }

    /// The group rule an element of `shape` stands for (the group's tag and the remote group's
    /// tag are not checked here: the caller picked the elements by them).
    static func rule(of shape: Shape, _ e: NFTSetElement) -> IRRule? {
        guard e.key.count == shape.keyLength, e.data == nil, e.verdict == nil else { return nil }
        var m: [Match] = []
        let f = shape.family
        var i = 16
        switch shape.remote {
        case .any:
            m.append(.nfproto(f))
        case .prefix(let l):
            let a = Array(e.key[i..<(i + shape.remoteLength)])
            i += shape.remoteLength
            guard a == zip(a, mask(l, bytes: a.count)).map({ $0 & $1 }) else { return nil }
            switch (f, shape.direction) {
            case (.ipv4, .in): m.append(.ip4Saddr(IPv4Prefix(address: Translate.ipv4(a)!, length: l)))
            case (.ipv4, .out): m.append(.ip4Daddr(IPv4Prefix(address: Translate.ipv4(a)!, length: l)))
            case (.ipv6, .in): m.append(.ip6Saddr(IPv6Prefix(address: Translate.ipv6(a)!, length: l)))
            case (.ipv6, .out): m.append(.ip6Daddr(IPv6Prefix(address: Translate.ipv6(a)!, length: l)))
            }
        case .group(let g):
            i += 16
            let set = Slots.Members.logicalSet(f, g)
            m.append(shape.direction == .in ? .saddrInSet(f, set) : .daddrInSet(f, set))
        }
        func word(_ k: Int) -> [UInt8] { Array(e.key[(i + 4 * k)..<(i + 4 * k + 4)]) }
        if shape.fields != .all {
            let p = word(0)
            guard p[1] == 0, p[2] == 0, p[3] == 0 else { return nil }
            m.append(.l4proto(p[0]))
            switch shape.fields {
            case .all, .p: break
            case .pp:
                let w = word(1)
                guard w[2] == 0, w[3] == 0 else { return nil }
                let port = UInt16(w[0]) << 8 | UInt16(w[1])
                m.append(.thDport(port...port))
            case .pt, .ptc:
                let t = word(1)
                guard t[1] == 0, t[2] == 0, t[3] == 0 else { return nil }
                m.append(p[0] == 1 ? .icmpType(t[0]) : .icmpv6Type(t[0]...t[0]))
                if shape.fields == .ptc {
                    let c = word(2)
                    guard c[1] == 0, c[2] == 0, c[3] == 0 else { return nil }
                    m.append(p[0] == 1 ? .icmpCode(c[0]) : .icmpv6Code(c[0]))
                }
            }
        }
        return IRRule(m, counter: true, .accept, comment: e.comment)
    }

    /// The group rules a shape rule of `group`'s chain stands for: its set's elements with the
    /// group's tag (and the remote group's), in key order.
    static func rules(of shape: Shape, group: String, in elements: [NFTSetElement]) -> [IRRule] {
        var prefix = Slots.Members.tag(group)
        if case .group(let r) = shape.remote { prefix += Slots.Members.tag(r) }
        return elements.filter { $0.key.starts(with: prefix) }
            .sorted { $0.key.lexicographicallyPrecedes($1.key) }
            .compactMap { rule(of: shape, $0) }
    }

    // MARK: a whole chain

    /// A group chain as the kernel holds it in this encoding: its rules (shape rules first, in a
    /// fixed order, then the rules no shape holds, in the chain's order) and its elements, by set.
    struct Lowered: Equatable, Sendable {
        struct KernelRule: Hashable, Sendable {
            var expressions: [NFTExpr]
            var comment: String?
            /// The shape it is the rule of, when `lower` made it so (nil: not known, as for a rule
            /// read back, or a rule no shape holds). Not part of its identity: a shape rule is a
            /// function of its shape (`Shape.rule`, `ruleComment`), so this only spares
            /// `RuleShapes.shape(ofRule:)` recovering what is already known (a quarter of a
            /// rules refresh's lowering, `perf` over `rampart-bench controller`).
            var shape: Shape?

            init(expressions: [NFTExpr], comment: String?) {
                self.expressions = expressions
                self.comment = comment
            }

            /// `shape`'s rule in `group`'s chain, knowing its shape.
            init(_ shape: Shape, group: String) {
                self.init(expressions: shape.rule(group: group), comment: shape.ruleComment)
                self.shape = shape
            }

            static func == (a: KernelRule, b: KernelRule) -> Bool { a.expressions == b.expressions && a.comment == b.comment }
            func hash(into h: inout Hasher) {
                h.combine(expressions)
                h.combine(comment)
            }

            /// Its shape: the one it was made from, or the one its expressions say.
            func shape(group: String, direction d: Slots.Direction) -> Shape? {
                shape ?? RuleShapes.shape(ofRule: expressions, comment: comment, group: group, direction: d)
            }
        }
        var rules: [KernelRule] = []
        var elements: [String: Set<NFTSetElement>] = [:]
    }

    /// `rules` of `group`'s chain in direction `d`; `plain` lowers a rule that stays a rule.
    static func lower(_ rules: [IRRule], group: String, direction d: Slots.Direction, plain: (IRRule) -> [NFTExpr]) -> Lowered {
        var out = Lowered()
        var shapeRules: [Shape: Void] = [:]
        var rest: [Lowered.KernelRule] = []
        var keys = Set<ElementKey>()
        for r in rules {
            if let (shape, e) = element(r, direction: d, group: group) {
                let set = shape.setName
                guard keys.insert(ElementKey(set: set, key: e.key)).inserted else {
                    // The same key as a rule before it (two rules that match the same packets): a
                    // rule of its own, so that both read back.
                    rest.append(.init(expressions: plain(r), comment: r.comment))
                    continue
                }
                shapeRules[shape] = ()
                out.elements[set, default: []].insert(e)
            } else {
                // No shape: a rule of its own.
                rest.append(.init(expressions: plain(r), comment: r.comment))
            }
        }
        out.rules = inOrder(shapeRules.keys).map { .init($0, group: group) } + rest
        return out
    }

    /// How many emptied shape rules a group chain keeps (`retaining`).
    static let retainedLimit = 4

    /// `want` with the shape rules of `held` that no rule of the group uses any more kept, in
    /// their place in the fixed order, up to `retainedLimit` (the first ones `held` has): a rule
    /// of such a shape added again is then an element, not a rule. Why: a batch that adds a rule
    /// makes the kernel re-validate every group chain of the table at commit (~8–11 ms at a host
    /// with 2,000 groups, `rampart-bench controller`), one that adds an element does not; a rule
    /// revoked and authorized again, or a rule replaced by one of the same shape in two steps,
    /// otherwise paid that walk every time. An emptied shape rule matches nothing: its lookup
    /// needs an element with the group's tag in its shape's set, and the group has none there.
    /// It costs a new flow of the group one missed lookup. Only shapes without a remote group are
    /// kept (a remote group's shape rule also reads that group's members, which this host stops
    /// keeping once no rule needs them). The read-back accepts exactly this (`Observe`).
    static func retaining(_ held: Lowered, into want: Lowered, group: String, direction d: Slots.Direction) -> Lowered {
        // By shape: a shape rule is a function of its shape, so a held shape rule is among the
        // wanted rules exactly when its shape is (a rule no shape holds is never kept).
        let wantShapes = want.rules.map { $0.shape(group: group, direction: d) }
        let wanted = Set(wantShapes.compactMap { $0 })
        var kept: [Shape] = []
        for r in held.rules where kept.count < retainedLimit {
            guard let shape = r.shape(group: group, direction: d), !wanted.contains(shape) else { continue }
            if case .group = shape.remote { continue }
            if kept.contains(shape) { continue }  // twice in the kernel (by hand): once is enough
            kept.append(shape)
        }
        guard !kept.isEmpty else { return want }
        var shapes: [Shape] = kept
        var rest: [Lowered.KernelRule] = []
        for (r, s) in zip(want.rules, wantShapes) {
            if let s { shapes.append(s) } else { rest.append(r) }
        }
        var out = want
        out.rules = inOrder(shapes).map { .init($0, group: group) } + rest
        return out
    }

    private struct ElementKey: Hashable {
        var set: String
        var key: [UInt8]
    }

    /// The fixed order of a chain's shape rules: by set name, then remote group.
    static func inOrder<S: Sequence<Shape>>(_ shapes: S) -> [Shape] {
        // Each key made once (not once per comparison: a set name is a string built each time).
        shapes.map { s -> (String, Shape) in
            if case .group(let g) = s.remote { return (s.setName + "\u{0}" + g, s) }
            return (s.setName, s)
        }.sorted { $0.0 < $1.0 }.map(\.1)
    }

    /// The shape a group chain's rule is, with the remote group it names, when it is one
    /// (`Shape.rule` exactly, counters aside); nil for any other rule. A remote group's tag is
    /// its id when short; a digest's group is the one the rule's comment names, if its tag is
    /// that digest.
    static func shape(ofRule exprs: [NFTExpr], comment: String?, group: String, direction d: Slots.Direction) -> Shape? {
        guard let set = exprs.lazy.compactMap({ e -> String? in
            if case .lookup(let s, .r1, nil, false) = e, isShapeSet(s) { return s }
            return nil
        }).first, var candidate = parse(setName: set), candidate.direction == d else { return nil }
        if case .group = candidate.remote {
            // The remote group's tag is the first immediate into r1 (the members lookup's).
            guard case .immediate(.r1, let t)? = exprs.dropFirst(2).first else { return nil }
            if let g = Slots.Members.literalGroup(t) {
                candidate.remote = .group(g)
            } else {
                let head = "rules from/to group ", tail = ": elements of @\(set)"
                guard let c = comment, c.hasPrefix(head), c.hasSuffix(tail) else { return nil }
                let g = String(c.dropFirst(head.count).dropLast(tail.count))
                guard Slots.Members.tag(g) == t else { return nil }
                candidate.remote = .group(g)
            }
        }
        return Translate.withoutCounts(exprs) == candidate.rule(group: group) && comment == candidate.ruleComment ? candidate : nil
    }

    /// The shape a set's name says, the remote group left unset (`.group("")`).
    static func parse(setName n: String) -> Shape? {
        let parts = n.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 4, let fields = Fields(rawValue: String(parts[3])) else { return nil }
        let family: IPFamily
        switch parts[0] {
        case "rules4": family = .ipv4
        case "rules6": family = .ipv6
        default: return nil
        }
        let d: Slots.Direction
        switch parts[1] {
        case "in": d = .in
        case "out": d = .out
        default: return nil
        }
        let remote: Remote
        switch parts[2] {
        case "any": remote = .any
        case "grp": remote = .group("")
        case let s where s.hasPrefix("net"):
            guard let l = UInt8(s.dropFirst(3)), l >= 1, Int(l) <= (family == .ipv4 ? 32 : 128), "net\(l)" == s else { return nil }
            remote = .prefix(l)
        default: return nil
        }
        let shape = Shape(family: family, direction: d, remote: remote, fields: fields)
        return shape.setName == n ? shape : nil
    }
}
