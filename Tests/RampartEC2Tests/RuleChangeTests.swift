import Foundation
import RampartCore
@testable import RampartEC2
import RampartStore
import Testing

/// Deliveries recorded from an in-process `EC2Service`.
final class DeliveryRecorder: @unchecked Sendable {
    private let lock = NSLock()
    private var pending: [Delivery] = []
    func add(_ d: [Delivery]) { lock.withLock { pending += d } }
    /// What was delivered since the last call, as a set (the order between hosts is not promised).
    func take() -> Set<Delivery> { lock.withLock { defer { pending = [] }; return Set(pending) } }
}

/// An `EC2Service` over a fresh SQLite store in this process, its deliveries recorded.
final class InProcessAPI {
    let dir = NSTemporaryDirectory() + "ec2svc-" + UUID().uuidString
    let store: SQLStore
    let service: EC2Service
    let deliveries = DeliveryRecorder()
    let caller = Caller(account: "111111111111", region: "us-east-1")

    init() throws {
        store = try StoreAddress(dir + "/rampart.db").openForWriting()
        let recorder = deliveries
        service = EC2Service(store: store) { recorder.add($0) }
    }

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    /// One action; its XML answer.
    func call(_ parameters: [String: String]) throws -> String { try service.handle(Form(parameters), caller: caller, requestID: "test") }

    /// The texts of every `<tag>` in `xml`.
    static func values(_ xml: String, _ tag: String) -> [String] {
        var out: [String] = []
        var rest = Substring(xml)
        while let open = rest.range(of: "<\(tag)>"), let close = rest.range(of: "</\(tag)>", range: open.upperBound..<rest.endIndex) {
            out.append(String(rest[open.upperBound..<close.lowerBound]))
            rest = rest[close.upperBound...]
        }
        return out
    }

    func createGroup(_ name: String) throws -> String {
        try #require(Self.values(try call(["Action": "CreateSecurityGroup", "GroupName": name, "GroupDescription": name]), "groupId").first)
    }

    func runInstance(_ group: String, on host: String) throws -> String {
        let xml = try call(["Action": "RunInstances", "ImageId": "ami-1", "MinCount": "1", "MaxCount": "1", "SecurityGroupId.1": group, "Placement.HostId": host])
        return try #require(Self.values(xml, "instanceId").first)
    }
}

