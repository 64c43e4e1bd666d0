import Foundation
import RampartEC2
import Testing

/// boto3 (and botocore's signer, driven by hand) against `rampart-api`: pagination, errors,
/// signature failures and malformed forms, each changing nothing.
@Suite("EC2 API with boto3", .serialized) struct EC2Boto3Tests {
    @Test func boto3ActionsAndPagination() throws {
        let api = try APIServerFixture()
        let r = try api.python(pythonPrelude + """
            out = {}
            web = ec2.create_security_group(GroupName='web', Description='web')['GroupId']
            for i in range(8):
                ec2.create_security_group(GroupName='g%d' % i, Description='g')
            rules = ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[
                {'IpProtocol': 'udp', 'FromPort': 53, 'ToPort': 53, 'IpRanges': [{'CidrIp': '192.0.2.0/24'}]},
                {'IpProtocol': '6', 'FromPort': 0, 'ToPort': 65535, 'Ipv6Ranges': [{'CidrIpv6': '::/0', 'Description': 'all tcp'}]},
                {'IpProtocol': '47', 'IpRanges': [{'CidrIp': '198.51.100.0/24'}]},
            ])['SecurityGroupRules']
            out['added'] = [(x['IpProtocol'], x.get('FromPort'), x.get('ToPort')) for x in rules]
            out['dup'] = code(ec2.authorize_security_group_ingress, GroupId=web, IpPermissions=[{'IpProtocol': 'udp', 'FromPort': 53, 'ToPort': 53, 'IpRanges': [{'CidrIp': '192.0.2.0/24'}]}])
            out['badproto'] = code(ec2.authorize_security_group_ingress, GroupId=web, IpPermissions=[{'IpProtocol': 'bogus', 'IpRanges': [{'CidrIp': '192.0.2.0/24'}]}])
            out['badport'] = code(ec2.authorize_security_group_ingress, GroupId=web, IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 10, 'ToPort': 70000, 'IpRanges': [{'CidrIp': '192.0.2.0/24'}]}])
            out['v6in4'] = code(ec2.authorize_security_group_ingress, GroupId=web, IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 1, 'ToPort': 2, 'IpRanges': [{'CidrIp': '::/0'}]}])
            out['nosource'] = code(ec2.authorize_security_group_ingress, GroupId=web, IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 1, 'ToPort': 2}])
            out['malformed'] = code(ec2.authorize_security_group_ingress, GroupId='sg-12', IpPermissions=[{'IpProtocol': '-1', 'IpRanges': [{'CidrIp': '0.0.0.0/0'}]}])
            g = ec2.describe_security_groups(GroupIds=[web])['SecurityGroups'][0]
            out['perms'] = sorted([(p['IpProtocol'], p.get('FromPort'), p.get('ToPort'), len(p['IpRanges']), len(p['Ipv6Ranges'])) for p in g['IpPermissions']])
            pages = []
            kw = {'MaxResults': 5}
            while True:
                resp = ec2.describe_security_groups(**kw)
                pages.append(len(resp['SecurityGroups']))
                if 'NextToken' not in resp: break
                kw['NextToken'] = resp['NextToken']
            out['pages'] = pages
            out['paginator'] = sum(len(p['SecurityGroups']) for p in ec2.get_paginator('describe_security_groups').paginate(PaginationConfig={'PageSize': 5}))
            out['rulepages'] = sum(len(p['SecurityGroupRules']) for p in ec2.get_paginator('describe_security_group_rules').paginate(PaginationConfig={'PageSize': 5}))
            out['badtoken'] = code(ec2.describe_security_groups, MaxResults=5, NextToken='garbage')
            # botocore itself refuses MaxResults below 5; sent anyway, the server refuses it too.
            raw = boto3.client('ec2', endpoint_url=os.environ['ENDPOINT'], region_name='us-east-1', config=Config(parameter_validation=False, retries={'max_attempts': 1, 'mode': 'standard'}))
            out['badmax'] = code(raw.describe_security_groups, MaxResults=2)
            out['combo'] = code(ec2.describe_security_groups, MaxResults=5, GroupIds=[web])
            out['dryrun'] = code(ec2.create_security_group, GroupName='dry', Description='d', DryRun=True)
            out['count'] = len(ec2.describe_security_groups()['SecurityGroups'])
            print(json.dumps(out))
            """)
        #expect(r["dup"] as? String == "InvalidPermission.Duplicate")
        #expect(r["badproto"] as? String == "InvalidParameterValue")
        #expect(r["badport"] as? String == "InvalidParameterValue")
        #expect(r["v6in4"] as? String == "InvalidParameterValue")
        #expect(r["nosource"] as? String == "MissingParameter")
        #expect(r["malformed"] as? String == "InvalidGroupId.Malformed")
        #expect(r["pages"] as? [Int] == [5, 5])
        #expect(r["paginator"] as? Int == 10)
        // 10 groups' default egress + default group's ingress + 3 new.
        #expect(r["rulepages"] as? Int == 14)
        #expect(r["badtoken"] as? String == "InvalidPaginationToken")
        #expect(r["badmax"] as? String == "InvalidParameterValue")
        #expect(r["combo"] as? String == "InvalidParameterCombination")
        #expect(r["dryrun"] as? String == "DryRunOperation")
        #expect(r["count"] as? Int == 10)
        let perms = (r["perms"] as? [[Any]])?.map { $0.map { "\($0)" } }
        #expect(perms == [["47", "<null>", "<null>", "1", "0"], ["tcp", "0", "65535", "0", "1"], ["udp", "53", "53", "1", "0"]])
    }

