import Foundation
import RampartCore
import RampartStore
import Testing

/// Instance groups and lifecycle: ModifyInstanceAttribute and DescribeInstanceAttribute
/// (groupSet), Stop/Start/Reboot/Terminate with AWS's state rules, terminated instances listed
/// for the visible period, and the allowed regions; through the `aws` CLI (what it sends and
/// reads back) and boto3 (the refusals and waiters: faster, one process).
@Suite("EC2 API instance groups and lifecycle", .serialized) struct EC2LifecycleTests {
    /// The state of `id` as describe-instances shows it (nil: not listed).
    func state(_ api: APIServerFixture, _ id: String) throws -> String? {
        let listed = items(try api.awsOK(["describe-instances"]), "Reservations").flatMap { items($0, "Instances") }
        return (listed.first { $0["InstanceId"] as? String == id }?["State"] as? [String: Any])?["Name"] as? String
    }

    @Test func groupsAndLifecycleWithTheCLI() throws {
        let api = try APIServerFixture()
        _ = try api.store().setGuardedPrefixes(host: "hv1", ["tap"])
        let daemon = try FakeDaemon(path: api.daemonSocket, host: "hv1")
        let web = try #require(try api.awsOK(["create-security-group", "--group-name", "web", "--description", "w"])["GroupId"] as? String)
        let db = try #require(try api.awsOK(["create-security-group", "--group-name", "db", "--description", "d"])["GroupId"] as? String)
        let run = try api.awsOK(["run-instances", "--image-id", "ami-12345678", "--security-group-ids", web, "--placement", "HostId=hv1"])
        let id = try #require(items(run, "Instances").first?["InstanceId"] as? String)

        // Groups: replaced in one call, read back in order.
        let heard = daemon.received.count
        _ = try api.awsOK(["modify-instance-attribute", "--instance-id", id, "--groups", db, web])
        let attr = try api.awsOK(["describe-instance-attribute", "--instance-id", id, "--attribute", "groupSet"])
        #expect(items(attr, "Groups").compactMap { $0["GroupId"] as? String } == [db, web])
        #expect(items(attr, "Groups").first?["GroupName"] as? String == "db")
        #expect(try api.store().instance(id)?.groups == [db, web])
        #expect(Array(daemon.received.dropFirst(heard)) == ["/v1/refresh/instance/\(id)"])

        // Stop, reboot refused, start, reboot, terminate.
        let stopped = try api.awsOK(["stop-instances", "--instance-ids", id])
        let change = try #require(items(stopped, "StoppingInstances").first)
        #expect((change["CurrentState"] as? [String: Any])?["Name"] as? String == "stopped")
        #expect((change["PreviousState"] as? [String: Any])?["Name"] as? String == "running")
        #expect(try state(api, id) == "stopped")
        #expect(try api.store().instance(id) != nil)  // a stopped instance keeps its record
        try api.awsFails(["reboot-instances", "--instance-ids", id], code: "IncorrectInstanceState")
        let started = try api.awsOK(["start-instances", "--instance-ids", id])
        #expect((items(started, "StartingInstances").first?["CurrentState"] as? [String: Any])?["Name"] as? String == "running")
        _ = try api.awsOK(["reboot-instances", "--instance-ids", id])
        let heardBefore = daemon.received.count
        let t = try api.awsOK(["terminate-instances", "--instance-ids", id])
        #expect((items(t, "TerminatingInstances").first?["CurrentState"] as? [String: Any])?["Code"] as? Int == 48)
        #expect(Array(daemon.received.dropFirst(heardBefore)) == ["/v1/refresh/instance/\(id)"])
        #expect(try api.store().instance(id) == nil)
        #expect(try state(api, id) == "terminated")
        try api.awsFails(["start-instances", "--instance-ids", id], code: "IncorrectInstanceState")
    }

