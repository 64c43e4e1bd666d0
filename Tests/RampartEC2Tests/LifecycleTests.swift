import Foundation
import RampartCore
import RampartStore
import Testing

/// Instance groups and lifecycle through the `aws` CLI and boto3: ModifyInstanceAttribute and
/// DescribeInstanceAttribute (groupSet), Stop/Start/Reboot/Terminate with AWS's state rules,
/// terminated instances listed for the visible period, and the allowed regions.
@Suite("EC2 API instance groups and lifecycle", .serialized) struct EC2LifecycleTests {
    /// The state of `id` as describe-instances shows it (nil: not listed).
    func state(_ api: APIServerFixture, _ id: String) throws -> String? {
        let listed = items(try api.awsOK(["describe-instances"]), "Reservations").flatMap { items($0, "Instances") }
        return (listed.first { $0["InstanceId"] as? String == id }?["State"] as? [String: Any])?["Name"] as? String
    }

    @Test func groupsAndLifecycleWithTheCLI() throws {
        let api = try APIServerFixture(arguments: ["--terminated-visible", "2", "--regions", "us-east-1,eu-west-1"])
        _ = try api.store().setGuardedPrefixes(host: "hv1", ["tap"])
        let daemon = try FakeDaemon(path: api.daemonSocket, host: "hv1")
        var groups: [String] = []
        for n in 0..<6 {
            groups.append(try #require(try api.awsOK(["create-security-group", "--group-name", "g\(n)", "--description", "g"])["GroupId"] as? String))
        }
        let run = try api.awsOK(["run-instances", "--image-id", "ami-12345678", "--security-group-ids", groups[0], "--placement", "HostId=hv1"])
        let id = try #require(items(run, "Instances").first?["InstanceId"] as? String)
        try api.awsFails(["run-instances", "--image-id", "ami-12345678", "--security-group-ids"] + groups, code: "SecurityGroupsPerInterfaceLimitExceeded")

        // Groups: replaced in one call, read back in order.
        let heard = daemon.received.count
        _ = try api.awsOK(["modify-instance-attribute", "--instance-id", id, "--groups", groups[1], groups[2]])
        let attr = try api.awsOK(["describe-instance-attribute", "--instance-id", id, "--attribute", "groupSet"])
        #expect(items(attr, "Groups").compactMap { $0["GroupId"] as? String } == [groups[1], groups[2]])
        #expect(items(attr, "Groups").first?["GroupName"] as? String == "g1")
        #expect(try api.store().instance(id)?.groups == [groups[1], groups[2]])
        #expect(Array(daemon.received.dropFirst(heard)) == ["/v1/refresh/instance/\(id)"])

        let before = try api.instanceSnapshot()
        try api.awsFails(["modify-instance-attribute", "--instance-id", id, "--groups"] + groups, code: "SecurityGroupsPerInterfaceLimitExceeded")
        try api.awsFails(["modify-instance-attribute", "--instance-id", id, "--groups", "sg-0123456789abcdef0"], code: "InvalidGroup.NotFound")
        try api.awsFails(["modify-instance-attribute", "--instance-id", id, "--groups", groups[3], "--dry-run"], code: "DryRunOperation")
        try api.awsFails(["modify-instance-attribute", "--instance-id", id, "--source-dest-check"], code: "UnsupportedOperation")
        try api.awsFails(["modify-instance-attribute", "--instance-id", "i-0123456789abcdef0", "--groups", groups[3]], code: "InvalidInstanceID.NotFound")
        try api.awsFails(["describe-instance-attribute", "--instance-id", id, "--attribute", "userData"], code: "UnsupportedOperation")
        try api.awsFails(["reboot-instances", "--instance-ids", id, "--dry-run"], code: "DryRunOperation")
        try api.awsFails(["stop-instances", "--instance-ids", id, "--dry-run"], code: "DryRunOperation")
        #expect(try api.instanceSnapshot() == before)

        // Stop, stop again, reboot refused, start, reboot.
        let stopped = try api.awsOK(["stop-instances", "--instance-ids", id])
        let change = try #require(items(stopped, "StoppingInstances").first)
        #expect((change["CurrentState"] as? [String: Any])?["Name"] as? String == "stopped")
        #expect((change["PreviousState"] as? [String: Any])?["Name"] as? String == "running")
        #expect(try state(api, id) == "stopped")
        _ = try api.awsOK(["stop-instances", "--instance-ids", id])
        try api.awsFails(["reboot-instances", "--instance-ids", id], code: "IncorrectInstanceState")
        #expect(try api.store().instance(id) != nil)  // a stopped instance keeps its record
        let filtered = items(try api.awsOK(["describe-instances", "--filters", "Name=instance-state-name,Values=stopped"]), "Reservations")
        #expect(filtered.count == 1)
        _ = try api.awsOK(["start-instances", "--instance-ids", id])
        #expect(try state(api, id) == "running")
        _ = try api.awsOK(["reboot-instances", "--instance-ids", id])

        // Terminated: listed as such for the visible period (2 s here), refused by the others.
        let heardBefore = daemon.received.count
        let t = try api.awsOK(["terminate-instances", "--instance-ids", id])
        #expect((items(t, "TerminatingInstances").first?["CurrentState"] as? [String: Any])?["Code"] as? Int == 48)
        #expect(Array(daemon.received.dropFirst(heardBefore)) == ["/v1/refresh/instance/\(id)"])
        #expect(try api.store().instance(id) == nil)
        #expect(try state(api, id) == "terminated")
        let again = try api.awsOK(["terminate-instances", "--instance-ids", id])
        #expect((items(again, "TerminatingInstances").first?["PreviousState"] as? [String: Any])?["Name"] as? String == "terminated")
        try api.awsFails(["start-instances", "--instance-ids", id], code: "IncorrectInstanceState")
        try api.awsFails(["stop-instances", "--instance-ids", id], code: "IncorrectInstanceState")
        try api.awsFails(["modify-instance-attribute", "--instance-id", id, "--groups", groups[1]], code: "IncorrectInstanceState")
        // The terminated instance's groups are free to go.
        _ = try api.awsOK(["delete-security-group", "--group-id", groups[1]])
        Thread.sleep(forTimeInterval: 3)
        #expect(try state(api, id) == nil)
        try api.awsFails(["describe-instances", "--instance-ids", id], code: "InvalidInstanceID.NotFound")

        // Regions: eu-west-1 is served (its own default VPC); any other is refused.
        let eu = try api.awsOK(["describe-security-groups"], region: "eu-west-1")
        #expect(items(eu, "SecurityGroups").map { $0["GroupName"] as? String } == ["default"])
        try api.awsFails(["describe-security-groups"], code: "SignatureDoesNotMatch", region: "ap-south-1")
    }

    /// The same actions' parameter checks through boto3, each refused without a change.
    @Test func boto3Validation() throws {
        let api = try APIServerFixture()
        _ = try api.store().setGuardedPrefixes(host: "hv1", ["tap"])
        let r = try api.python(pythonPrelude + """
            out = {}
            web = ec2.create_security_group(GroupName='web', Description='web')['GroupId']
            iid = ec2.run_instances(ImageId='ami-1', MinCount=1, MaxCount=1, SecurityGroupIds=[web])['Instances'][0]['InstanceId']
            rid = ec2.describe_security_group_rules(Filters=[{'Name': 'group-id', 'Values': [web]}])['SecurityGroupRules'][0]['SecurityGroupRuleId']
            out['modify_ok'] = ec2.modify_security_group_rules(GroupId=web, SecurityGroupRules=[{'SecurityGroupRuleId': rid,
                'SecurityGroupRule': {'IpProtocol': 'tcp', 'FromPort': 443, 'ToPort': 443, 'CidrIpv4': '0.0.0.0/0'}}])['Return']
            r = ec2.describe_security_group_rules(SecurityGroupRuleIds=[rid])['SecurityGroupRules'][0]
            out['modified'] = [r['IpProtocol'], r['FromPort'], r['IsEgress']]
            out['modify_noproto'] = code(ec2.modify_security_group_rules, GroupId=web, SecurityGroupRules=[{'SecurityGroupRuleId': rid, 'SecurityGroupRule': {'CidrIpv4': '0.0.0.0/0'}}])
            out['modify_badgroup'] = code(ec2.modify_security_group_rules, GroupId='sg-zz', SecurityGroupRules=[{'SecurityGroupRuleId': rid, 'SecurityGroupRule': {'IpProtocol': '-1', 'CidrIpv4': '0.0.0.0/0'}}])
            out['modify_twice'] = code(ec2.modify_security_group_rules, GroupId=web, SecurityGroupRules=[
                {'SecurityGroupRuleId': rid, 'SecurityGroupRule': {'IpProtocol': '-1', 'CidrIpv4': '0.0.0.0/0'}},
                {'SecurityGroupRuleId': rid, 'SecurityGroupRule': {'IpProtocol': '-1', 'CidrIpv4': '10.0.0.0/8'}}])
            out['modify_dry'] = code(ec2.modify_security_group_rules, GroupId=web, DryRun=True, SecurityGroupRules=[{'SecurityGroupRuleId': rid, 'SecurityGroupRule': {'IpProtocol': '-1', 'CidrIpv4': '0.0.0.0/0'}}])
            out['desc_both'] = code(ec2.update_security_group_rule_descriptions_egress, GroupId=web,
                SecurityGroupRuleDescriptions=[{'SecurityGroupRuleId': rid, 'Description': 'x'}],
                IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 443, 'ToPort': 443, 'IpRanges': [{'CidrIp': '0.0.0.0/0'}]}])
            out['desc_none'] = code(ec2.update_security_group_rule_descriptions_egress, GroupId=web)
            out['desc_long'] = code(ec2.update_security_group_rule_descriptions_egress, GroupId=web, SecurityGroupRuleDescriptions=[{'SecurityGroupRuleId': rid, 'Description': 'x' * 256}])
            out['desc_ok'] = ec2.update_security_group_rule_descriptions_egress(GroupId=web, SecurityGroupRuleDescriptions=[{'SecurityGroupRuleId': rid, 'Description': 'https out'}])['Return']
            out['desc'] = ec2.describe_security_group_rules(SecurityGroupRuleIds=[rid])['SecurityGroupRules'][0].get('Description')
            out['attr_bad'] = code(ec2.describe_instance_attribute, InstanceId=iid, Attribute='colour')
            out['attr_groups'] = [g['GroupId'] for g in ec2.describe_instance_attribute(InstanceId=iid, Attribute='groupSet')['Groups']]
            out['attr_dup'] = code(ec2.modify_instance_attribute, InstanceId=iid, Groups=[web, web])
            out['attr_type'] = code(ec2.modify_instance_attribute, InstanceId=iid, InstanceType={'Value': 'm5.large'})
            out['attr_none'] = code(ec2.modify_instance_attribute, InstanceId=iid)
            out['hibernate'] = code(ec2.stop_instances, InstanceIds=[iid], Hibernate=True)
            out['stop_missing'] = code(ec2.stop_instances, InstanceIds=['i-0123456789abcdef0'])
            out['stop_malformed'] = code(ec2.stop_instances, InstanceIds=['i-nope'])
            out['state'] = ec2.describe_instances(InstanceIds=[iid])['Reservations'][0]['Instances'][0]['State']['Name']
            # Several at once: all or nothing.
            out['stop_mixed'] = code(ec2.stop_instances, InstanceIds=[iid, 'i-0123456789abcdef0'])
            out['state_after'] = ec2.describe_instances(InstanceIds=[iid])['Reservations'][0]['Instances'][0]['State']['Name']
            out['stop_code'] = ec2.stop_instances(InstanceIds=[iid], Force=True)['StoppingInstances'][0]['CurrentState']['Code']
            ec2.get_waiter('instance_stopped').wait(InstanceIds=[iid], WaiterConfig={'Delay': 1, 'MaxAttempts': 3})
            out['start_code'] = ec2.start_instances(InstanceIds=[iid])['StartingInstances'][0]['CurrentState']['Code']
            ec2.get_waiter('instance_running').wait(InstanceIds=[iid], WaiterConfig={'Delay': 1, 'MaxAttempts': 3})
            ec2.terminate_instances(InstanceIds=[iid])
            ec2.get_waiter('instance_terminated').wait(InstanceIds=[iid], WaiterConfig={'Delay': 1, 'MaxAttempts': 3})
            out['reboot_terminated'] = code(ec2.reboot_instances, InstanceIds=[iid])
            print(json.dumps(out))
            """)
        #expect(r["modify_ok"] as? Bool == true)
        #expect((r["modified"] as? [Any]).map { $0.map { "\($0)" } } == ["tcp", "443", "1"])
        #expect(r["modify_noproto"] as? String == "MissingParameter")
        #expect(r["modify_badgroup"] as? String == "InvalidGroupId.Malformed")
        #expect(r["modify_twice"] as? String == "InvalidParameterValue")
        #expect(r["modify_dry"] as? String == "DryRunOperation")
        #expect(r["desc_both"] as? String == "InvalidParameterCombination")
        #expect(r["desc_none"] as? String == "MissingParameter")
        #expect(r["desc_long"] as? String == "InvalidParameterValue")
        #expect(r["desc_ok"] as? Bool == true)
        #expect(r["desc"] as? String == "https out")
        #expect(r["attr_bad"] as? String == "InvalidParameterValue")
        #expect((r["attr_groups"] as? [String])?.count == 1)
        #expect(r["attr_dup"] as? String == "InvalidParameterValue")
        #expect(r["attr_type"] as? String == "UnsupportedOperation")
        #expect(r["attr_none"] as? String == "MissingParameter")
        #expect(r["hibernate"] as? String == "UnsupportedOperation")
        #expect(r["stop_missing"] as? String == "InvalidInstanceID.NotFound")
        #expect(r["stop_malformed"] as? String == "InvalidInstanceID.Malformed")
        #expect(r["stop_mixed"] as? String == "InvalidInstanceID.NotFound")
        #expect(r["state"] as? String == "running" && r["state_after"] as? String == "running")
        #expect(r["stop_code"] as? Int == 80)
        #expect(r["start_code"] as? Int == 16)
        #expect(r["reboot_terminated"] as? String == "IncorrectInstanceState")
    }
}
