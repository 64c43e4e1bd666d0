import Foundation
import RampartCore
import RampartEC2
import RampartStore
import Testing

extension APIServerFixture {
    /// Every VPC of both accounts with its tags, as text, for "nothing changed" checks.
    func vpcSnapshot() throws -> [String] {
        try store().ec2Read { tx in
            try [keyA.account, keyB.account].flatMap { account in
                try tx.vpcs(account: account, region: "us-east-1").map { v, tags in
                    "\(v.id) \(v.account) \(v.cidr) \(v.isDefault) \(tags.sorted { $0.key < $1.key })"
                }
            }
        }
    }

    /// Groups, VPCs and instances together.
    func fullSnapshot() throws -> String { "\(try snapshot()) \(try vpcSnapshot()) \(try instanceSnapshot())" }
}

/// CreateVpc, DescribeVpcs, DeleteVpc; groups in a VPC; instances in a VPC (chosen by their
/// groups) and their addresses; through the `aws` CLI (what it sends and reads back) and boto3
/// (the refusals, each checked to change nothing, and pagination).
@Suite("EC2 API VPCs", .serialized) struct EC2VpcTests {
    func vpcIDs(_ api: APIServerFixture, _ args: [String] = [], as key: AccessKey = keyA) throws -> [String] {
        items(try api.awsOK(["describe-vpcs"] + args, as: key), "Vpcs").compactMap { $0["VpcId"] as? String }.sorted()
    }

