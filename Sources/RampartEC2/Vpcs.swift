import Foundation
import RampartCore
import RampartStore

/// CreateVpc, DescribeVpcs, DeleteVpc: a VPC is the namespace of security groups (names are
/// unique per VPC, a rule may reference only a group of its own VPC, an instance's groups are all
/// of one VPC) and the range its instances' addresses come from. Every VPC gets its own
/// `default` group, as AWS makes it. There are no subnets: RunInstances takes the VPC of its
/// `SecurityGroupId.N` (Instances.swift).
extension EC2Service {
    static func malformedVPCID(_ id: String) -> EC2Error { EC2Error("InvalidVpcID.Malformed", "Invalid id: \"\(id)\" (expecting \"vpc-...\")") }

    static func vpcNotFound(_ id: String) -> EC2Error { EC2Error("InvalidVpcID.NotFound", "The vpc ID '\(id)' does not exist") }

    /// A VPC id of the caller's: malformed → `InvalidVpcID.Malformed`; another account's or
    /// region's, or unknown → `InvalidVpcID.NotFound` (another account's VPC does not exist for
    /// the caller, as AWS answers).
    static func ownVPC(_ tx: EC2Transaction, _ caller: Caller, id: String) throws -> EC2VPC {
        guard isID(id, "vpc") else { throw malformedVPCID(id) }
        guard let v = try tx.vpc(id), v.account == caller.account, v.region == caller.region else { throw vpcNotFound(id) }
        return v
    }

    /// Creates `vpc`'s `default` group as AWS does: ingress from its own members (all
    /// protocols), egress to 0.0.0.0/0 (no IPv6 rule: the VPC has no IPv6 range).
    @discardableResult
    static func createDefaultGroup(_ tx: EC2Transaction, vpc: String) throws -> String {
        let sg = newID("sg")
        try tx.insertGroup(id: sg, vpc: vpc, name: "default", description: "default VPC security group")
        let rules = [
            Rule(id: newID("sgr"), direction: .ingress, proto: .any, remote: .group(sg)),
            Rule(id: newID("sgr"), direction: .egress, proto: .any, remote: .cidr(anyIPv4)),
        ]
        _ = try tx.setRules(sg, rules, descriptions: [:])
        return sg
    }

    /// Checks a group that a rule of `group` references: the caller's, and in the same VPC. AWS
    /// refuses a reference across VPCs that are not peered, and there is no peering here; it
    /// also keeps a rule's referenced addresses inside the rule's own address space.
    static func checkReferenced(_ tx: EC2Transaction, _ caller: Caller, _ id: String, from group: EC2Group) throws {
        let ref = try ownGroup(tx, caller, id: id)
        guard ref.vpc.id == group.vpc.id else {
            throw EC2Error("InvalidGroup.NotFound", "You have specified two resources that belong to different networks (\(group.id) is in \(group.vpc.id), \(id) in \(ref.vpc.id))")
        }
    }

    /// Whether any of `candidates` matches any of a filter's `values` (patterns with `*`, `?`).
    static func matchesAny(_ values: [String], _ candidates: [String]) -> Bool {
        candidates.contains { c in values.contains { matches($0, c) } }
    }

