import Foundation
import RampartCore
import RampartStore

/// Changing rules in place by their `sgr-` id: ModifySecurityGroupRules (the rule is replaced,
/// keeping its id and direction) and UpdateSecurityGroupRuleDescriptionsIngress/Egress (only
/// descriptions: nothing enforced changes, so nothing is delivered).
extension EC2Service {
    static func malformedRuleID(_ id: String) -> EC2Error {
        EC2Error("InvalidSecurityGroupRuleId.Malformed", "The security group rule ID '\(id)' is malformed")
    }

    static func ruleNotFound(_ id: String, in group: String) -> EC2Error {
        EC2Error("InvalidSecurityGroupRuleId.NotFound", "The security group rule ID '\(id)' does not exist in \(group)")
    }

    /// `SecurityGroupRule.N` (each an id and a `SecurityGroupRuleRequest`) for one group: one
    /// transaction, all or nothing. The hosts with members of the group get
    /// `refresh_security_group_rules` once, whatever the number of rules changed; a call that
    /// changes only descriptions delivers nothing.
    func modifySecurityGroupRules(_ form: Form, _ caller: Caller) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let groupID = try form.required("GroupId")
        let dryRun = try form.bool("DryRun")
        var referenced: [String] = []
        var changes: [(id: String, parsed: Permissions.Parsed)] = []
        for i in try form.indices("SecurityGroupRule") {
            let p = "SecurityGroupRule.\(i)"
            let id = try form.required("\(p).SecurityGroupRuleId")
            guard Self.isID(id, "sgr") else { throw Self.malformedRuleID(id) }
            if changes.contains(where: { $0.id == id }) { throw .invalidParameter("\(p): the rule \(id) is given more than once") }
            let parsed = try Permissions.parseRuleRequest(form, "\(p).SecurityGroupRule", direction: .ingress) { ref throws(EC2Error) in
                guard Self.isID(ref, "sg") else { throw EC2Error.malformedGroupID(ref) }
                referenced.append(ref)
                return ref
            }
            changes.append((id, parsed))
        }
        if changes.isEmpty { throw .missing("SecurityGroupRule.1") }
        try finish(form)
        guard Self.isID(groupID, "sg") else { throw EC2Error.malformedGroupID(groupID) }
        try change(dryRun, caller) { tx, _ throws(EC2Error) -> (Void, [Delivery]) in
            try Self.storeCall {
                let g = try Self.ownGroup(tx, caller, id: groupID)
                for r in referenced { try Self.checkReferenced(tx, caller, r, from: g) }
                var rules = g.rules
                var descriptions = g.ruleDescriptions
                for c in changes {
                    guard let at = rules.firstIndex(where: { $0.id == c.id }) else { throw Self.ruleNotFound(c.id, in: g.id) }
                    var r = c.parsed.rule
                    r.direction = rules[at].direction
                    r.id = c.id
                    rules[at] = r
                    descriptions[c.id] = c.parsed.description
                }
                // Two rules that became equal would be one rule twice: refused, as authorize does.
                var seen = Set<Rule>()
                for r in rules where !seen.insert(Permissions.bare(r)).inserted {
                    throw EC2Error("InvalidPermission.Duplicate", "the specified rule \"\(Permissions.text(r))\" already exists")
                }
                if rules == g.rules {
                    try tx.setRuleDescriptions(g.id, rules, descriptions)
                    return ((), [])
                }
                return ((), try tx.setRules(g.id, rules, descriptions: descriptions))
            }
        }
        return { w in w.leaf("return", true) }
    }

    /// UpdateSecurityGroupRuleDescriptionsIngress/Egress: by `SecurityGroupRuleDescription.N`
    /// (id and description) or by `IpPermissions.N` (the rules matched as Revoke matches them,
    /// each taking the description given with its range or group). A description left out is
    /// removed, as AWS does.
    func updateRuleDescriptions(_ form: Form, _ caller: Caller, _ direction: Direction) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let t = try Self.target(form)
        let dryRun = try form.bool("DryRun")
        let parsed = try Self.permissionsToMatch(form, direction)
        var byID: [(id: String, description: String?)] = []
        for i in try form.indices("SecurityGroupRuleDescription") {
            let p = "SecurityGroupRuleDescription.\(i)"
            let id = try form.required("\(p).SecurityGroupRuleId")
            guard Self.isID(id, "sgr") else { throw Self.malformedRuleID(id) }
            if byID.contains(where: { $0.id == id }) { throw .invalidParameter("\(p): the rule \(id) is given more than once") }
            byID.append((id, try Permissions.description(form, "\(p).Description")))
        }
        if parsed.isEmpty && byID.isEmpty { throw .missing("IpPermissions or SecurityGroupRuleDescription") }
        if !parsed.isEmpty && !byID.isEmpty {
            throw EC2Error("InvalidParameterCombination", "Give IpPermissions or SecurityGroupRuleDescriptions, not both")
        }
        try finish(form)
        try change(dryRun, caller) { tx, vpc throws(EC2Error) -> (Void, [Delivery]) in
            try Self.storeCall {
                let g = try Self.resolve(tx, caller, vpc, t)
                var descriptions = g.ruleDescriptions
                for d in byID {
                    guard g.rules.contains(where: { $0.id == d.id && $0.direction == direction }) else {
                        throw Self.ruleNotFound(d.id, in: "\(g.id) (\(direction.rawValue))")
                    }
                    descriptions[d.id] = d.description
                }
                for p in parsed {
                    guard let r = g.rules.first(where: { Permissions.bare($0) == p.rule }) else {
                        throw EC2Error("InvalidPermission.NotFound", "The specified rule does not exist in this security group: \"\(Permissions.text(p.rule))\"")
                    }
                    // A rule written by `rampart group authorize` has no id, so nowhere to keep a description.
                    guard let id = r.id else { throw EC2Error.invalidParameter("The rule \"\(Permissions.text(r))\" has no security group rule id") }
                    descriptions[id] = p.description
                }
                try tx.setRuleDescriptions(g.id, g.rules, descriptions)
                return ((), [])
            }
        }
        return { w in w.leaf("return", true) }
    }
}