/// The fan-out of a rule change and of an instance's group change: exactly the hosts affected,
/// and nothing for a change of descriptions only (in-process, so every delivery is seen).
@Suite("EC2 API fan-out of rule and group changes") struct EC2FanOutTests {
    @Test func ruleAndGroupChangesReachExactlyTheAffectedHosts() throws {
        let api = try InProcessAPI()
        for h in ["hv1", "hv2", "hv3"] { _ = try api.store.setGuardedPrefixes(host: h, ["tap"]) }
        let web = try api.createGroup("web"), db = try api.createGroup("db"), app = try api.createGroup("app")
        // app's rules reference web; nothing references db.
        _ = try api.call(["Action": "AuthorizeSecurityGroupIngress", "GroupId": app, "IpPermissions.1.IpProtocol": "tcp",
                          "IpPermissions.1.FromPort": "80", "IpPermissions.1.ToPort": "80", "IpPermissions.1.Groups.1.GroupId": web])
        let added = try api.call(["Action": "AuthorizeSecurityGroupIngress", "GroupId": web, "IpPermissions.1.IpProtocol": "tcp",
                                  "IpPermissions.1.FromPort": "22", "IpPermissions.1.ToPort": "22", "IpPermissions.1.IpRanges.1.CidrIp": "10.0.0.0/8"])
        let rule = try #require(InProcessAPI.values(added, "securityGroupRuleId").first)
        let i1 = try api.runInstance(web, on: "hv1")
        _ = try api.runInstance(db, on: "hv2")
        _ = try api.runInstance(app, on: "hv3")
        _ = api.deliveries.take()

        let modify = ["Action": "ModifySecurityGroupRules", "GroupId": web, "SecurityGroupRule.1.SecurityGroupRuleId": rule,
                      "SecurityGroupRule.1.SecurityGroupRule.IpProtocol": "tcp", "SecurityGroupRule.1.SecurityGroupRule.FromPort": "2222",
                      "SecurityGroupRule.1.SecurityGroupRule.ToPort": "2222", "SecurityGroupRule.1.SecurityGroupRule.CidrIpv4": "10.1.0.0/16"]
        _ = try api.call(modify)
        #expect(api.deliveries.take() == [Delivery(host: "hv1", refresh: .rules(web))])
        let stored = try #require(try api.store.group(web)?.rules.first { $0.id == rule })
        guard case .ok(let moved) = IPPrefix.parse("10.1.0.0/16") else { Issue.record("prefix"); return }
        #expect(stored.ports == 2222...2222 && stored.remote == .cidr(moved) && stored.direction == .ingress)

        // The same rule again with only a description: nothing enforced changed, nothing delivered.
        _ = try api.call(modify.merging(["SecurityGroupRule.1.SecurityGroupRule.Description": "ssh"]) { $1 })
        _ = try api.call(["Action": "UpdateSecurityGroupRuleDescriptionsIngress", "GroupId": web,
                          "SecurityGroupRuleDescription.1.SecurityGroupRuleId": rule, "SecurityGroupRuleDescription.1.Description": "ssh 2"])
        #expect(api.deliveries.take().isEmpty)
        #expect(try api.store.ec2Read { try $0.group(web)?.ruleDescriptions[rule] } == "ssh 2")

        // i1 moves from web to db: its hypervisor re-plugs it, the referrers of web (app's
        // member on hv3) hear of web's members; nobody references db, hv2 hears nothing.
        _ = try api.call(["Action": "ModifyInstanceAttribute", "InstanceId": i1, "GroupId.1": db])
        #expect(api.deliveries.take() == [Delivery(host: "hv1", refresh: .instance(i1)), Delivery(host: "hv3", refresh: .members(web))])
        #expect(try api.store.instance(i1)?.groups == [db])
        // The same groups again: nothing to do.
        _ = try api.call(["Action": "ModifyInstanceAttribute", "InstanceId": i1, "GroupId.1": db])
        #expect(api.deliveries.take().isEmpty)

        // Stop and start change no enforcement; terminate unplugs.
        _ = try api.call(["Action": "StopInstances", "InstanceId.1": i1])
        _ = try api.call(["Action": "StartInstances", "InstanceId.1": i1])
        #expect(api.deliveries.take().isEmpty)
        _ = try api.call(["Action": "TerminateInstances", "InstanceId.1": i1])
        #expect(api.deliveries.take() == [Delivery(host: "hv1", refresh: .instance(i1))])
    }

    /// The state machine, as AWS's: which transitions are refused.
    @Test func transitions() {
        typealias T = EC2Service.Transition
        #expect(T.stop.next(from: .running) == .stopped && T.stop.next(from: .stopped) == .stopped && T.stop.next(from: .terminated) == nil)
        #expect(T.start.next(from: .stopped) == .running && T.start.next(from: .running) == .running && T.start.next(from: .terminated) == nil)
        #expect(T.reboot.next(from: .running) == .running && T.reboot.next(from: .stopped) == nil && T.reboot.next(from: .terminated) == nil)
        #expect([EC2InstanceState.running, .stopped, .terminated].allSatisfy { T.terminate.next(from: $0) == .terminated })
    }

    /// A region outside the allowed list is refused before anything is read or written.
    @Test func regionOutsideTheListIsRefused() throws {
        let api = try InProcessAPI()
        let other = Caller(account: api.caller.account, region: "eu-west-1")
        for action in [["Action": "CreateSecurityGroup", "GroupName": "x", "GroupDescription": "x"], ["Action": "DescribeSecurityGroups"]] {
            do {
                _ = try api.service.handle(Form(action), caller: other, requestID: "t")
                Issue.record("\(action) in eu-west-1 was answered")
            } catch {
                #expect(error.code == "SignatureDoesNotMatch" && error.status == 403)
            }
        }
        #expect(try api.store.ec2Read { try $0.defaultVPC(account: api.caller.account, region: "eu-west-1") } == nil)
    }
}