    @Test func vpcsAndTheirGroupsWithTheCLI() throws {
        let api = try APIServerFixture()
        let created = try api.awsOK(["create-vpc", "--cidr-block", "10.0.0.0/16",
                                     "--tag-specifications", "ResourceType=vpc,Tags=[{Key=env,Value=prod},{Key=team}]"])
        let vpc = try #require(created["Vpc"] as? [String: Any])
        let id = try #require(vpc["VpcId"] as? String)
        #expect(id.hasPrefix("vpc-") && id.count == 21)
        #expect(vpc["State"] as? String == "available" && vpc["CidrBlock"] as? String == "10.0.0.0/16")
        #expect(vpc["IsDefault"] as? Bool == false && vpc["OwnerId"] as? String == keyA.account)
        #expect(vpc["InstanceTenancy"] as? String == "default" && vpc["DhcpOptionsId"] as? String == "default")
        #expect(items(vpc, "CidrBlockAssociationSet").first?["CidrBlock"] as? String == "10.0.0.0/16")
        #expect((items(vpc, "CidrBlockAssociationSet").first?["CidrBlockState"] as? [String: Any])?["State"] as? String == "associated")
        #expect(Set(items(vpc, "Tags").map { "\($0["Key"]!)=\($0["Value"]!)" }) == ["env=prod", "team="])

        // Describe: the default VPC and the new one; each filter selects.
        let all = items(try api.awsOK(["describe-vpcs"]), "Vpcs")
        #expect(all.count == 2)
        let def = try #require(all.first { $0["IsDefault"] as? Bool == true })
        let defID = try #require(def["VpcId"] as? String)
        #expect(def["CidrBlock"] as? String == "172.31.0.0/16")
        #expect(try vpcIDs(api, ["--vpc-ids", id]) == [id])
        #expect(try vpcIDs(api, ["--filters", "Name=is-default,Values=true"]) == [defID])
        #expect(try vpcIDs(api, ["--filters", "Name=is-default,Values=false"]) == [id])
        #expect(try vpcIDs(api, ["--filters", "Name=cidr,Values=10.0.0.0/16"]) == [id])
        #expect(try vpcIDs(api, ["--filters", "Name=cidr-block-association.cidr-block,Values=172.31.*"]) == [defID])
        #expect(try vpcIDs(api, ["--filters", "Name=tag:env,Values=prod"]) == [id])
        #expect(try vpcIDs(api, ["--filters", "Name=tag:env,Values=dev"]).isEmpty)
        #expect(try vpcIDs(api, ["--filters", "Name=tag-key,Values=team"]) == [id])
        #expect(try vpcIDs(api, ["--filters", "Name=state,Values=available", "Name=owner-id,Values=\(keyA.account)"]) == [defID, id].sorted())
        #expect(try vpcIDs(api, ["--filters", "Name=vpc-id,Values=\(id)", "Name=is-default,Values=true"]).isEmpty)
        // Tags on a VPC afterwards.
        _ = try api.awsOK(["create-tags", "--resources", id, "--tags", "Key=tier,Value=web"])
        #expect(try vpcIDs(api, ["--filters", "Name=tag:tier,Values=web"]) == [id])
        _ = try api.awsOK(["delete-tags", "--resources", id, "--tags", "Key=tier"])
        #expect(try vpcIDs(api, ["--filters", "Name=tag-key,Values=tier"]).isEmpty)

        // The new VPC's own default group: ingress from itself, egress to 0.0.0.0/0.
        func groups(_ vpc: String) throws -> [[String: Any]] {
            items(try api.awsOK(["describe-security-groups", "--filters", "Name=vpc-id,Values=\(vpc)"]), "SecurityGroups")
        }
        let vpcDefault = try #require(try groups(id).first)
        let vpcDefaultID = try #require(vpcDefault["GroupId"] as? String)
        #expect(try groups(id).count == 1 && vpcDefault["GroupName"] as? String == "default" && vpcDefault["VpcId"] as? String == id)
        let ingress = items(vpcDefault, "IpPermissions")
        #expect(ingress.count == 1 && ingress.first?["IpProtocol"] as? String == "-1")
        #expect(items(ingress[0], "UserIdGroupPairs").compactMap { $0["GroupId"] as? String } == [vpcDefaultID])
        #expect(items(items(vpcDefault, "IpPermissionsEgress").first ?? [:], "IpRanges").compactMap { $0["CidrIp"] as? String } == ["0.0.0.0/0"])
        let defaultGroupOfDefault = try #require(try groups(defID).first { $0["GroupName"] as? String == "default" }?["GroupId"] as? String)
        #expect(defaultGroupOfDefault != vpcDefaultID)
        try api.awsFails(["delete-security-group", "--group-id", vpcDefaultID], code: "CannotDelete")

        // Groups: names unique per VPC; references only within a VPC; GroupName names the default VPC's.
        let web = try #require(try api.awsOK(["create-security-group", "--vpc-id", id, "--group-name", "web", "--description", "w"])["GroupId"] as? String)
        let webDefault = try #require(try api.awsOK(["create-security-group", "--group-name", "web", "--description", "w"])["GroupId"] as? String)
        try api.awsFails(["create-security-group", "--vpc-id", id, "--group-name", "web", "--description", "w"], code: "InvalidGroup.Duplicate")
        #expect(Set(try groups(id).compactMap { $0["GroupId"] as? String }) == [vpcDefaultID, web])
        let named = items(try api.awsOK(["describe-security-groups", "--group-names", "web"]), "SecurityGroups")
        #expect(named.compactMap { $0["GroupId"] as? String } == [webDefault])
        let before = try api.fullSnapshot()
        try api.awsFails(["authorize-security-group-ingress", "--group-id", web, "--protocol", "tcp", "--port", "80", "--source-group", webDefault],
                         code: "InvalidGroup.NotFound")
        try api.awsFails(["delete-vpc", "--vpc-id", id], code: "DependencyViolation")
        try api.awsFails(["delete-vpc", "--vpc-id", defID], code: "OperationNotPermitted")
        try api.awsFails(["delete-vpc", "--vpc-id", id, "--dry-run"], code: "DependencyViolation")  // a dry run checks as the call would
        #expect(try api.fullSnapshot() == before)
        _ = try api.awsOK(["authorize-security-group-ingress", "--group-id", web, "--protocol", "tcp", "--port", "80", "--source-group", vpcDefaultID])

        // Deleted once only its default group is left: the group goes in the same transaction.
        _ = try api.awsOK(["delete-security-group", "--group-id", web])
        try api.awsFails(["delete-vpc", "--vpc-id", id, "--dry-run"], code: "DryRunOperation")
        #expect(try api.vpcSnapshot().contains { $0.hasPrefix(id) })
        _ = try api.awsOK(["delete-vpc", "--vpc-id", id])
        #expect(try api.store().group(vpcDefaultID) == nil)
        #expect(try api.store().ec2Read { tx in try tx.vpc(id) } == nil)
        #expect(try api.store().ec2Read { tx in try tx.tags(id) }.isEmpty)
        try api.awsFails(["describe-vpcs", "--vpc-ids", id], code: "InvalidVpcID.NotFound")
        try api.awsFails(["delete-vpc", "--vpc-id", id], code: "InvalidVpcID.NotFound")
        #expect(try vpcIDs(api) == [defID])
    }

