import Glibc
import Dispatch
import RampartCore
import RampartNetlink
import RampartSystem

/// What a committed change can have narrowed: the entries a run must look at.
extension Revocation {
    // MARK: what a plan can have narrowed

    /// The entries a plan can have disallowed, from the plan and the IR it led to: `none` when
    /// the plan only adds access (no element removed, no chain rewritten or deleted, no dispatch
    /// entry removed, no table deleted). With `previous` (the IR the plan started from), a
    /// rewritten group or instance chain that keeps every rule it had, in order, and only gains
    /// accepts or jumps to group chains (a rule added, a group joined) counts as adding access.
    ///
    /// `local` answers what the plan's chains and interfaces serve; it must describe `ir` (a
    /// daemon passes its engine; nil: `ir` answers, by walks that grow with the host).
    public static func scope(of plan: Plan, result ir: RulesetIR, previous: RulesetIR? = nil, local view: (any LocalInstances)? = nil) -> Scope {
        var addresses: Set<IPAddress> = []
        var all = false
        var narrows = false
        let local = view ?? IRLocalInstances(ir)
        // The chains whose rewrite or deletion can narrow: who they serve is asked for them only.
        var narrowing = Set<String>()
        for op in plan.ops {
            switch op {
            case .rewriteChain(let name, let rules):
                if let old = previous?.chains[name], old.base == nil, onlyAdds(old.rules, rules) { continue }
                narrowing.insert(name)
            case .deleteChain(let name): narrowing.insert(name)
            default: continue
            }
        }
        // The local instances' addresses each narrowing chain serves, asked once, for those
        // chains only (at a host with 1,000 instances, collecting every group chain's addresses
        // was most of a revoke's drain; the IR's answer still walks every instance chain).
        let served = Lazily { local.localAddresses(reaching: narrowing) }
        for op in plan.ops {
            switch op {
            case .createTable, .createSet, .createMap, .createChain, .addElements, .addMapElements:
                continue
            case .deleteTable:
                narrows = true; all = true
            case .deleteSet, .deleteMap:
                // Only after every reference is gone; what referenced them was rewritten.
                narrows = true
            case .removeMapElements(_, let keys):
                narrows = true
                // Unplugged (or moved) interfaces: their addresses left the anti-spoofing sets
                // in the same plan (removeElements below) or moved to another interface.
                for k in keys { addresses.formUnion(local.addresses(onInterface: k)) }
            case .removeElements(let set, let elements):
                narrows = true
                for e in elements {
                    switch e {
                    case .ipv4(let a): addresses.insert(.v4(a))        // a member left a referenced group
                    case .ipv6(let a): addresses.insert(.v6(a))
                    case .ifaceIPv4(_, let a): addresses.insert(.v4(a))  // an address left an instance
                    case .ifaceIPv6(_, let a), .ifaceNDTarget(_, let a): addresses.insert(.v6(a))
                    case .ifname(let i):
                        addresses.formUnion(local.addresses(onInterface: i))
                    case .ifaceEther:
                        // A MAC changed: checked on every packet before any conntrack verdict.
                        if set != Naming.sourceMACs { all = true }
                    }
                }
            case .rewriteChain(let name, _), .deleteChain(let name):
                guard narrowing.contains(name) else { continue }  // only adds access
                narrows = true
                if let served = served.value[name] {
                    addresses.formUnion(served)
                } else if name.hasPrefix("gin-") || name.hasPrefix("gout-") || name.hasPrefix("in-") || name.hasPrefix("out-") {
                    // A chain no local instance reaches any more (deleted or orphaned): whoever
                    // reached it was rewritten or unplugged in the same plan.
                    continue
                } else {
                    all = true  // a base chain: anything may have changed
                }
            }
        }
        if !narrows { return .none }
        if all { return .all }
        return addresses.isEmpty ? .none : .addresses(addresses)
    }

    /// What revocation must do after a backend change that led to `ir`: the scope, and the
    /// addresses whose entries go whatever the policy says. From the change's Plan when it has
    /// one (`previous`: the IR it started from); a Plan-less change (an iptables converge) that
    /// changed anything reviews every local instance's entries, and cuts at the addresses it
    /// reports as departed.
    /// `local`: see `scope`.
    public static func work(after change: BackendChange, result ir: RulesetIR, previous: RulesetIR?,
                            local: (any LocalInstances)? = nil) -> (scope: Scope, departed: Set<IPAddress>) {
        if let plan = change.plan {
            let local = local ?? IRLocalInstances(ir)  // one index of the IR for both, if asked
            return (scope(of: plan, result: ir, previous: previous, local: local), departed(in: plan, result: ir, local: local))
        }
        return (change.isEmpty ? .none : .all, change.departed)
    }

    /// Whether `new` is `old` with rules inserted that can only accept: an `accept`, or a jump
    /// to a group chain (whose rules only accept or fall through).
    static func onlyAdds(_ old: [IRRule], _ new: [IRRule]) -> Bool {
        var i = old.startIndex
        for r in new {
            if i < old.endIndex && old[i] == r { i += 1; continue }
            switch r.verdict {
            case .accept: continue
            case .jump(let c) where c.hasPrefix("gin-") || c.hasPrefix("gout-"): continue
            default: return false
            }
        }
        return i == old.endIndex
    }

    /// The addresses that were a local instance's before `plan` and are no instance's in the IR
    /// it led to (an instance removed, an address taken from one): every connection at them is
    /// cut. Read from the plan's removals from the anti-spoofing sets, so no earlier IR is needed.
    /// `local` describes `ir` (see `scope`).
    public static func departed(in plan: Plan, result ir: RulesetIR, local: (any LocalInstances)? = nil) -> Set<IPAddress> {
        let now = local ?? IRLocalInstances(ir)  // the IR's indexes itself only if asked
        var out: Set<IPAddress> = []
        for case .removeElements(let set, let elements) in plan.ops where set == Naming.sources4 || set == Naming.sources6 {
            for e in elements {
                switch e {
                case .ifaceIPv4(_, let a) where now.interface(of: .v4(a)) == nil: out.insert(.v4(a))
                case .ifaceIPv6(_, let a) where now.interface(of: .v6(a)) == nil: out.insert(.v6(a))
                default: break
                }
            }
        }
        return out
    }
}
