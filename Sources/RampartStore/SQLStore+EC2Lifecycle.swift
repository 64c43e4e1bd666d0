import Foundation
import RampartCore

// The EC2 API's instance lifecycle: which live instances are stopped, and what a terminated
// instance looked like while it stays visible (AWS keeps it listed for about an hour). A live
// instance (running or stopped) keeps its contract record, so its address and groups stay its
// own; a terminated one has no record (its hypervisor unplugged it) and only a snapshot here.
// Tables: `ec2_instance_states`, `ec2_terminated` (`SQLStore.ec2LifecycleSchema`).

/// An EC2 instance's state as the store keeps it (AWS's transient `pending`, `stopping` and
/// `shutting-down` are not kept: every transition here completes in its transaction).
public enum EC2InstanceState: String, Sendable, Hashable {
    case running, stopped, terminated
}

extension EC2Transaction {
    /// Records a live instance's state; enforcement does not change (no fan-out): a stopped
    /// instance keeps its record, its address and its groups, as AWS keeps its interface.
    public func setState(_ id: String, _ state: EC2InstanceState) throws(StoreError) {
        precondition(state != .terminated, "terminate with terminateInstance")
        try db.run("DELETE FROM ec2_instance_states WHERE id = ?", .text(id))
        if state != .running { try db.run("INSERT INTO ec2_instance_states(id, state) VALUES (?, ?)", .text(id), .text(state.rawValue)) }
    }

    /// Terminates a live instance: its record goes (the fan-out unplugs it and tells the
    /// referrers of its groups), a snapshot stays for Describe until `purgeTerminated` removes it.
    public func terminateInstance(_ i: EC2Instance, at time: Int64) throws(StoreError) -> [Delivery] {
        guard let record = i.record else { throw StoreError(.notFound, "instance \(i.id) has no record") }
        try db.run("DELETE FROM ec2_instance_states WHERE id = ?", .text(i.id))
        let out = try deleteInstance(i.id)
        try db.run("""
            INSERT INTO ec2_terminated(id, vpc_id, reservation, image, type, launched, client_token, host, groups, ips, interface, mac, terminated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, .text(i.id), .text(i.vpc.id), .text(i.reservation), .text(i.image), .text(i.type), .text(i.launched),
            i.clientToken.map { .text($0) } ?? .null, .text(record.host), .text(record.groups.joined(separator: ",")),
            .text(record.ips.map(\.description).joined(separator: ",")), record.interface.map { .text($0) } ?? .null,
            record.mac.map { .text($0.description) } ?? .null, .int(time))
        return out
    }

    /// Forgets instances terminated before `time` (Unix seconds).
    public func purgeTerminated(before time: Int64) throws(StoreError) {
        try db.run("DELETE FROM ec2_terminated WHERE terminated_at < ?", .int(time))
    }

    /// The instances of `account` in `region` terminated at or after `since` (Unix seconds), by
    /// id (only the one with `id` when given).
    public func terminatedInstances(account: String, region: String, since: Int64, id: String? = nil) throws(StoreError) -> [EC2Instance] {
        let rows = try db.query("""
            SELECT t.id, t.vpc_id, t.reservation, t.image, t.type, t.launched, t.client_token, t.host, t.groups, t.ips, t.interface, t.mac
            FROM ec2_terminated t JOIN ec2_vpcs v ON v.id = t.vpc_id
            WHERE v.account = ? AND v.region = ? AND t.terminated_at >= ?\(id == nil ? "" : " AND t.id = ?") ORDER BY t.id
            """, [.text(account), .text(region), .int(since)] + (id.map { [.text($0)] } ?? []))
        var out: [EC2Instance] = []
        for r in rows {
            guard let id = r[0], let vpcID = r[1], let vpc = try vpc(vpcID) else { continue }
            let record = Instance(host: r[7] ?? "", groups: (r[8] ?? "").split(separator: ",").map(String.init),
                                  ips: (r[9] ?? "").split(separator: ",").compactMap { IPAddress(String($0)) },
                                  interface: r[10], mac: r[11].flatMap { MACAddress($0) })
            out.append(EC2Instance(id: id, vpc: vpc, reservation: r[2] ?? "", image: r[3] ?? "", type: r[4] ?? "", launched: r[5] ?? "",
                                   clientToken: r[6], record: record, state: .terminated))
        }
        return out
    }

    /// Replaces a live instance's groups (the controller's `setGroups`, in this transaction):
    /// its hypervisor gets `refresh_instance`, the referrers of every group it joined or left
    /// `refresh_security_group_members`.
    public func setGroups(instance id: String, _ groups: [String]) throws(StoreError) -> [Delivery] {
        try store.updateGroups(instance: id, groups)
    }
}
