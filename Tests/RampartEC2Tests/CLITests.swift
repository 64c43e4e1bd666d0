import Foundation
import RampartCore
import RampartEC2
import RampartStore
import Testing

func items(_ json: [String: Any], _ key: String) -> [[String: Any]] { json[key] as? [[String: Any]] ?? [] }

/// Every security-group action through the real `aws` CLI (awscli 1.x) against `rampart-api`.
@Suite("EC2 API with the aws CLI", .serialized) struct EC2CLITests {
    @Test func createDescribeDeleteWithDefaultVPC() throws {
        let api = try APIServerFixture()
        let created = try api.awsOK(["create-security-group", "--group-name", "web", "--description", "web servers",
                                     "--tag-specifications", "ResourceType=security-group,Tags=[{Key=env,Value=prod}]"])
        let web = try #require(created["GroupId"] as? String)
        #expect(web.range(of: "^sg-[0-9a-f]{17}$", options: .regularExpression) != nil)
        try api.awsFails(["create-security-group", "--group-name", "web", "--description", "again"], code: "InvalidGroup.Duplicate")
        try api.awsFails(["create-security-group", "--group-name", "default", "--description", "x"], code: "InvalidGroup.Reserved")

        let d = try api.awsOK(["describe-security-groups", "--group-ids", web])
        let g = try #require(items(d, "SecurityGroups").first)
        #expect(g["GroupName"] as? String == "web")
        #expect(g["Description"] as? String == "web servers")
        #expect(g["OwnerId"] as? String == keyA.account)
        #expect((g["Tags"] as? [[String: String]]) == [["Key": "env", "Value": "prod"]])
        #expect(items(g, "IpPermissions").isEmpty)
        // AWS's default egress: all IPv4, and no IPv6.
        let egress = items(g, "IpPermissionsEgress")
        #expect(egress.count == 1)
        #expect(egress.first?["IpProtocol"] as? String == "-1")
        #expect((egress.first?["IpRanges"] as? [[String: String]]) == [["CidrIp": "0.0.0.0/0"]])
        #expect(items(egress[0], "Ipv6Ranges").isEmpty)

        // The default VPC's `default` group: ingress from itself, all egress.
        let dd = try api.awsOK(["describe-security-groups", "--group-names", "default"])
        let def = try #require(items(dd, "SecurityGroups").first)
        let defID = try #require(def["GroupId"] as? String)
        #expect(def["VpcId"] as? String == g["VpcId"] as? String)
        let selfRef = items(def, "IpPermissions").first.map { items($0, "UserIdGroupPairs") } ?? []
        #expect(selfRef.first?["GroupId"] as? String == defID)
        try api.awsFails(["delete-security-group", "--group-name", "default"], code: "CannotDelete")

        // In the store: the contract's group and rule, ids as the API gave them.
        let stored = try #require(try api.store().group(web))
        #expect(stored.description == "web servers")
        #expect(stored.rules.count == 1 && stored.rules[0].direction == .egress && stored.rules[0].proto == .any)
        #expect(stored.rules[0].id?.hasPrefix("sgr-") == true)

        try api.awsFails(["describe-security-groups", "--group-ids", "sg-0123456789abcdef0"], code: "InvalidGroup.NotFound")
        try api.awsFails(["describe-security-groups", "--group-ids", "sg-nothex"], code: "InvalidGroupId.Malformed")
        try api.awsFails(["describe-security-groups", "--group-names", "nope"], code: "InvalidGroup.NotFound")
        // Another account sees none of it.
        try api.awsFails(["describe-security-groups", "--group-ids", web], code: "InvalidGroup.NotFound", as: keyB)
        let other = try api.awsOK(["describe-security-groups"], as: keyB)
        #expect(items(other, "SecurityGroups").map { $0["GroupName"] as? String } == ["default"])

        _ = try api.awsOK(["delete-security-group", "--group-id", web])
        try api.awsFails(["delete-security-group", "--group-id", web], code: "InvalidGroup.NotFound")
        #expect(try api.store().group(web) == nil)
    }

