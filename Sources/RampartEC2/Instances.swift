import Foundation
import RampartCore
import RampartStore

/// RunInstances and DescribeInstances (the lifecycle actions are in Lifecycle.swift): an instance is the contract's instance
/// record on a registered hypervisor (a host the store knows), with one address from its VPC's
/// range, a MAC and an interface name (`tap` + 12 hex of its id), in security groups of its VPC.
/// There are no subnets: the VPC is the one of its `SecurityGroupId.N` (all of one VPC), else
/// the default VPC.
extension EC2Service {
    func runInstances(_ form: Form, _ caller: Caller) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let image = try form.required("ImageId")
        guard let minCount = try form.int("MinCount") else { throw .missing("MinCount") }
        guard let maxCount = try form.int("MaxCount") else { throw .missing("MaxCount") }
        let type = form.string("InstanceType") ?? "m1.small"
        let groupIDs = try form.strings("SecurityGroupId")
        let groupNames = try form.strings("SecurityGroup")
        let hostID = form.string("Placement.HostId")
        if form.string("SubnetId") != nil {
            throw EC2Error("UnsupportedOperation", "SubnetId: this server has no subnets; an instance's VPC is the one of its SecurityGroupId.N")
        }
        _ = form.string("Placement.AvailabilityZone")
        let token = form.string("ClientToken")
        let dryRun = try form.bool("DryRun")
        try finish(form)
        guard (1...20).contains(minCount), (minCount...20).contains(maxCount) else {
            throw .invalidParameter("MinCount and MaxCount: 1 <= MinCount <= MaxCount <= 20")
        }
        try checkGroupList(groupIDs)
        if groupIDs.count + groupNames.count > settings.maxGroupsPerInterface {
            throw Self.groupLimitExceeded(groupIDs.count + groupNames.count, limit: settings.maxGroupsPerInterface)
        }
        if let token, token.count > 64 { throw .invalidParameter("ClientToken: at most 64 characters") }
        let (reservation, launched): (String, [EC2Instance]) = try change(dryRun, caller) { tx, vpc throws(EC2Error) in
            do {
                // A call repeated with its ClientToken answers what the first one launched.
                if let token {
                    let earlier = try (tx.instances(account: caller.account, region: caller.region)
                        + tx.terminatedInstances(account: caller.account, region: caller.region, since: terminatedCutoff)).filter { $0.clientToken == token }
                    if let first = earlier.first { return ((first.reservation, earlier), []) }
                }
                // The VPC is the groups' (AWS takes it from SubnetId, and refuses groups of another
                // network); names (SecurityGroup.N) are of the default VPC's groups.
                var groups: [(id: String, vpc: EC2VPC)] = []
                for id in groupIDs { let g = try Self.ownGroup(tx, caller, id: id); groups.append((g.id, g.vpc)) }
                for n in groupNames { groups.append((try Self.resolve(tx, caller, vpc, (nil, n)).id, vpc)) }
                let target = groups.first?.vpc ?? vpc
                if let other = groups.first(where: { $0.vpc.id != target.id }) {
                    throw EC2Error("InvalidParameterCombination",
                                   "Security groups \(groups[0].id) and \(other.id) belong to different networks (\(target.id), \(other.vpc.id))")
                }
                var memberOf = groups.map { $0.id }
                if memberOf.isEmpty, let def = try tx.groupID(vpc: target.id, name: "default") { memberOf = [def] }
                let loads = try placeable(tx.hostLoads(), requested: hostID)  // the hosts --compute can serve
                let host: String
                if let hostID {
                    guard loads.contains(where: { $0.host == hostID }) else { throw EC2Error("InvalidHostId.NotFound", "The host '\(hostID)' is not a registered hypervisor") }
                    host = hostID
                } else {
                    guard let least = loads.min(by: { ($0.instances, $0.host) < ($1.instances, $1.host) }) else {
                        throw EC2Error("InsufficientInstanceCapacity", "No hypervisor is registered (rampart host guard HOST --prefix tap registers one)")
                    }
                    host = least.host
                }
                // Addresses are unique in the VPC, and on the hypervisor whatever the VPC: it
                // enforces by address (anti-spoofing, group members), and VPC ranges may overlap.
                var used = try tx.addresses(vpc: target.id).union(tx.addresses(host: host))
                let reservation = Self.newID("r")
                let now = ISO8601DateFormatter().string(from: Date())
                var out: [EC2Instance] = []
                var deliveries: [Delivery] = []
                for _ in 0..<maxCount {
                    let id = Self.newID("i")
                    guard let address = Self.freeAddress(in: target.cidr, used: used) else {
                        throw EC2Error("InsufficientFreeAddressesInSubnet", "No free address left in \(target.cidr) (of VPC \(target.id)) for host \(host)")
                    }
                    used.insert(address)
                    let record = Instance(host: host, groups: memberOf, ips: [address], interface: "tap" + id.dropFirst(2).prefix(12), mac: Self.newMAC())
                    let meta = EC2Instance(id: id, vpc: target, reservation: reservation, image: image, type: type, launched: now,
                                           clientToken: token, record: record)
                    deliveries += try tx.insertInstance(id, record, meta)
                    out.append(meta)
                }
                return ((reservation, out), Array(Set(deliveries)).sorted())
            } catch let e as EC2Error { throw e } catch let e as StoreError { throw Self.storeFailure(e) } catch { throw .server("\(error)") }
        }
        try realize(launched, caller)  // after COMMIT: --compute creates them (Compute.swift)
        let names = try groupNamesByID(caller)
        return { w in
            w.leaf("reservationId", reservation)
            w.leaf("ownerId", caller.account)
            w.element("groupSet") { _ in }
            w.list("instancesSet", launched) { w, i in Self.writeInstance(&w, i, names) }
        }
    }

    func describeInstances(_ form: Form, _ caller: Caller) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let ids = try form.strings("InstanceId")
        let filters = try Self.parseFilters(form) {
            ["instance-id", "instance-state-name", "private-ip-address", "instance.group-id", "vpc-id", "image-id", "instance-type"].contains($0)
        }
        let (size, after) = try describePaging(form, listed: !ids.isEmpty, listName: "instancesSet")
        for id in ids where !Self.isID(id, "i") { throw Self.malformedInstanceID(id) }
        let cutoff = terminatedCutoff
        let all: [EC2Instance] = try read(caller) { tx, _ throws(EC2Error) in
            try Self.storeCall {
                (try tx.instances(account: caller.account, region: caller.region)
                    + tx.terminatedInstances(account: caller.account, region: caller.region, since: cutoff)).sorted { $0.id < $1.id }
            }
        }
        for id in ids where !all.contains(where: { $0.id == id }) { throw Self.instanceNotFound(id) }
        let selected = all.filter { i in
            (ids.isEmpty || ids.contains(i.id)) && filters.allSatisfy { f in
                let candidates: [String] = switch f.name {
                case "instance-id": [i.id]
                case "instance-state-name": [i.state.rawValue]
                case "private-ip-address": Self.shownRecord(i)?.ips.map(\.description) ?? []
                case "instance.group-id": Self.shownRecord(i)?.groups ?? []
                case "vpc-id": [i.vpc.id]
                case "image-id": [i.image]
                default: [i.type]
                }
                return candidates.contains { c in f.values.contains { Self.matches($0, c) } }
            }
        }
        let (page, next) = Self.page(selected, key: \.id, size: size, after: after)
        var reservations: [String] = []
        var byReservation: [String: [EC2Instance]] = [:]
        for i in page {
            if byReservation[i.reservation] == nil { reservations.append(i.reservation) }
            byReservation[i.reservation, default: []].append(i)
        }
        let names = try groupNamesByID(caller)
        return { w in
            w.list("reservationSet", reservations) { w, r in
                w.leaf("reservationId", r)
                w.leaf("ownerId", caller.account)
                w.element("groupSet") { _ in }
                w.list("instancesSet", byReservation[r]!) { w, i in Self.writeInstance(&w, i, names) }
            }
            w.leaf("nextToken", next)
        }
    }

    func groupNamesByID(_ caller: Caller) throws(EC2Error) -> [String: String] {
        try read(caller) { tx, _ throws(EC2Error) in try Self.storeCall { try Self.groupNames(tx, caller) } }
    }

    /// The caller's groups' names by id.
    static func groupNames(_ tx: EC2Transaction, _ caller: Caller) throws -> [String: String] {
        var out: [String: String] = [:]
        for g in try tx.groups(account: caller.account, region: caller.region) { out[g.id] = g.name }
        return out
    }

    /// What Describe shows of an instance's record: none for a terminated instance (AWS lists
    /// it without address, interface or groups).
    static func shownRecord(_ i: EC2Instance) -> Instance? { i.state == .terminated ? nil : i.record }

    /// The lowest free address of an IPv4 VPC range, past the four AWS reserves at its start and
    /// before its broadcast address.
    static func freeAddress(in cidr: String, used: Set<IPAddress>) -> IPAddress? {
        guard case .ok(.v4(let p)) = IPPrefix.parse(cidr), p.length <= 28 else { return nil }
        let base = p.address.raw, size = UInt32(1) << (32 - UInt32(p.length))
        for offset in UInt32(4)..<(size - 1) {
            let a = IPAddress.v4(IPv4Address(raw: base + offset))
            if !used.contains(a) { return a }
        }
        return nil
    }

    /// A random locally administered unicast MAC (02:…).
    static func newMAC() -> MACAddress {
        var g = SystemRandomNumberGenerator()
        return MACAddress(raw: 0x02_00_00_00_00_00 | UInt64.random(in: 0..<(1 << 40), using: &g))
    }

    static func writeInstance(_ w: inout XMLWriter, _ i: EC2Instance, _ names: [String: String]) {
        let record = shownRecord(i)
        let ip = record?.ips.first?.description
        w.leaf("instanceId", i.id)
        w.leaf("imageId", i.image)
        w.element("instanceState") { w in
            w.leaf("code", code(i.state))
            w.leaf("name", i.state.rawValue)
        }
        w.leaf("privateDnsName", ip.map { "ip-" + $0.replacingOccurrences(of: ".", with: "-") + ".ec2.internal" })
        w.leaf("instanceType", i.type)
        w.leaf("launchTime", i.launched)
        w.element("placement") { w in
            w.leaf("availabilityZone", i.vpc.region + "a")
            w.leaf("hostId", i.record?.host)
            w.leaf("tenancy", "default")
        }
        w.leaf("privateIpAddress", ip)
        w.leaf("vpcId", i.vpc.id)
        w.list("groupSet", record?.groups ?? []) { w, g in
            w.leaf("groupId", g)
            w.leaf("groupName", names[g])
        }
        w.list("networkInterfaceSet", record.map { [$0] } ?? []) { w, r in
            w.leaf("macAddress", r.mac?.description)
            w.leaf("privateIpAddress", ip)
            w.leaf("status", "in-use")
        }
    }
}