    /// Signed wrongly, by an unknown key, with a skewed clock, or with the body changed after
    /// signing: refused with AWS's codes, and the store unchanged.
    @Test func signatureFailuresChangeNothing() throws {
        let api = try APIServerFixture()
        _ = try api.awsOK(["describe-security-groups"])  // the default VPC exists
        let before = try api.snapshot()
        let r = try api.python(pythonPrelude + """
            import datetime
            from botocore.credentials import Credentials
            out = {}
            def client(key, secret):
                return boto3.client('ec2', endpoint_url=os.environ['ENDPOINT'], region_name='us-east-1', aws_access_key_id=key,
                                    aws_secret_access_key=secret, config=Config(retries={'max_attempts': 1, 'mode': 'standard'}))
            out['wrongsecret'] = code(client(os.environ['AWS_ACCESS_KEY_ID'], 'not-the-secret-at-all').create_security_group, GroupName='a', Description='a')
            out['unknownkey'] = code(client('AKIDNOSUCHKEY0000000', 'whatever-secret-000').create_security_group, GroupName='b', Description='b')
            real = botocore.auth.get_current_datetime
            botocore.auth.get_current_datetime = lambda: real() - datetime.timedelta(minutes=10)
            out['skewed'] = code(ec2.create_security_group, GroupName='c', Description='c')
            botocore.auth.get_current_datetime = lambda: real() + datetime.timedelta(minutes=10)
            out['future'] = code(ec2.create_security_group, GroupName='c2', Description='c')
            botocore.auth.get_current_datetime = real
            def tamper(request, **kwargs):
                b = request.body
                request.body = b.replace(b'GroupName=d', b'GroupName=e') if isinstance(b, bytes) else b.replace('GroupName=d', 'GroupName=e')
            ec2.meta.events.register('before-send.ec2.CreateSecurityGroup', tamper)
            out['tampered'] = code(ec2.create_security_group, GroupName='d', Description='d')
            print(json.dumps(out))
            """)
        #expect(r["wrongsecret"] as? String == "SignatureDoesNotMatch")
        #expect(r["unknownkey"] as? String == "AuthFailure")
        #expect(r["skewed"] as? String == "RequestExpired")
        #expect(r["future"] as? String == "RequestExpired")
        #expect(r["tampered"] as? String == "SignatureDoesNotMatch")
        #expect(try api.snapshot() == before)
    }