/// ModifySecurityGroupRules and UpdateSecurityGroupRuleDescriptions* through the `aws` CLI
/// (what it sends and reads back), and their refusals through boto3 (faster: one process).
@Suite("EC2 API rule changes with the aws CLI and boto3", .serialized) struct EC2RuleChangeClientTests {
    @Test func modifyAndDescribeRulesByID() throws {
        let api = try APIServerFixture()
        let daemon = try FakeDaemon(path: api.daemonSocket, host: "hv1")
        let web = try #require(try api.awsOK(["create-security-group", "--group-name", "web", "--description", "w"])["GroupId"] as? String)
        _ = try api.store().addInstance("i-1", Instance(host: "hv1", groups: [web], ips: [IPAddress("10.0.0.5")!], interface: "tap1"))
        let added = try api.awsOK(["authorize-security-group-ingress", "--group-id", web, "--ip-permissions",
                                   "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=10.0.0.0/8,Description=ssh}]",
                                   "IpProtocol=udp,FromPort=53,ToPort=53,IpRanges=[{CidrIp=10.0.0.0/8}]"])
        let ids = items(added, "SecurityGroupRules").compactMap { $0["SecurityGroupRuleId"] as? String }
        try #require(ids.count == 2)
        let (ssh, dns) = (ids[0], ids[1])
        let heard = daemon.received.count

        _ = try api.awsOK(["modify-security-group-rules", "--group-id", web, "--security-group-rules",
                           "SecurityGroupRuleId=\(ssh),SecurityGroupRule={IpProtocol=tcp,FromPort=2222,ToPort=2222,CidrIpv4=192.0.2.0/24,Description=moved}"])
        #expect(Array(daemon.received.dropFirst(heard)) == ["/v1/refresh/rules/\(web)"])
        let moved = try #require(items(try api.awsOK(["describe-security-group-rules", "--security-group-rule-ids", ssh]), "SecurityGroupRules").first)
        #expect(moved["FromPort"] as? Int == 2222 && moved["CidrIpv4"] as? String == "192.0.2.0/24" && moved["Description"] as? String == "moved")
        #expect(moved["IsEgress"] as? Bool == false)
        try api.awsFails(["modify-security-group-rules", "--group-id", web, "--security-group-rules",
                          "SecurityGroupRuleId=sgr-0123456789abcdef0,SecurityGroupRule={IpProtocol=tcp,FromPort=1,ToPort=1,CidrIpv4=10.0.0.0/8}"],
                         code: "InvalidSecurityGroupRuleId.NotFound")

        // Descriptions: by id, and by permission (a description left out is removed).
        _ = try api.awsOK(["update-security-group-rule-descriptions-ingress", "--group-id", web,
                           "--security-group-rule-descriptions", "SecurityGroupRuleId=\(dns),Description=dns"])
        _ = try api.awsOK(["update-security-group-rule-descriptions-ingress", "--group-name", "web", "--ip-permissions",
                           "IpProtocol=tcp,FromPort=2222,ToPort=2222,IpRanges=[{CidrIp=192.0.2.0/24}]"])
        let rules = items(try api.awsOK(["describe-security-group-rules", "--filters", "Name=group-id,Values=\(web)"]), "SecurityGroupRules")
        #expect(rules.first { $0["SecurityGroupRuleId"] as? String == dns }?["Description"] as? String == "dns")
        #expect(rules.first { $0["SecurityGroupRuleId"] as? String == ssh }.map { $0["Description"] == nil } == true)
        #expect(daemon.received.count == heard + 1)
    }