    @Test func authorizeRevokeIngressAndEgress() throws {
        let api = try APIServerFixture()
        let web = try #require(try api.awsOK(["create-security-group", "--group-name", "web", "--description", "w"])["GroupId"] as? String)
        let db = try #require(try api.awsOK(["create-security-group", "--group-name", "db", "--description", "d"])["GroupId"] as? String)

        let a = try api.awsOK(["authorize-security-group-ingress", "--group-id", web, "--ip-permissions",
                               "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=10.0.0.0/8,Description=ssh}],Ipv6Ranges=[{CidrIpv6=2001:db8::/32}]",
                               "IpProtocol=icmp,FromPort=8,ToPort=-1,IpRanges=[{CidrIp=0.0.0.0/0}]"])
        let added = items(a, "SecurityGroupRules")
        #expect(added.count == 3)
        #expect(added.allSatisfy { ($0["SecurityGroupRuleId"] as? String)?.hasPrefix("sgr-") == true && $0["IsEgress"] as? Bool == false })
        #expect(added.first?["Description"] as? String == "ssh")
        try api.awsFails(["authorize-security-group-ingress", "--group-id", web, "--protocol", "tcp", "--port", "22", "--cidr", "10.0.0.0/8"],
                         code: "InvalidPermission.Duplicate")
        try api.awsFails(["authorize-security-group-ingress", "--group-id", web, "--protocol", "tcp", "--port", "22", "--cidr", "10.0.0.1/8"],
                         code: "InvalidParameterValue")
        try api.awsFails(["authorize-security-group-ingress", "--group-id", "sg-0123456789abcdef0", "--protocol", "tcp", "--port", "22", "--cidr", "10.0.0.0/8"],
                         code: "InvalidGroup.NotFound")
        // db allows all traffic from web's members (a group pair).
        _ = try api.awsOK(["authorize-security-group-ingress", "--group-id", db, "--ip-permissions", "IpProtocol=-1,UserIdGroupPairs=[{GroupId=\(web)}]"])

        // Stored as the contract's rules.
        let st = try api.store()
        let rules = try #require(try st.group(web)).rules.map { r -> Rule in var b = r; b.id = nil; return b }
        #expect(rules.contains(Rule(proto: .tcp, ports: 22...22, remote: .cidr(IPPrefix.v4(IPv4Prefix(address: IPv4Address("10.0.0.0")!, length: 8))))))
        #expect(rules.contains(Rule(proto: .icmp, icmpType: 8, remote: .cidr(IPPrefix.v4(IPv4Prefix(address: IPv4Address(raw: 0), length: 0))))))
        #expect(try #require(try st.group(db)).rules.contains { $0.remote == .group(web) && $0.proto == .any })

        // Described as AWS groups them: one permission per protocol and ports.
        let g = try #require(items(try api.awsOK(["describe-security-groups", "--group-ids", web]), "SecurityGroups").first)
        let ingress = items(g, "IpPermissions")
        let ssh = try #require(ingress.first { $0["IpProtocol"] as? String == "tcp" })
        #expect(ssh["FromPort"] as? Int == 22 && ssh["ToPort"] as? Int == 22)
        #expect((ssh["IpRanges"] as? [[String: String]]) == [["CidrIp": "10.0.0.0/8", "Description": "ssh"]])
        #expect((ssh["Ipv6Ranges"] as? [[String: String]]) == [["CidrIpv6": "2001:db8::/32"]])
        let icmp = try #require(ingress.first { $0["IpProtocol"] as? String == "icmp" })
        #expect(icmp["FromPort"] as? Int == 8 && icmp["ToPort"] as? Int == -1)

        // DescribeSecurityGroupRules: by group, by id.
        let rr = items(try api.awsOK(["describe-security-group-rules", "--filters", "Name=group-id,Values=\(web)"]), "SecurityGroupRules")
        #expect(rr.count == 4)  // 3 ingress + the default egress
        let v6 = try #require(rr.first { $0["CidrIpv6"] as? String == "2001:db8::/32" })
        let v6id = try #require(v6["SecurityGroupRuleId"] as? String)
        #expect(items(try api.awsOK(["describe-security-group-rules", "--security-group-rule-ids", v6id]), "SecurityGroupRules").count == 1)
        try api.awsFails(["describe-security-group-rules", "--security-group-rule-ids", "sgr-0123456789abcdef0"], code: "InvalidSecurityGroupRuleId.NotFound")

        // Revoke by rule id, by permission; what is not there is NotFound.
        _ = try api.awsOK(["revoke-security-group-ingress", "--group-id", web, "--security-group-rule-ids", v6id])
        try api.awsFails(["revoke-security-group-ingress", "--group-id", web, "--security-group-rule-ids", v6id], code: "InvalidSecurityGroupRuleId.NotFound")
        _ = try api.awsOK(["revoke-security-group-ingress", "--group-id", web, "--protocol", "tcp", "--port", "22", "--cidr", "10.0.0.0/8"])
        try api.awsFails(["revoke-security-group-ingress", "--group-id", web, "--protocol", "tcp", "--port", "22", "--cidr", "10.0.0.0/8"],
                         code: "InvalidPermission.NotFound")
        #expect(try #require(try st.group(web)).rules.count == 2)

        // Egress: add 443, remove the default allow-all.
        _ = try api.awsOK(["authorize-security-group-egress", "--group-id", web, "--ip-permissions", "IpProtocol=tcp,FromPort=443,ToPort=443,IpRanges=[{CidrIp=0.0.0.0/0}]"])
        _ = try api.awsOK(["revoke-security-group-egress", "--group-id", web, "--ip-permissions", "IpProtocol=-1,IpRanges=[{CidrIp=0.0.0.0/0}]"])
        let eg = try #require(try st.group(web)).rules.filter { $0.direction == .egress }
        #expect(eg.count == 1 && eg[0].proto == .tcp && eg[0].ports == 443...443)

        // web is referenced by db: not deletable until the rule goes.
        try api.awsFails(["delete-security-group", "--group-id", web], code: "DependencyViolation")
        _ = try api.awsOK(["revoke-security-group-ingress", "--group-id", db, "--ip-permissions", "IpProtocol=-1,UserIdGroupPairs=[{GroupId=\(web)}]"])
        _ = try api.awsOK(["delete-security-group", "--group-id", web])
    }