    /// The refusals, each changing nothing; the waiters; terminated instances leaving the list
    /// after the visible period (1 s here); the allowed regions.
    @Test func refusalsWaitersExpiryAndRegionsWithBoto3() throws {
        let api = try APIServerFixture(arguments: ["--terminated-visible", "1", "--regions", "us-east-1,eu-west-1"])
        _ = try api.store().setGuardedPrefixes(host: "hv1", ["tap"])
        let setup = try api.python(pythonPrelude + """
            groups = [ec2.create_security_group(GroupName='g%d' % n, Description='g')['GroupId'] for n in range(6)]
            iid = ec2.run_instances(ImageId='ami-1', MinCount=1, MaxCount=1, SecurityGroupIds=groups[:1])['Instances'][0]['InstanceId']
            print(json.dumps({'groups': groups, 'iid': iid}))
            """)
        let groups = try #require(setup["groups"] as? [String]), iid = try #require(setup["iid"] as? String)
        let before = (try api.snapshot(), try api.instanceSnapshot())
        let r = try api.python(pythonPrelude + """
            groups, iid = \(groups), '\(iid)'
            out = {
                'run_too_many': code(ec2.run_instances, ImageId='ami-1', MinCount=1, MaxCount=1, SecurityGroupIds=groups),
                'too_many': code(ec2.modify_instance_attribute, InstanceId=iid, Groups=groups),
                'duplicate': code(ec2.modify_instance_attribute, InstanceId=iid, Groups=[groups[1], groups[1]]),
                'unknown_group': code(ec2.modify_instance_attribute, InstanceId=iid, Groups=['sg-0123456789abcdef0']),
                'malformed_group': code(ec2.modify_instance_attribute, InstanceId=iid, Groups=['sg-zz']),
                'other_attribute': code(ec2.modify_instance_attribute, InstanceId=iid, InstanceType={'Value': 'm5.large'}),
                'source_dest': code(ec2.modify_instance_attribute, InstanceId=iid, SourceDestCheck={'Value': False}),
                'no_groups': code(ec2.modify_instance_attribute, InstanceId=iid),
                'unknown_instance': code(ec2.modify_instance_attribute, InstanceId='i-0123456789abcdef0', Groups=groups[:1]),
                'modify_dry_run': code(ec2.modify_instance_attribute, InstanceId=iid, Groups=groups[1:2], DryRun=True),
                'attribute_unknown': code(ec2.describe_instance_attribute, InstanceId=iid, Attribute='colour'),
                'attribute_other': code(ec2.describe_instance_attribute, InstanceId=iid, Attribute='userData'),
                'hibernate': code(ec2.stop_instances, InstanceIds=[iid], Hibernate=True),
                'stop_unknown': code(ec2.stop_instances, InstanceIds=['i-0123456789abcdef0']),
                'stop_malformed': code(ec2.stop_instances, InstanceIds=['i-nope']),
                'stop_mixed': code(ec2.stop_instances, InstanceIds=[iid, 'i-0123456789abcdef0']),
                'stop_dry_run': code(ec2.stop_instances, InstanceIds=[iid], DryRun=True),
                'start_dry_run': code(ec2.start_instances, InstanceIds=[iid], DryRun=True),
                'reboot_dry_run': code(ec2.reboot_instances, InstanceIds=[iid], DryRun=True),
                'terminate_dry_run': code(ec2.terminate_instances, InstanceIds=[iid], DryRun=True),
            }
            print(json.dumps(out))
            """)
        #expect(r as? [String: String] == [
            "run_too_many": "SecurityGroupsPerInterfaceLimitExceeded", "too_many": "SecurityGroupsPerInterfaceLimitExceeded",
            "duplicate": "InvalidParameterValue", "unknown_group": "InvalidGroup.NotFound", "malformed_group": "InvalidGroupId.Malformed",
            "other_attribute": "UnsupportedOperation", "source_dest": "UnsupportedOperation", "no_groups": "MissingParameter",
            "unknown_instance": "InvalidInstanceID.NotFound", "modify_dry_run": "DryRunOperation", "attribute_unknown": "InvalidParameterValue",
            "attribute_other": "UnsupportedOperation", "hibernate": "UnsupportedOperation", "stop_unknown": "InvalidInstanceID.NotFound",
            "stop_malformed": "InvalidInstanceID.Malformed", "stop_mixed": "InvalidInstanceID.NotFound", "stop_dry_run": "DryRunOperation",
            "start_dry_run": "DryRunOperation", "reboot_dry_run": "DryRunOperation", "terminate_dry_run": "DryRunOperation",
        ])
        #expect(try api.snapshot() == before.0 && api.instanceSnapshot() == before.1)

        let life = try api.python(pythonPrelude + """
            import time
            iid = '\(iid)'
            out = {}
            def state():
                return ec2.describe_instances(InstanceIds=[iid])['Reservations'][0]['Instances'][0]['State']['Name']
            out['stop'] = ec2.stop_instances(InstanceIds=[iid], Force=True)['StoppingInstances'][0]['CurrentState']['Code']
            ec2.get_waiter('instance_stopped').wait(InstanceIds=[iid], WaiterConfig={'Delay': 1, 'MaxAttempts': 2})
            out['stop_again'] = ec2.stop_instances(InstanceIds=[iid])['StoppingInstances'][0]['PreviousState']['Name']
            out['start'] = ec2.start_instances(InstanceIds=[iid])['StartingInstances'][0]['CurrentState']['Code']
            ec2.get_waiter('instance_running').wait(InstanceIds=[iid], WaiterConfig={'Delay': 1, 'MaxAttempts': 2})
            out['terminate'] = ec2.terminate_instances(InstanceIds=[iid, iid])['TerminatingInstances'][0]['CurrentState']['Name']
            out['terminated'] = state()
            out['terminate_again'] = ec2.terminate_instances(InstanceIds=[iid])['TerminatingInstances'][0]['PreviousState']['Name']
            out['reboot_terminated'] = code(ec2.reboot_instances, InstanceIds=[iid])
            out['stop_terminated'] = code(ec2.stop_instances, InstanceIds=[iid])
            out['groups_terminated'] = code(ec2.modify_instance_attribute, InstanceId=iid, Groups=['\(groups[1])'])
            time.sleep(2.2)
            out['expired'] = code(ec2.describe_instances, InstanceIds=[iid])
            eu = boto3.client('ec2', endpoint_url=os.environ['ENDPOINT'], region_name='eu-west-1', config=Config(retries={'max_attempts': 1, 'mode': 'standard'}))
            out['eu'] = [g['GroupName'] for g in eu.describe_security_groups()['SecurityGroups']]
            ap = boto3.client('ec2', endpoint_url=os.environ['ENDPOINT'], region_name='ap-south-1', config=Config(retries={'max_attempts': 1, 'mode': 'standard'}))
            out['ap'] = code(ap.describe_security_groups)
            print(json.dumps(out))
            """)
        #expect(life["stop"] as? Int == 80 && life["stop_again"] as? String == "stopped" && life["start"] as? Int == 16)
        #expect(life["terminate"] as? String == "terminated" && life["terminated"] as? String == "terminated")
        #expect(life["terminate_again"] as? String == "terminated")
        #expect(life["reboot_terminated"] as? String == "IncorrectInstanceState")
        #expect(life["stop_terminated"] as? String == "IncorrectInstanceState")
        #expect(life["groups_terminated"] as? String == "IncorrectInstanceState")
        #expect(life["expired"] as? String == "InvalidInstanceID.NotFound")
        #expect(life["eu"] as? [String] == ["default"])
        #expect(life["ap"] as? String == "SignatureDoesNotMatch")
    }
}
