import RampartCore
import RampartNetlink

/// What is enforced, as read from the kernel: instance → groups → rules, with each rule's
/// packet and byte counters. Counters belong to the group's chain on this host, so a rule's
/// counters are shared by all members of the group here.
public struct EnforcementView: Codable, Sendable, Hashable {
    public struct RuleView: Codable, Sendable, Hashable {
        public var direction: String
        /// `group/rule-id` (or `group/#index`), the rule's comment in the kernel.
        public var comment: String?
        public var match: String
        public var packets: UInt64
        public var bytes: UInt64
        /// For a rule held as an element of a shape's set: how many rules of its group share
        /// the counter shown (its shape rule's), nil for a rule of its own.
        public var counterSharedBy: Int?
        /// For a group whose rules of this direction accept all of a family and nothing else
        /// (no chain of its own: a shared chain holds the rule, `GroupForm`): how many groups
        /// share the counter shown.
        public var counterSharedByGroups: Int?
    }
    public struct GroupView: Codable, Sendable, Hashable {
        public var group: String
        public var rules: [RuleView]
    }
    public struct InstanceView: Codable, Sendable, Hashable {
        public var instance: String
        public var interface: String
        public var groups: [GroupView]
    }
    public var table: String
    public var generation: UInt32
    public var instances: [InstanceView]

    /// Builds the view from a read-back table.
    public init(_ snap: TableSnapshot) {
        table = "\(snap.table.family) \(snap.table.name)"
        generation = snap.generation
        var interfaces: [String: String] = [:]  // instance → interface
        var groupsOf: [String: [String]] = [:]   // instance → groups (kernel ids), in slot order
        if Observe.layout(of: snap) == .slots {
            for (iface, e) in SlotState.entries(snap.elements[Slots.instanceGroups] ?? []) ?? [:] {
                guard let (id, groups) = SlotState.decode(e, keys: snap.table.tag.map { SlotKeys(secret: $0) }) else { continue }
                interfaces[id] = iface
                groupsOf[id] = groups
            }
        } else {
            for e in snap.elements[Naming.fromInstanceMap] ?? [] {
                if case .jump(let chain)? = e.verdict, chain.hasPrefix("out-") {
                    interfaces[String(chain.dropFirst(4))] = Translate.ifname(e.key)
                }
            }
            func groups(of chain: String, prefix: String) -> [String] {
                (snap.rules[chain] ?? []).compactMap { r in
                    for e in r.expressions { if case .verdict(.jump(let t)) = e, t.hasPrefix(prefix) { return String(t.dropFirst(prefix.count)) } }
                    return nil
                }
            }
            for id in interfaces.keys {
                var seen = Set<String>()
                groupsOf[id] = (groups(of: "in-" + id, prefix: "gin-") + groups(of: "out-" + id, prefix: "gout-")).filter { seen.insert($0).inserted }
            }
        }
        // Groups without a chain of their own whose element jumps to a shared accept-all chain.
        var sharedChainOf: [String: String] = [:]  // group chain → shared chain
        var sharers: [String: Int] = [:]  // shared chain → groups
        for d in Slots.Direction.allCases {
            for e in snap.elements[d.groupsMap] ?? [] {
                guard let g = e.comment, case .jump(let c)? = e.verdict, Slots.AcceptAll.parse(c) != nil else { continue }
                sharedChainOf[d.groupPrefix + g] = c
                sharers[c, default: 0] += 1
            }
        }
        let chainNames = Set(snap.chains.map(\.name))
        func rules(_ chain: String, _ direction: String) -> [RuleView] {
            if !chainNames.contains(chain), let shared = sharedChainOf[chain] {
                return (snap.rules[shared] ?? []).map { r in
                    let c = Describe.counter(r.expressions)
                    // The group's own rule comments are not in the kernel: name the chain that holds its rule.
                    return RuleView(direction: direction, comment: "shared: \(shared)", match: Describe.rule(r.expressions),
                                    packets: c?.packets ?? 0, bytes: c?.bytes ?? 0, counterSharedByGroups: sharers[shared])
                }
            }
            let group: (Slots.Direction, String)? = if case .group(let d, let g)? = Slots.role(of: chain) { (d, g) } else { nil }
            return (snap.rules[chain] ?? []).flatMap { r -> [RuleView] in
                let c = Describe.counter(r.expressions)
                // A shape rule stands for its elements of this group: each shown as the rule it is.
                if let (d, g) = group, let shape = RuleShapes.shape(ofRule: r.expressions, comment: r.comment, group: g, direction: d) {
                    let held = RuleShapes.rules(of: shape, group: g, in: snap.elements[shape.setName] ?? [])
                    return held.map { x in
                        RuleView(direction: direction, comment: x.comment, match: Describe.rule(Translate.expressions(x, layout: .slots)),
                                 packets: c?.packets ?? 0, bytes: c?.bytes ?? 0, counterSharedBy: held.count)
                    }
                }
                return [RuleView(direction: direction, comment: r.comment, match: Describe.rule(r.expressions),
                                 packets: c?.packets ?? 0, bytes: c?.bytes ?? 0)]
            }
        }
        instances = interfaces.keys.sorted().map { id in
            InstanceView(instance: id, interface: interfaces[id] ?? "?", groups: (groupsOf[id] ?? []).map { g in
                GroupView(group: g, rules: rules(Naming.groupIn(g), "ingress") + rules(Naming.groupOut(g), "egress"))
            })
        }
    }

    /// Plain text for operators.
    public var text: String {
        var out = "table \(table) (generation \(generation)): \(instances.count) instance\(instances.count == 1 ? "" : "s")\n"
        for i in instances {
            out += "instance \(i.instance) (\(i.interface))\n"
            if i.groups.isEmpty { out += "  no groups: only established traffic, NDP and DHCP pass\n" }
            for g in i.groups {
                out += "  group \(g.group)\n"
                if g.rules.isEmpty { out += "    (no rules)\n" }
                for r in g.rules {
                    let name = (r.comment ?? "-").padding(toLength: 28, withPad: " ", startingAt: 0)
                    var shared = r.counterSharedBy.map { $0 > 1 ? ", counted with \($0 - 1) rule\($0 == 2 ? "" : "s") of its shape" : "" } ?? ""
                    if let n = r.counterSharedByGroups, n > 1 { shared += ", counted with \(n - 1) other group\(n == 2 ? "" : "s") (shared chain)" }
                    out += "    \(r.direction.padding(toLength: 8, withPad: " ", startingAt: 0)) \(name) \(r.match)   [\(r.packets) packets, \(r.bytes) bytes\(shared)]\n"
                }
            }
        }
        return out
    }
}
