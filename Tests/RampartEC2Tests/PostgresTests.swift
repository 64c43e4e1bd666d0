import Foundation
import RampartCore
import RampartHarness
import RampartStore
import Testing

/// The same API over a PostgreSQL store (schema version 4: the EC2 tables and their lifecycle
/// tables): the EC2 tables' SQL on the other database, and rule changes logged for the
/// member's host in the change log (which delivers).
@Suite("EC2 API on PostgreSQL", .serialized, .enabled(if: getuid() == 0, "starts a PostgreSQL cluster (root)"))
struct EC2PostgresTests {
    @Test func actionsOnPostgres() throws {
        let url = try SharedPostgres.freshDatabase("ec2")
        let api = try APIServerFixture(store: url)
        let st = try #require(try api.store() as? PostgresStore)
        #expect(try st.installedSchemaVersion() == PostgresStore.schemaVersion)
        let web = try #require(try api.awsOK(["create-security-group", "--group-name", "web", "--description", "w"])["GroupId"] as? String)
        try api.awsFails(["create-security-group", "--group-name", "web", "--description", "w"], code: "InvalidGroup.Duplicate")
        _ = try st.addInstance("i-1", Instance(host: "hv1", groups: [web], ips: [IPAddress("10.0.0.5")!], interface: "tap1"))
        let added = try api.awsOK(["authorize-security-group-ingress", "--group-id", web, "--ip-permissions",
                                   "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=10.0.0.0/8,Description=ssh}]"])
        let rule = try #require(items(added, "SecurityGroupRules").first?["SecurityGroupRuleId"] as? String)
        _ = try api.awsOK(["create-tags", "--resources", web, "--tags", "Key=env,Value=prod"])
        let g = try #require(items(try api.awsOK(["describe-security-groups", "--filters", "Name=tag:env,Values=prod"]), "SecurityGroups").first)
        #expect(g["GroupId"] as? String == web)
        #expect((items(g, "IpPermissions").first?["IpRanges"] as? [[String: String]]) == [["CidrIp": "10.0.0.0/8", "Description": "ssh"]])
        let logged = try st.entries(host: "hv1", after: 0, limit: 100).entries.map(\.refresh)
        #expect(logged.contains(.rules(web)))
        // A rule changed by id, and an instance's lifecycle, over the lifecycle tables.
        let logStart = try st.entries(host: "hv1", after: 0, limit: 1000).entries.count
        _ = try api.awsOK(["modify-security-group-rules", "--group-id", web, "--security-group-rules",
                           "SecurityGroupRuleId=\(rule),SecurityGroupRule={IpProtocol=tcp,FromPort=2222,ToPort=2222,CidrIpv4=10.0.0.0/8}"])
        #expect(try st.entries(host: "hv1", after: 0, limit: 1000).entries.dropFirst(logStart).map(\.refresh) == [.rules(web)])
        #expect(try st.group(web)?.rules.first { $0.id == rule }?.ports == 2222...2222)
        let id = try #require(items(try api.awsOK(["run-instances", "--image-id", "ami-1", "--security-group-ids", web, "--placement", "HostId=hv1"]),
                                    "Instances").first?["InstanceId"] as? String)
        _ = try api.awsOK(["stop-instances", "--instance-ids", id])
        try api.awsFails(["reboot-instances", "--instance-ids", id], code: "IncorrectInstanceState")
        _ = try api.awsOK(["terminate-instances", "--instance-ids", id])
        let listed = items(try api.awsOK(["describe-instances", "--instance-ids", id]), "Reservations").flatMap { items($0, "Instances") }
        #expect((listed.first?["State"] as? [String: Any])?["Name"] as? String == "terminated")
        #expect(try st.instance(id) == nil)

        try api.awsFails(["delete-security-group", "--group-id", web], code: "DependencyViolation")
        _ = try st.removeInstance("i-1")
        _ = try api.awsOK(["delete-security-group", "--group-id", web])
        #expect(try st.group(web) == nil)
    }

    /// A VPC with its default group, a group and an instance in it; DeleteVpc refused while in
    /// use (nothing changed), then deleted with its default group and terminated instance.
    @Test func vpcsOnPostgres() throws {
        let url = try SharedPostgres.freshDatabase("ec2vpc")
        let api = try APIServerFixture(store: url)
        let st = try #require(try api.store() as? PostgresStore)
        _ = try st.setGuardedPrefixes(host: "hv1", ["tap"])
        let vpc = try #require((try api.awsOK(["create-vpc", "--cidr-block", "10.5.0.0/24", "--tag-specifications",
                                               "ResourceType=vpc,Tags=[{Key=env,Value=test}]"])["Vpc"] as? [String: Any])?["VpcId"] as? String)
        #expect(items(try api.awsOK(["describe-vpcs", "--filters", "Name=tag:env,Values=test"]), "Vpcs").compactMap { $0["VpcId"] as? String } == [vpc])
        let vpcDefault = try #require(try st.ec2Read { tx in try tx.groupID(vpc: vpc, name: "default") })
        let app = try #require(try api.awsOK(["create-security-group", "--vpc-id", vpc, "--group-name", "app", "--description", "a"])["GroupId"] as? String)
        let launched = try #require(items(try api.awsOK(["run-instances", "--image-id", "ami-1", "--security-group-ids", app, "--placement", "HostId=hv1"]),
                                          "Instances").first)
        #expect(launched["PrivateIpAddress"] as? String == "10.5.0.4" && launched["VpcId"] as? String == vpc)
        try api.awsFails(["delete-vpc", "--vpc-id", vpc], code: "InvalidVpcID.NotFound", as: keyB)
        let before = try api.fullSnapshot()
        try api.awsFails(["delete-vpc", "--vpc-id", vpc], code: "DependencyViolation")
        #expect(try api.fullSnapshot() == before)
        _ = try api.awsOK(["terminate-instances", "--instance-ids", try #require(launched["InstanceId"] as? String)])
        _ = try api.awsOK(["delete-security-group", "--group-id", app])
        _ = try api.awsOK(["delete-vpc", "--vpc-id", vpc])
        #expect(try st.group(vpcDefault) == nil)
        #expect(try st.ec2Read { tx in try tx.vpc(vpc) } == nil)
        #expect(items(try api.awsOK(["describe-vpcs"]), "Vpcs").count == 1)
    }
}