    /// A rule change reaches the hypervisors of the group's members before the call returns.
    @Test func authorizeAndRevokeAreDeliveredToTheMembersHosts() throws {
        let api = try APIServerFixture()
        let daemon = try FakeDaemon(path: api.daemonSocket, host: "hv1")
        let web = try #require(try api.awsOK(["create-security-group", "--group-name", "web", "--description", "w"])["GroupId"] as? String)
        #expect(daemon.received.isEmpty)  // no member yet: nothing to deliver
        _ = try api.store().addInstance("i-1", Instance(host: "hv1", groups: [web], ips: [IPAddress("10.0.0.5")!], interface: "tap1"))
        _ = try api.awsOK(["authorize-security-group-ingress", "--group-id", web, "--protocol", "tcp", "--port", "80", "--cidr", "0.0.0.0/0"])
        #expect(daemon.received == ["/v1/refresh/rules/\(web)"])
        _ = try api.awsOK(["revoke-security-group-ingress", "--group-id", web, "--protocol", "tcp", "--port", "80", "--cidr", "0.0.0.0/0"])
        #expect(daemon.received == ["/v1/refresh/rules/\(web)", "/v1/refresh/rules/\(web)"])
        // A dry run delivers nothing.
        try api.awsFails(["authorize-security-group-ingress", "--group-id", web, "--protocol", "tcp", "--port", "81", "--cidr", "0.0.0.0/0", "--dry-run"], code: "DryRunOperation")
        #expect(daemon.received.count == 2)
        // The document the daemon would load has the rule the API wrote.
        _ = try api.awsOK(["authorize-security-group-ingress", "--group-id", web, "--protocol", "udp", "--port", "53", "--cidr", "192.0.2.0/24"])
        let doc = try api.store().document(forHost: "hv1")
        #expect(doc.groups[web]?.rules.contains { $0.proto == .udp && $0.ports == 53...53 } == true)
    }