    @Test func refusalsPaginationAndAccountsWithBoto3() throws {
        let api = try APIServerFixture(arguments: ["--regions", "us-east-1,eu-west-1"])
        _ = try api.store().setGuardedPrefixes(host: "hv1", ["tap"])
        let setup = try api.python(pythonPrelude + """
            vpc = ec2.create_vpc(CidrBlock='10.0.0.0/24')['Vpc']['VpcId']
            empty = ec2.create_vpc(CidrBlock='10.9.0.0/28')['Vpc']['VpcId']
            g = ec2.create_security_group(GroupName='g', Description='g', VpcId=vpc)['GroupId']
            d = ec2.create_security_group(GroupName='d', Description='d')['GroupId']
            print(json.dumps({'vpc': vpc, 'empty': empty, 'g': g, 'd': d}))
            """)
        let vpc = try #require(setup["vpc"] as? String), empty = try #require(setup["empty"] as? String)
        let g = try #require(setup["g"] as? String), d = try #require(setup["d"] as? String)
        let before = try api.fullSnapshot()
        let r = try api.python(pythonPrelude + """
            vpc, empty, g, d = '\(vpc)', '\(empty)', '\(g)', '\(d)'
            # botocore itself refuses some of these before sending; sent anyway, the server must too.
            raw = boto3.client('ec2', endpoint_url=os.environ['ENDPOINT'], region_name='us-east-1', config=Config(parameter_validation=False, retries={'max_attempts': 1, 'mode': 'standard'}))
            default_vpc = ec2.describe_vpcs(Filters=[{'Name': 'is-default', 'Values': ['true']}])['Vpcs'][0]['VpcId']
            out = {
                'range_wide': code(ec2.create_vpc, CidrBlock='10.0.0.0/15'),
                'range_narrow': code(ec2.create_vpc, CidrBlock='10.0.0.0/29'),
                'host_bits': code(ec2.create_vpc, CidrBlock='10.0.0.1/16'),
                'ipv6_block': code(ec2.create_vpc, CidrBlock='2001:db8::/56'),
                'garbage': code(ec2.create_vpc, CidrBlock='ten'),
                'no_block': code(raw.create_vpc),
                'amazon_ipv6': code(ec2.create_vpc, CidrBlock='10.1.0.0/16', AmazonProvidedIpv6CidrBlock=True),
                'dedicated': code(ec2.create_vpc, CidrBlock='10.1.0.0/16', InstanceTenancy='dedicated'),
                'tag_type': code(ec2.create_vpc, CidrBlock='10.1.0.0/16', TagSpecifications=[{'ResourceType': 'security-group', 'Tags': [{'Key': 'a', 'Value': 'b'}]}]),
                'tag_reserved': code(ec2.create_vpc, CidrBlock='10.1.0.0/16', TagSpecifications=[{'ResourceType': 'vpc', 'Tags': [{'Key': 'aws:x', 'Value': 'b'}]}]),
                'create_dry_run': code(ec2.create_vpc, CidrBlock='10.1.0.0/16', DryRun=True),
                'describe_unknown': code(ec2.describe_vpcs, VpcIds=['vpc-0123456789abcdef0']),
                'describe_malformed': code(ec2.describe_vpcs, VpcIds=['vpc-zz']),
                'describe_filter': code(ec2.describe_vpcs, Filters=[{'Name': 'colour', 'Values': ['x']}]),
                'describe_small_page': code(raw.describe_vpcs, MaxResults=4),
                'describe_token': code(ec2.describe_vpcs, NextToken='garbage'),
                'describe_ids_and_page': code(ec2.describe_vpcs, VpcIds=[vpc], MaxResults=5),
                'describe_dry_run': code(ec2.describe_vpcs, DryRun=True),
                'delete_unknown': code(ec2.delete_vpc, VpcId='vpc-0123456789abcdef0'),
                'delete_malformed': code(ec2.delete_vpc, VpcId='subnet-1'),
                'delete_default': code(ec2.delete_vpc, VpcId=default_vpc),
                'delete_in_use': code(ec2.delete_vpc, VpcId=vpc),
                'delete_dry_run': code(ec2.delete_vpc, VpcId=empty, DryRun=True),
                'group_unknown_vpc': code(ec2.create_security_group, GroupName='x', Description='x', VpcId='vpc-0123456789abcdef0'),
                'group_malformed_vpc': code(ec2.create_security_group, GroupName='x', Description='x', VpcId='vpc-!'),
                'group_default_name': code(ec2.create_security_group, GroupName='default', Description='x', VpcId=vpc),
                'cross_vpc_rule': code(ec2.authorize_security_group_egress, GroupId=d, IpPermissions=[{'IpProtocol': '-1', 'UserIdGroupPairs': [{'GroupId': g}]}]),
                'run_two_vpcs': code(ec2.run_instances, ImageId='ami-1', MinCount=1, MaxCount=1, SecurityGroupIds=[g, d]),
                'run_name_and_vpc': code(ec2.run_instances, ImageId='ami-1', MinCount=1, MaxCount=1, SecurityGroupIds=[g], SecurityGroups=['d']),
                'run_subnet': code(ec2.run_instances, ImageId='ami-1', MinCount=1, MaxCount=1, SubnetId='subnet-12345678'),
                'tag_unknown_vpc': code(ec2.create_tags, Resources=['vpc-0123456789abcdef0'], Tags=[{'Key': 'a', 'Value': 'b'}]),
            }
            print(json.dumps(out))
            """)
        #expect(r as? [String: String] == [
            "range_wide": "InvalidVpc.Range", "range_narrow": "InvalidVpc.Range", "host_bits": "InvalidParameterValue",
            "ipv6_block": "InvalidParameterValue", "garbage": "InvalidParameterValue", "no_block": "MissingParameter",
            "amazon_ipv6": "UnsupportedOperation", "dedicated": "UnsupportedOperation", "tag_type": "InvalidParameterValue",
            "tag_reserved": "InvalidParameterValue", "create_dry_run": "DryRunOperation",
            "describe_unknown": "InvalidVpcID.NotFound", "describe_malformed": "InvalidVpcID.Malformed",
            "describe_filter": "InvalidParameterValue", "describe_small_page": "InvalidParameterValue",
            "describe_token": "InvalidPaginationToken", "describe_ids_and_page": "InvalidParameterCombination",
            "describe_dry_run": "DryRunOperation", "delete_unknown": "InvalidVpcID.NotFound", "delete_malformed": "InvalidVpcID.Malformed",
            "delete_default": "OperationNotPermitted", "delete_in_use": "DependencyViolation", "delete_dry_run": "DryRunOperation",
            "group_unknown_vpc": "InvalidVpcID.NotFound", "group_malformed_vpc": "InvalidVpcID.Malformed",
            "group_default_name": "InvalidGroup.Reserved", "cross_vpc_rule": "InvalidGroup.NotFound",
            "run_two_vpcs": "InvalidParameterCombination", "run_name_and_vpc": "InvalidParameterCombination",
            "run_subnet": "UnsupportedOperation", "tag_unknown_vpc": "InvalidVpcID.NotFound",
        ])
        #expect(try api.fullSnapshot() == before)

        // Another account, or region: A's VPCs do not exist for it (its own default VPC appears on its first call).
        let beforeA = (try api.snapshot()[0], try api.vpcSnapshot().filter { $0.contains(keyA.account) })
        let b = try api.python(pythonPrelude + """
            vpc, g = '\(vpc)', '\(g)'
            out = {
                'vpcs': [v['IsDefault'] for v in ec2.describe_vpcs()['Vpcs']],
                'describe': code(ec2.describe_vpcs, VpcIds=[vpc]),
                'delete': code(ec2.delete_vpc, VpcId=vpc),
                'group': code(ec2.create_security_group, GroupName='x', Description='x', VpcId=vpc),
                'tag': code(ec2.create_tags, Resources=[vpc], Tags=[{'Key': 'a', 'Value': 'b'}]),
                'run': code(ec2.run_instances, ImageId='ami-1', MinCount=1, MaxCount=1, SecurityGroupIds=[g]),
            }
            print(json.dumps(out))
            """, as: keyB)
        #expect(b["vpcs"] as? [Bool] == [true])
        #expect(b["describe"] as? String == "InvalidVpcID.NotFound" && b["delete"] as? String == "InvalidVpcID.NotFound")
        #expect(b["group"] as? String == "InvalidVpcID.NotFound" && b["tag"] as? String == "InvalidVpcID.NotFound")
        #expect(b["run"] as? String == "InvalidGroup.NotFound")
        // The same account in another region: its own default VPC only.
        let eu = try api.python(pythonPrelude + """
            vpc = '\(vpc)'
            eu = boto3.client('ec2', endpoint_url=os.environ['ENDPOINT'], region_name='eu-west-1', config=Config(retries={'max_attempts': 1, 'mode': 'standard'}))
            print(json.dumps({'vpcs': [v['CidrBlock'] for v in eu.describe_vpcs()['Vpcs']], 'describe': code(eu.describe_vpcs, VpcIds=[vpc]),
                              'delete': code(eu.delete_vpc, VpcId=vpc), 'group': code(eu.create_security_group, GroupName='x', Description='x', VpcId=vpc)}))
            """)
        #expect(eu["vpcs"] as? [String] == ["172.31.0.0/16"] && eu["describe"] as? String == "InvalidVpcID.NotFound")
        #expect(eu["delete"] as? String == "InvalidVpcID.NotFound" && eu["group"] as? String == "InvalidVpcID.NotFound")
        #expect(try api.snapshot()[0] == beforeA.0 && api.vpcSnapshot().filter { $0.contains(keyA.account) } == beforeA.1)

        // Pagination: 8 VPCs in pages of 5, each once, in id order; filters apply before paging.
        let pages = try api.python(pythonPrelude + """
            for n in range(5):
                ec2.create_vpc(CidrBlock='10.%d.0.0/16' % (100 + n))
            first = ec2.describe_vpcs(MaxResults=5)
            second = ec2.describe_vpcs(MaxResults=5, NextToken=first['NextToken'])
            paginated = [v['VpcId'] for p in ec2.get_paginator('describe_vpcs').paginate(PaginationConfig={'PageSize': 5}) for v in p['Vpcs']]
            filtered = ec2.describe_vpcs(MaxResults=5, Filters=[{'Name': 'cidr', 'Values': ['10.10?.0.0/16']}])
            print(json.dumps({'first': [v['VpcId'] for v in first['Vpcs']], 'second': [v['VpcId'] for v in second['Vpcs']],
                              'more': 'NextToken' in second, 'all': sorted(v['VpcId'] for v in ec2.describe_vpcs()['Vpcs']),
                              'paginated': paginated, 'filtered': len(filtered['Vpcs']), 'filtered_more': 'NextToken' in filtered}))
            """)
        let first = try #require(pages["first"] as? [String]), second = try #require(pages["second"] as? [String])
        let allIDs = try #require(pages["all"] as? [String])
        #expect(allIDs.count == 8 && first.count == 5 && second.count == 3 && pages["more"] as? Bool == false)
        #expect(first + second == allIDs && pages["paginated"] as? [String] == allIDs)
        #expect(pages["filtered"] as? Int == 5 && pages["filtered_more"] as? Bool == false)

        // The default group referenced by a rule of a group outside the VPC (written with the
        // controller's verb: the API refuses such a rule): DependencyViolation, nothing changes.
        let emptyDefault = try #require(try api.store().ec2Read { tx in try tx.groupID(vpc: empty, name: "default") })
        _ = try api.store().createGroup("ops", description: nil)
        _ = try api.store().authorize(group: "ops", rule: Rule(direction: .ingress, proto: .any, remote: .group(emptyDefault)))
        let referenced = try api.fullSnapshot()
        try api.awsFails(["delete-vpc", "--vpc-id", empty], code: "DependencyViolation")
        #expect(try api.fullSnapshot() == referenced)
        _ = try api.store().deleteGroup("ops")
        _ = try api.awsOK(["delete-vpc", "--vpc-id", empty])
        #expect(try api.store().group(emptyDefault) == nil)
    }

    @Test func instancesInAVpcWithTheCLI() throws {
        let api = try APIServerFixture()
        _ = try api.store().setGuardedPrefixes(host: "hv1", ["tap"])
        let daemon = try FakeDaemon(path: api.daemonSocket, host: "hv1")
        let small = try #require((try api.awsOK(["create-vpc", "--cidr-block", "10.1.0.0/28"])["Vpc"] as? [String: Any])?["VpcId"] as? String)
        let app = try #require(try api.awsOK(["create-security-group", "--vpc-id", small, "--group-name", "app", "--description", "a"])["GroupId"] as? String)
        func launch(_ args: [String]) throws -> [[String: Any]] {
            items(try api.awsOK(["run-instances", "--image-id", "ami-1", "--placement", "HostId=hv1"] + args), "Instances")
        }
        // In the VPC of its groups, addresses from its range (past the 4 AWS reserves).
        let two = try launch(["--count", "2", "--security-group-ids", app])
        #expect(two.compactMap { $0["PrivateIpAddress"] as? String } == ["10.1.0.4", "10.1.0.5"])
        #expect(two.allSatisfy { $0["VpcId"] as? String == small })
        let ids = two.compactMap { $0["InstanceId"] as? String }
        #expect(try api.store().instance(ids[0])?.groups == [app])
        #expect(Set(daemon.received) == Set(ids.map { "/v1/refresh/instance/\($0)" }))
        let listed = items(try api.awsOK(["describe-instances", "--filters", "Name=vpc-id,Values=\(small)"]), "Reservations").flatMap { items($0, "Instances") }
        #expect(Set(listed.compactMap { $0["InstanceId"] as? String }) == Set(ids))

        // Without groups: the default VPC, its default group.
        let plain = try #require(try launch([]).first)
        #expect(plain["PrivateIpAddress"] as? String == "172.31.0.4" && plain["VpcId"] as? String != small)

        // A VPC overlapping the default one, on the same hypervisor: its first instance does not
        // take 172.31.0.4 (used there), so hv1 never has one address twice.
        let overlap = try #require((try api.awsOK(["create-vpc", "--cidr-block", "172.31.0.0/16"])["Vpc"] as? [String: Any])?["VpcId"] as? String)
        let overlapDefault = try #require(try api.store().ec2Read { tx in try tx.groupID(vpc: overlap, name: "default") })
        let o = try #require(try launch(["--security-group-ids", overlapDefault]).first)
        #expect(o["PrivateIpAddress"] as? String == "172.31.0.5" && o["VpcId"] as? String == overlap)
        let addresses = try api.store().document(forHost: "hv1").instances.values.flatMap(\.ips)
        #expect(addresses.count == 4 && Set(addresses).count == 4)

        // The /28 holds 11 instances (16 less AWS's 4 reserved and the last): the 12th is refused.
        _ = try launch(["--count", "9", "--security-group-ids", app])
        let full = try api.fullSnapshot()
        try api.awsFails(["run-instances", "--image-id", "ami-1", "--placement", "HostId=hv1", "--security-group-ids", app],
                         code: "InsufficientFreeAddressesInSubnet")
        #expect(try api.fullSnapshot() == full)

        // The groups of an instance stay in its VPC.
        try api.awsFails(["modify-instance-attribute", "--instance-id", ids[0], "--groups", overlapDefault], code: "InvalidParameterCombination")
        // DeleteVpc waits for the instances (terminated ones do not count) and the groups.
        try api.awsFails(["delete-vpc", "--vpc-id", small], code: "DependencyViolation")
        #expect(try api.fullSnapshot() == full)
        let inSmall = try api.instanceSnapshot().filter { $0.vpc.id == small }.map(\.id)
        _ = try api.awsOK(["terminate-instances", "--instance-ids"] + inSmall)
        try api.awsFails(["delete-vpc", "--vpc-id", small], code: "DependencyViolation")  // app is left
        _ = try api.awsOK(["delete-security-group", "--group-id", app])
        _ = try api.awsOK(["delete-vpc", "--vpc-id", small])
        #expect(try api.instanceSnapshot().allSatisfy { $0.vpc.id != small })
        try api.awsFails(["describe-instances", "--instance-ids", ids[0]], code: "InvalidInstanceID.NotFound")
    }
}