    /// Tags on rules: at authorize (`TagSpecification`), by CreateTags/DeleteTags on `sgr-` ids,
    /// shown and filtered by DescribeSecurityGroupRules, and removed with their rule.
    @Test func ruleTags() throws {
        let api = try APIServerFixture()
        let web = try #require(try api.awsOK(["create-security-group", "--group-name", "web", "--description", "w"])["GroupId"] as? String)
        let added = items(try api.awsOK(["authorize-security-group-ingress", "--group-id", web, "--ip-permissions",
                                         "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=10.0.0.0/8}]",
                                         "--tag-specifications", "ResourceType=security-group-rule,Tags=[{Key=env,Value=prod}]"]), "SecurityGroupRules")
        let ssh = try #require(added.first?["SecurityGroupRuleId"] as? String)
        #expect((added.first?["Tags"] as? [[String: String]]) == [["Key": "env", "Value": "prod"]])
        let egress = try #require(try api.store().group(web)?.rules.first { $0.direction == .egress }?.id)
        _ = try api.awsOK(["create-tags", "--resources", egress, web, "--tags", "Key=team,Value=net"])
        func ruleIDs(_ filter: String) throws -> [String] {
            items(try api.awsOK(["describe-security-group-rules", "--filters", filter]), "SecurityGroupRules").compactMap { $0["SecurityGroupRuleId"] as? String }
        }
        #expect(try ruleIDs("Name=tag:env,Values=prod") == [ssh])
        #expect(try ruleIDs("Name=tag-key,Values=team") == [egress])
        _ = try api.awsOK(["delete-tags", "--resources", egress, "--tags", "Key=team"])
        #expect(try api.store().ec2Read { try $0.ruleTags(egress) }.isEmpty)
        #expect(try api.store().ec2Read { try $0.tags(web) } == ["team": "net"])  // the group's own tag stays
        _ = try api.awsOK(["revoke-security-group-ingress", "--group-id", web, "--security-group-rule-ids", ssh])
        #expect(try api.store().ec2Read { try $0.ruleTags(ssh) }.isEmpty)
    }

