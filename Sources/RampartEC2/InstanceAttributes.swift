import Foundation
import RampartCore
import RampartStore

/// ModifyInstanceAttribute and DescribeInstanceAttribute for the one attribute Rampart
/// enforces: the instance's security groups (`groupSet`). The other attributes AWS has are
/// refused by name with `UnsupportedOperation`, never accepted and ignored.
extension EC2Service {
    /// The attributes AWS's DescribeInstanceAttribute knows.
    static let instanceAttributes: Set<String> = [
        "instanceType", "kernel", "ramdisk", "userData", "disableApiTermination", "instanceInitiatedShutdownBehavior",
        "rootDeviceName", "blockDeviceMapping", "productCodes", "sourceDestCheck", "groupSet", "ebsOptimized",
        "sriovNetSupport", "enaSupport", "enclaveOptions", "disableApiStop",
    ]

    /// ModifyInstanceAttribute's parameters for attributes other than the groups.
    static let otherAttributeParameters = [
        "Attribute", "Value", "SourceDestCheck.", "DisableApiStop.", "DisableApiTermination.", "InstanceType.", "Kernel.", "Ramdisk.",
        "UserData.", "InstanceInitiatedShutdownBehavior.", "EbsOptimized.", "SriovNetSupport.", "EnaSupport.", "BlockDeviceMapping.",
    ]

    static func groupLimitExceeded(_ count: Int, limit: Int) -> EC2Error {
        EC2Error("SecurityGroupsPerInterfaceLimitExceeded",
                 "You have exceeded the maximum number of security groups allowed per network interface (\(count) given, at most \(limit))")
    }

    /// The groups `GroupId.N` of an instance's change: well formed, distinct, within the limit.
    func checkGroupList(_ groups: [String]) throws(EC2Error) {
        for g in groups where !Self.isID(g, "sg") { throw EC2Error.malformedGroupID(g) }
        if Set(groups).count != groups.count { throw .invalidParameter("GroupId: a security group is given more than once") }
        if groups.count > settings.maxGroupsPerInterface { throw Self.groupLimitExceeded(groups.count, limit: settings.maxGroupsPerInterface) }
    }

    /// `GroupId.N` replaces the instance's groups in one transaction: its hypervisor gets
    /// `refresh_instance`, the referrers of each group it joined or left
    /// `refresh_security_group_members`. The groups must be the caller's, in the instance's VPC.
    func modifyInstanceAttribute(_ form: Form, _ caller: Caller) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let id = try form.required("InstanceId")
        let dryRun = try form.bool("DryRun")
        let groups = try form.strings("GroupId")
        for key in form.values.keys.sorted() where Self.otherAttributeParameters.contains(where: { $0.hasSuffix(".") ? key.hasPrefix($0) : key == $0 }) {
            throw EC2Error("UnsupportedOperation", "\(key): this server changes only an instance's security groups (GroupId.N)")
        }
        if groups.isEmpty { throw .missing("GroupId.1") }
        try finish(form)
        guard Self.isID(id, "i") else { throw Self.malformedInstanceID(id) }
        try checkGroupList(groups)
        try change(dryRun, caller) { tx, _ throws(EC2Error) -> (Void, [Delivery]) in
            try Self.storeCall {
                let i = try lookup(tx, caller, id)
                guard i.state != .terminated, let record = i.record else {
                    throw EC2Error("IncorrectInstanceState", "The instance '\(id)' is terminated")
                }
                for g in groups {
                    let group = try Self.ownGroup(tx, caller, id: g)
                    guard group.vpc.id == i.vpc.id else { throw EC2Error("InvalidParameterCombination", "Security group \(g) is not in VPC \(i.vpc.id)") }
                }
                if record.groups == groups { return ((), []) }
                return ((), try tx.setGroups(instance: id, groups))
            }
        }
        return { w in w.leaf("return", true) }
    }

    /// `Attribute=groupSet`: the instance's groups, in order (a terminated instance has none, as
    /// AWS shows it).
    func describeInstanceAttribute(_ form: Form, _ caller: Caller) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let id = try form.required("InstanceId")
        let attribute = try form.required("Attribute")
        let dryRun = try form.bool("DryRun")
        try finish(form)
        guard Self.isID(id, "i") else { throw Self.malformedInstanceID(id) }
        guard Self.instanceAttributes.contains(attribute) else {
            throw .invalidParameter("Value (\(attribute)) for parameter attribute is invalid. Unknown attribute.")
        }
        guard attribute == "groupSet" else { throw EC2Error("UnsupportedOperation", "The attribute \(attribute) is not kept by this server (groupSet is)") }
        if dryRun { throw .dryRun }
        let (instance, names): (EC2Instance, [String: String]) = try read(caller) { tx, _ throws(EC2Error) in
            try Self.storeCall { (try lookup(tx, caller, id), try Self.groupNames(tx, caller)) }
        }
        let groups = instance.state == .terminated ? [] : instance.record?.groups ?? []
        return { w in
            w.leaf("instanceId", instance.id)
            w.list("groupSet", groups) { w, g in
                w.leaf("groupId", g)
                w.leaf("groupName", names[g])
            }
        }
    }
}