    @Test func membersBlockDeletionAndDryRunChangesNothing() throws {
        let api = try APIServerFixture()
        let web = try #require(try api.awsOK(["create-security-group", "--group-name", "web", "--description", "w"])["GroupId"] as? String)
        // A member (added with the controller's verb): deletion is refused.
        _ = try api.store().addInstance("i-1", Instance(host: "hv1", groups: [web], ips: [IPAddress("10.0.0.5")!], interface: "tap1"))
        try api.awsFails(["delete-security-group", "--group-id", web], code: "DependencyViolation")
        _ = try api.store().removeInstance("i-1")

        let before = try api.snapshot()
        try api.awsFails(["create-security-group", "--group-name", "x", "--description", "x", "--dry-run"], code: "DryRunOperation")
        try api.awsFails(["authorize-security-group-ingress", "--group-id", web, "--protocol", "tcp", "--port", "80", "--cidr", "0.0.0.0/0", "--dry-run"], code: "DryRunOperation")
        try api.awsFails(["revoke-security-group-egress", "--group-id", web, "--ip-permissions", "IpProtocol=-1,IpRanges=[{CidrIp=0.0.0.0/0}]", "--dry-run"], code: "DryRunOperation")
        try api.awsFails(["create-tags", "--resources", web, "--tags", "Key=a,Value=b", "--dry-run"], code: "DryRunOperation")
        try api.awsFails(["delete-security-group", "--group-id", web, "--dry-run"], code: "DryRunOperation")
        #expect(try api.snapshot() == before)
        // A dry run that would fail says why.
        try api.awsFails(["revoke-security-group-ingress", "--group-id", web, "--protocol", "tcp", "--port", "80", "--cidr", "0.0.0.0/0", "--dry-run"],
                         code: "InvalidPermission.NotFound")
        try api.awsFails(["delete-security-group", "--group-id", "sg-0123456789abcdef0", "--dry-run"], code: "InvalidGroup.NotFound")
        try api.awsFails(["describe-security-groups", "--dry-run"], code: "DryRunOperation")
    }

    @Test func tagsAndFilters() throws {
        let api = try APIServerFixture()
        let web = try #require(try api.awsOK(["create-security-group", "--group-name", "web", "--description", "web tier"])["GroupId"] as? String)
        let db = try #require(try api.awsOK(["create-security-group", "--group-name", "db", "--description", "database"])["GroupId"] as? String)
        _ = try api.awsOK(["create-tags", "--resources", web, db, "--tags", "Key=env,Value=prod", "Key=team,Value=a"])
        _ = try api.awsOK(["delete-tags", "--resources", db, "--tags", "Key=env"])
        _ = try api.awsOK(["delete-tags", "--resources", web, "--tags", "Key=team,Value=other"])  // value differs: kept
        try api.awsFails(["create-tags", "--resources", "i-12345678", "--tags", "Key=a,Value=b"], code: "InvalidID")
        func names(_ filters: [String]) throws -> [String] {
            items(try api.awsOK(["describe-security-groups", "--filters"] + filters), "SecurityGroups").compactMap { $0["GroupName"] as? String }.sorted()
        }
        #expect(try names(["Name=tag:env,Values=prod"]) == ["web"])
        #expect(try names(["Name=tag:team,Values=a"]) == ["db", "web"])
        #expect(try names(["Name=tag-key,Values=env"]) == ["web"])
        #expect(try names(["Name=group-name,Values=w*,d?"]) == ["db", "web"])
        #expect(try names(["Name=description,Values=database"]) == ["db"])
        #expect(try names(["Name=group-id,Values=\(web)", "Name=group-name,Values=db"]) == [])
        let vpc = try #require(items(try api.awsOK(["describe-security-groups", "--group-ids", web]), "SecurityGroups").first?["VpcId"] as? String)
        #expect(try names(["Name=vpc-id,Values=\(vpc)"]) == ["db", "default", "web"])
        try api.awsFails(["describe-security-groups", "--filters", "Name=no-such-filter,Values=x"], code: "InvalidParameterValue")
    }

    /// `--no-auth` says so on start-up and takes unsigned requests as its one account; without
    /// it an unsigned request is refused.
    @Test func noAuthOnlyWhenAsked() throws {
        let open = try APIServerFixture(noAuth: true)
        #expect(open.errorLog.contains("WARNING: --no-auth"))
        let d = try open.awsOK(["describe-security-groups", "--no-sign-request"])
        #expect(items(d, "SecurityGroups").first?["OwnerId"] as? String == "000000000000")
        let signed = try APIServerFixture()
        try signed.awsFails(["describe-security-groups", "--no-sign-request"], code: "AuthFailure")
    }

    @Test func paginationWithPageSize() throws {
        let api = try APIServerFixture()
        for i in 0..<11 { _ = try api.awsOK(["create-security-group", "--group-name", "g\(i)", "--description", "g"]) }
        // The CLI follows NextToken itself: 12 groups (with default) in pages of 5.
        let all = items(try api.awsOK(["describe-security-groups", "--page-size", "5"]), "SecurityGroups")
        #expect(all.count == 12)
        #expect(Set(all.compactMap { $0["GroupId"] as? String }).count == 12)
        let first = try api.awsOK(["describe-security-groups", "--max-items", "5"])
        #expect(items(first, "SecurityGroups").count == 5)
        #expect(first["NextToken"] != nil)
    }
}