    /// Every refusal leaves the groups as they were.
    @Test func refusedRuleChangesChangeNothing() throws {
        let api = try APIServerFixture()
        let setup = try api.python(pythonPrelude + """
            web = ec2.create_security_group(GroupName='web', Description='w')['GroupId']
            rules = ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[
                {'IpProtocol': 'tcp', 'FromPort': 22, 'ToPort': 22, 'IpRanges': [{'CidrIp': '10.0.0.0/8'}]},
                {'IpProtocol': 'udp', 'FromPort': 53, 'ToPort': 53, 'IpRanges': [{'CidrIp': '10.0.0.0/8'}]}])['SecurityGroupRules']
            print(json.dumps({'web': web, 'ssh': rules[0]['SecurityGroupRuleId']}))
            """)
        let web = try #require(setup["web"] as? String), ssh = try #require(setup["ssh"] as? String)
        let before = try api.snapshot()
        let r = try api.python(pythonPrelude + """
            web, ssh = '\(web)', '\(ssh)'
            def modify(rule, rid=ssh, group=web, **k):
                return code(ec2.modify_security_group_rules, GroupId=group, SecurityGroupRules=[{'SecurityGroupRuleId': rid, 'SecurityGroupRule': rule}], **k)
            tcp1 = {'IpProtocol': 'tcp', 'FromPort': 1, 'ToPort': 1, 'CidrIpv4': '10.0.0.0/8'}
            out = {
                'malformed': modify(tcp1, rid='sgr-xyz'),
                'duplicate': modify({'IpProtocol': 'udp', 'FromPort': 53, 'ToPort': 53, 'CidrIpv4': '10.0.0.0/8'}),
                'two_peers': modify(dict(tcp1, CidrIpv6='::/0')),
                'no_peer': modify({'IpProtocol': 'tcp', 'FromPort': 1, 'ToPort': 1}),
                'no_proto': modify({'CidrIpv4': '0.0.0.0/0'}),
                'host_bits': modify(dict(tcp1, CidrIpv4='10.0.0.1/8')),
                'bad_ports': modify(dict(tcp1, FromPort=10, ToPort=5)),
                'prefix_list': modify({'IpProtocol': 'tcp', 'FromPort': 1, 'ToPort': 1, 'PrefixListId': 'pl-12345678'}),
                'unknown_ref': modify({'IpProtocol': 'tcp', 'FromPort': 1, 'ToPort': 1, 'ReferencedGroupId': 'sg-0123456789abcdef0'}),
                'bad_group': modify(tcp1, group='sg-zz'),
                'dry_run': modify(tcp1, DryRun=True),
                'twice': code(ec2.modify_security_group_rules, GroupId=web, SecurityGroupRules=[
                    {'SecurityGroupRuleId': ssh, 'SecurityGroupRule': tcp1}, {'SecurityGroupRuleId': ssh, 'SecurityGroupRule': tcp1}]),
                'desc_wrong_direction': code(ec2.update_security_group_rule_descriptions_egress, GroupId=web,
                    SecurityGroupRuleDescriptions=[{'SecurityGroupRuleId': ssh, 'Description': 'x'}]),
                'desc_no_such_rule': code(ec2.update_security_group_rule_descriptions_ingress, GroupId=web,
                    IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 9, 'ToPort': 9, 'IpRanges': [{'CidrIp': '10.0.0.0/8', 'Description': 'x'}]}]),
                'desc_both': code(ec2.update_security_group_rule_descriptions_ingress, GroupId=web,
                    SecurityGroupRuleDescriptions=[{'SecurityGroupRuleId': ssh, 'Description': 'x'}],
                    IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 22, 'ToPort': 22, 'IpRanges': [{'CidrIp': '10.0.0.0/8'}]}]),
                'desc_none': code(ec2.update_security_group_rule_descriptions_ingress, GroupId=web),
                'desc_long': code(ec2.update_security_group_rule_descriptions_ingress, GroupId=web,
                    SecurityGroupRuleDescriptions=[{'SecurityGroupRuleId': ssh, 'Description': 'x' * 256}]),
                'desc_dry_run': code(ec2.update_security_group_rule_descriptions_ingress, GroupId=web, DryRun=True,
                    SecurityGroupRuleDescriptions=[{'SecurityGroupRuleId': ssh, 'Description': 'x'}]),
                'tag_unknown_rule': code(ec2.create_tags, Resources=['sgr-0123456789abcdef0'], Tags=[{'Key': 'a', 'Value': 'b'}]),
                'tag_spec_type': code(ec2.authorize_security_group_ingress, GroupId=web,
                    IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 9, 'ToPort': 9, 'IpRanges': [{'CidrIp': '10.0.0.0/8'}]}],
                    TagSpecifications=[{'ResourceType': 'instance', 'Tags': [{'Key': 'a', 'Value': 'b'}]}]),
            }
            print(json.dumps(out))
            """)
        let expected = [
            "malformed": "InvalidSecurityGroupRuleId.Malformed", "duplicate": "InvalidPermission.Duplicate", "two_peers": "InvalidParameterCombination",
            "no_peer": "MissingParameter", "no_proto": "MissingParameter", "host_bits": "InvalidParameterValue", "bad_ports": "InvalidParameterValue",
            "prefix_list": "UnsupportedOperation", "unknown_ref": "InvalidGroup.NotFound", "bad_group": "InvalidGroupId.Malformed",
            "dry_run": "DryRunOperation", "twice": "InvalidParameterValue", "desc_wrong_direction": "InvalidSecurityGroupRuleId.NotFound",
            "desc_no_such_rule": "InvalidPermission.NotFound", "desc_both": "InvalidParameterCombination", "desc_none": "MissingParameter",
            "desc_long": "InvalidParameterValue", "desc_dry_run": "DryRunOperation",
            "tag_unknown_rule": "InvalidSecurityGroupRuleId.NotFound", "tag_spec_type": "InvalidParameterValue",
        ]
        #expect(r as? [String: String] == expected)
        #expect(try api.snapshot() == before)
        // Another account's group does not exist for it.
        let other = try api.python(pythonPrelude + """
            print(json.dumps({'c': code(ec2.modify_security_group_rules, GroupId='\(web)', SecurityGroupRules=[{'SecurityGroupRuleId': '\(ssh)',
                'SecurityGroupRule': {'IpProtocol': '-1', 'CidrIpv4': '0.0.0.0/0'}}]),
                't': code(ec2.create_tags, Resources=['\(ssh)'], Tags=[{'Key': 'a', 'Value': 'b'}])}))
            """, as: keyB)
        #expect(other["c"] as? String == "InvalidGroup.NotFound")
        #expect(other["t"] as? String == "InvalidSecurityGroupRuleId.NotFound")
        #expect(try api.snapshot()[0] == before[0])
    }
}
