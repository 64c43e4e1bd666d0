import Foundation
import RampartCore

// The EC2 API's VPCs beyond the default one: listing an account's VPCs, what depends on one, and
// deleting one with its `default` group. A VPC's row is `ec2_vpcs` (created with the EC2 schema),
// its tags are in `ec2_tags` under its `vpc-…` id, as a group's are: no new table or column, so
// a store created by the previous release (SQLite or PostgreSQL schema version 4) serves as it is.

extension EC2Transaction {
    /// The VPCs of `account` in `region` (the default one included), by id, with their tags.
    /// Two statements however many VPCs.
    public func vpcs(account: String, region: String) throws(StoreError) -> [(vpc: EC2VPC, tags: [String: String])] {
        let args: [SQLValue] = [.text(account), .text(region)]
        let all = try vpcs("WHERE account = ? AND region = ? ORDER BY id", args)
        var tags: [String: [String: String]] = [:]
        for r in try db.query("SELECT resource, key, value FROM ec2_tags WHERE resource IN (SELECT id FROM ec2_vpcs WHERE account = ? AND region = ?)", args) {
            if let v = r[0], let k = r[1], let value = r[2] { tags[v, default: [:]][k] = value }
        }
        return all.map { ($0, tags[$0.id] ?? [:]) }
    }

    /// The groups of `vpc`: id and name, by name.
    public func groupNames(vpc: String) throws(StoreError) -> [(id: String, name: String)] {
        try db.query("SELECT id, name FROM ec2_groups WHERE vpc_id = ? ORDER BY name, id", .text(vpc)).compactMap { r in
            guard let id = r[0], let name = r[1] else { return nil }
            return (id, name)
        }
    }

    /// Up to three live (running or stopped) instances of `vpc`.
    public func instances(vpc: String) throws(StoreError) -> [String] {
        try db.query("SELECT id FROM ec2_instances WHERE vpc_id = ? ORDER BY id LIMIT 3", .text(vpc)).compactMap { $0[0] }
    }

    /// Every address of an instance on `host`, whatever its VPC or account: one hypervisor
    /// enforces by address (anti-spoofing, group members), so two of its instances may not
    /// share one even in VPCs whose ranges overlap.
    public func addresses(host: String) throws(StoreError) -> Set<IPAddress> {
        try addresses("SELECT ips FROM instances WHERE host = ?", [.text(host)])
    }

    /// Deletes `vpc` with its groups (the caller has checked that only its `default` group is
    /// left, with no members and no referrers), its tags, and the snapshots of its terminated
    /// instances (they name the VPC; AWS lets a VPC go once its instances are terminated).
    public func deleteVPC(_ vpc: String) throws(StoreError) {
        for g in try groupNames(vpc: vpc) { try deleteGroup(g.id) }
        try db.run("DELETE FROM ec2_terminated WHERE vpc_id = ?", .text(vpc))
        try db.run("DELETE FROM ec2_tags WHERE resource = ?", .text(vpc))
        try db.run("DELETE FROM ec2_vpcs WHERE id = ? AND is_default = 0", .text(vpc))
    }
}