    func createVpc(_ form: Form, _ caller: Caller) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let text = try form.required("CidrBlock")
        let ipv6 = try form.bool("AmazonProvidedIpv6CidrBlock")
        let tenancy = form.string("InstanceTenancy")
        let dryRun = try form.bool("DryRun")
        let tags = try Self.parseTagSpecifications(form, resourceType: "vpc")
        try finish(form)
        if ipv6 { throw EC2Error("UnsupportedOperation", "AmazonProvidedIpv6CidrBlock: this server's VPCs are IPv4 only") }
        switch tenancy {
        case nil, "default": break
        case "dedicated", "host": throw EC2Error("UnsupportedOperation", "InstanceTenancy '\(tenancy!)': this server's VPCs have default tenancy only")
        default: throw .invalidParameter("Value (\(tenancy!)) for parameter instanceTenancy is invalid")
        }
        // AWS: an IPv4 block between /16 and /28 (a /28 leaves 11 addresses after the 5 it reserves).
        guard case .v4(let prefix) = try Permissions.parseCIDR(text, family: .ipv4, name: "CidrBlock"), (16...28).contains(prefix.length) else {
            throw EC2Error("InvalidVpc.Range", "The CIDR '\(text)' is invalid: a VPC's block is between /16 and /28")
        }
        let (vpc, tagged): (EC2VPC, [String: String]) = try change(dryRun, caller) { tx, _ throws(EC2Error) in
            try Self.storeCall {
                let v = EC2VPC(id: Self.newID("vpc"), account: caller.account, region: caller.region, cidr: prefix.description, isDefault: false)
                try tx.insertVPC(v)
                try Self.createDefaultGroup(tx, vpc: v.id)
                try Self.applyTags(tx, v.id, tags)
                return ((v, try tx.tags(v.id)), [])
            }
        }
        return { w in w.element("vpc") { w in Self.writeVPC(&w, vpc, tagged) } }
    }

    func describeVpcs(_ form: Form, _ caller: Caller) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let ids = try form.strings("VpcId")
        let filters = try Self.parseFilters(form) {
            ["vpc-id", "cidr", "cidr-block", "cidr-block-association.cidr-block", "is-default", "state", "owner-id", "dhcp-options-id", "tag-key"]
                .contains($0) || $0.hasPrefix("tag:")
        }
        let (size, after) = try describePaging(form, listed: !ids.isEmpty, listName: "vpcIds")
        for id in ids where !Self.isID(id, "vpc") { throw Self.malformedVPCID(id) }
        let all = try read(caller) { tx, _ throws(EC2Error) in try Self.storeCall { try tx.vpcs(account: caller.account, region: caller.region) } }
        for id in ids where !all.contains(where: { $0.vpc.id == id }) { throw Self.vpcNotFound(id) }
        let selected = all.filter { v, tags in
            (ids.isEmpty || ids.contains(v.id)) && filters.allSatisfy { f in
                let candidates: [String] = switch f.name {
                case "vpc-id": [v.id]
                case "cidr", "cidr-block", "cidr-block-association.cidr-block": [v.cidr]
                case "is-default": [v.isDefault ? "true" : "false"]
                case "state": ["available"]
                case "owner-id": [v.account]
                case "dhcp-options-id": ["default"]
                case "tag-key": Array(tags.keys)
                default: tags[String(f.name.dropFirst(4))].map { [$0] } ?? []
                }
                return Self.matchesAny(f.values, candidates)
            }
        }
        let (page, next) = Self.page(selected, key: { $0.vpc.id }, size: size, after: after)
        return { w in
            w.list("vpcSet", page) { w, v in Self.writeVPC(&w, v.vpc, v.tags) }
            w.leaf("nextToken", next)
        }
    }

    /// Deletes a VPC and its `default` group in one transaction. Refused (`DependencyViolation`)
    /// while it has other groups or live instances, or while its `default` group has members or
    /// is referenced by another group's rule. The account's default VPC is refused
    /// (`OperationNotPermitted`): this server re-creates it on the caller's next request, so a
    /// deletion would only swap its id and its `default` group's.
    func deleteVpc(_ form: Form, _ caller: Caller) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let id = try form.required("VpcId")
        let dryRun = try form.bool("DryRun")
        try finish(form)
        guard Self.isID(id, "vpc") else { throw Self.malformedVPCID(id) }
        try change(dryRun, caller) { tx, _ throws(EC2Error) -> (Void, [Delivery]) in
            try Self.storeCall {
                let v = try Self.ownVPC(tx, caller, id: id)
                if v.isDefault {
                    throw EC2Error("OperationNotPermitted", "The default VPC '\(id)' cannot be deleted: this server re-creates an account's default VPC on its next request")
                }
                func refuse(_ what: String) -> EC2Error {
                    EC2Error("DependencyViolation", "The vpc '\(id)' has dependencies and cannot be deleted (\(what))")
                }
                let instances = try tx.instances(vpc: v.id)
                if !instances.isEmpty { throw refuse("instances \(instances.joined(separator: ", "))") }
                let groups = try tx.groupNames(vpc: v.id)
                let others = groups.filter { $0.name != "default" }.map { $0.id }
                if !others.isEmpty { throw refuse("security groups \(others.prefix(3).joined(separator: ", "))") }
                for g in groups {
                    let members = try tx.members(of: g.id)
                    if !members.isEmpty { throw refuse("\(g.id) has members \(members.joined(separator: ", "))") }
                    let referrers = try tx.referrers(of: g.id)
                    if !referrers.isEmpty { throw refuse("\(g.id) is referenced by \(referrers.joined(separator: ", "))") }
                }
                try tx.deleteVPC(v.id)
                return ((), [])
            }
        }
        return { w in w.leaf("return", true) }
    }

    /// A `vpc` element's content (CreateVpc's `vpc`, an item of DescribeVpcs' `vpcSet`).
    static func writeVPC(_ w: inout XMLWriter, _ v: EC2VPC, _ tags: [String: String]) {
        w.leaf("vpcId", v.id)
        w.leaf("ownerId", v.account)
        w.leaf("state", "available")
        w.leaf("cidrBlock", v.cidr)
        w.list("cidrBlockAssociationSet", [v.cidr]) { w, cidr in
            // One block per VPC, so its association id is derived from the VPC's: nothing to keep.
            w.leaf("associationId", "vpc-cidr-assoc-" + v.id.dropFirst(4))
            w.leaf("cidrBlock", cidr)
            w.element("cidrBlockState") { w in w.leaf("state", "associated") }
        }
        w.element("ipv6CidrBlockAssociationSet") { _ in }
        w.leaf("dhcpOptionsId", "default")
        w.leaf("instanceTenancy", "default")
        w.leaf("isDefault", v.isDefault)
        w.tagSet(tags)
    }
}