    /// Forms signed correctly but malformed: 4xx with AWS's codes, never 5xx, nothing changed.
    @Test func malformedFormsChangeNothing() throws {
        let api = try APIServerFixture()
        _ = try api.awsOK(["describe-security-groups"])
        let before = try api.snapshot()
        let r = try api.python(pythonPrelude + """
            import urllib.request, urllib.error, re
            from botocore.awsrequest import AWSRequest
            from botocore.auth import SigV4Auth
            from botocore.credentials import Credentials
            creds = Credentials(os.environ['AWS_ACCESS_KEY_ID'], os.environ['AWS_SECRET_ACCESS_KEY'])
            def send(body, sign=True, method='POST'):
                req = AWSRequest(method=method, url=os.environ['ENDPOINT'] + '/', data=body.encode(),
                                 headers={'Content-Type': 'application/x-www-form-urlencoded; charset=utf-8'})
                if sign: SigV4Auth(creds, 'ec2', 'us-east-1').add_auth(req)
                p = req.prepare()
                r = urllib.request.Request(p.url, data=p.body, headers=dict(p.headers), method=method)
                try:
                    resp = urllib.request.urlopen(r)
                    return [resp.status, 'OK']
                except urllib.error.HTTPError as e:
                    text = e.read().decode()
                    m = re.search('<Code>(.*?)</Code>', text)
                    return [e.code, m.group(1) if m else text[:200]]
                except Exception as e:
                    return [0, str(e)]
            V = 'Version=2016-11-15&'
            out = {}
            out['dupname'] = send(V + 'Action=CreateSecurityGroup&GroupName=a&GroupName=b&GroupDescription=d')
            out['gap'] = send(V + 'Action=DescribeSecurityGroups&GroupId.1=sg-0123456789abcdef0&GroupId.3=sg-0123456789abcdef1')
            out['zero'] = send(V + 'Action=DescribeSecurityGroups&GroupId.0=sg-0123456789abcdef0')
            out['leading0'] = send(V + 'Action=CreateTags&ResourceId.01=sg-0123456789abcdef0&Tag.1.Key=a&Tag.1.Value=b')
            out['permgap'] = send(V + 'Action=AuthorizeSecurityGroupIngress&GroupName=default&IpPermissions.2.IpProtocol=-1&IpPermissions.2.IpRanges.1.CidrIp=0.0.0.0/0')
            out['noproto'] = send(V + 'Action=AuthorizeSecurityGroupIngress&GroupName=default&IpPermissions.1.IpRanges.1.CidrIp=0.0.0.0/0')
            out['unknownparam'] = send(V + 'Action=CreateSecurityGroup&GroupName=a&GroupDescription=d&Bogus=1')
            out['unknownnested'] = send(V + 'Action=AuthorizeSecurityGroupIngress&GroupName=default&IpPermissions.1.IpProtocol=-1&IpPermissions.1.IpRanges.1.CidrIp=0.0.0.0/0&IpPermissions.1.PrefixListIds.1.PrefixListId=pl-1')
            out['missing'] = send(V + 'Action=CreateSecurityGroup&GroupName=a')
            out['noaction'] = send(V + 'GroupName=a')
            out['badaction'] = send(V + 'Action=LaunchMissiles')
            out['badescape'] = send(V + 'Action=CreateSecurityGroup&GroupName=%zz&GroupDescription=d')
            out['huge'] = send(V + 'Action=CreateSecurityGroup&GroupName=a&GroupDescription=' + 'x' * (2 << 20))
            out['toomany'] = send(V + 'Action=DescribeSecurityGroups&' + '&'.join('GroupId.%d=sg-0123456789abcdef0' % i for i in range(1, 1100)))
            out['unsigned'] = send(V + 'Action=CreateSecurityGroup&GroupName=a&GroupDescription=d', sign=False)
            print(json.dumps(out))
            """)
        let expected: [String: [Any]] = [
            "dupname": [400, "InvalidParameterValue"], "gap": [400, "InvalidParameterValue"], "zero": [400, "InvalidParameterValue"],
            "leading0": [400, "InvalidParameterValue"], "permgap": [400, "InvalidParameterValue"], "noproto": [400, "MissingParameter"],
            "unknownparam": [400, "UnknownParameter"], "unknownnested": [400, "UnknownParameter"], "missing": [400, "MissingParameter"],
            "noaction": [400, "MissingAction"], "badaction": [400, "InvalidAction"], "badescape": [400, "InvalidParameterValue"],
            "huge": [400, "InvalidParameterValue"], "toomany": [400, "InvalidParameterValue"], "unsigned": [401, "AuthFailure"],
        ]
        for (name, want) in expected {
            let got = r[name] as? [Any]
            #expect(got?.first as? Int == want[0] as? Int && got?.last as? String == want[1] as? String, "\(name): \(String(describing: got))")
        }
        #expect(try api.snapshot() == before)
    }
}
