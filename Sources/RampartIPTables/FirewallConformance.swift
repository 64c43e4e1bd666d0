import Foundation
import RampartCore

/// The iptables backend as the CLI and the daemon see it. The detailed change of each call
/// (restore text, ipset lines, counts) stays in `lastChange` for tests and benchmarks.
extension IPTablesBackend: FirewallBackend {
    public var name: String { "iptables-\(variant.rawValue), \(topology.rawValue)" }

    /// iptables has no ruleset generation Rampart can rely on (legacy has none at all).
    public var generation: UInt32? { nil }

    /// Commits `plan` incrementally against the mirror (see `commitChange`).
    @discardableResult
    public func commit(_ plan: Plan, result: RulesetIR?) throws -> BackendChange {
        let previous = mirror == nil ? nil : mirrorIR
        let c = try commitChange(plan, result: result)
        lastChange = c
        return Self.change(c, plan: plan, previous: previous)
    }

    /// Brings Rampart's chains and ipsets to `desired` from a fresh read-back. The change is
    /// worked out on iptables text, not on a Plan: `plan` is nil, and revocation looks at
    /// every local instance's connections after it.
    @discardableResult
    public func converge(to desired: RulesetIR?) throws -> BackendChange {
        let c = try convergeChange(to: desired)
        lastChange = c
        var change = Self.change(c, plan: nil, previous: nil)
        change.departed = lastDeparted
        return change
    }

    public func pending(to desired: RulesetIR?) throws -> BackendChange {
        Self.change(try pendingChange(to: desired), plan: nil, previous: nil, rendered: true)
    }

    /// iptables cannot tell cheaply (no generation for legacy, and iptables-nft's is shared
    /// with every nftables user): answered false; the periodic converge reads everything back.
    public func changedByOthers() throws -> Bool { false }

    public func enforcedInstances() throws -> Int {
        IPTEnforcementView.instances(try readBack()).count
    }

    public func enforcement() throws -> EnforcementReport? {
        let st = try readBack()
        if st.v4.chains.isEmpty && st.v6.chains.isEmpty && st.sets.isEmpty { return nil }
        let groupRules = try countedRules().filter { $0.chain.hasPrefix("rp-gi-") || $0.chain.hasPrefix("rp-go-") }
        let view = IPTEnforcementView(instances: IPTEnforcementView.instances(st), rules: groupRules,
                                      ipsets: st.sets.mapValues { $0.members.sorted() })
        var text = view.text
        for (name, s) in st.sets.sorted(by: { $0.key < $1.key }) {
            text += "ipset \(name) (\(s.family == .ipv4 ? "inet" : "inet6")): \(s.members.sorted().joined(separator: " "))\n"
        }
        return EnforcementReport(text: text, json: try RampartJSON.text(view, pretty: true))
    }

    public func warnings() -> [String] {
        guard topology == .bridged, bridgeNetfilterEnabled() != true else { return [] }
        return ["br_netfilter is not handing bridged traffic to iptables here (net.bridge.bridge-nf-call-iptables / -ip6tables): bridged instances are not filtered"]
    }

    /// `rendered`: the text too (only `pending` pays for it).
    static func change(_ c: IPTChange, plan: Plan?, previous: RulesetIR?, rendered: Bool = false) -> BackendChange {
        BackendChange(isEmpty: c.isEmpty, summary: c.isEmpty ? "no changes" : c.summary, text: rendered ? c.text : "", plan: plan,
                      previous: previous, operations: c.operations)
    }
}

extension IPTChange {
    /// Lines written: ipset commands and restored rules.
    public var operations: Int {
        ipsetBefore.count + ipsetAfter.count + rulesWritten + rulesDeleted + chainsDeleted
    }
}

extension IPTError: BackendFailure {
    /// A restore or ipset command failed: the previous rules stay in place (see `execute`).
    public var kind: BackendFailureKind { .refused }
}

extension IPTUnsupported: BackendFailure {
    public var kind: BackendFailureKind { .unsupported }
}
