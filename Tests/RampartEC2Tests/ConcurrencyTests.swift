import Foundation
import RampartCore
import RampartHarness
import RampartStore
import Testing

/// The API under concurrent clients: its pool of store connections (`--connections`), the
/// retry of a transaction that lost a serialization race on PostgreSQL, and the delivery's
/// memory of which daemon serves which host.
@Suite("EC2 API: concurrency and delivery")
struct EC2ConcurrencyTests {
    /// A socket's host is asked once, not before every delivery; a daemon started anew on the
    /// same path (a new socket file) is asked again, so a delivery never reaches the daemon of
    /// another host.
    @Test func deliveryAsksASocketsHostOncePerSocketFile() throws {
        let dir = NSTemporaryDirectory() + "ec2-delivery-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/rampartd.sock"
        let delivery = SocketDelivery(sockets: [path])
        let first = try FakeDaemon(path: path, host: "hv1")
        for g in ["a", "b", "c"] {
            let outcome = delivery.deliver([Delivery(host: "hv1", refresh: .rules(g))])
            guard case .sent = outcome.first?.1 else { Issue.record("not sent: \(outcome)"); return }
        }
        #expect(first.received.count == 3)
        #expect(first.statusAsked == 1)

        first.stop()  // its daemon is gone; another one binds the same path
        let second = try FakeDaemon(path: path, host: "hv2")
        let toOld = delivery.deliver([Delivery(host: "hv1", refresh: .rules("d"))])
        guard case .noDaemon = toOld.first?.1 else { Issue.record("hv1 is gone, yet: \(toOld)"); return }
        let toNew = delivery.deliver([Delivery(host: "hv2", refresh: .rules("e"))])
        guard case .sent = toNew.first?.1 else { Issue.record("not sent: \(toNew)"); return }
        #expect(second.received == ["/v1/refresh/rules/e"])
        #expect(second.statusAsked == 1)
    }

    /// Eight boto3 clients authorize rules on one group at once through a server with four
    /// PostgreSQL connections: every call succeeds (a transaction that loses a serialization
    /// race is run again, never answered 500), and every rule is there afterwards.
    @Test(.enabled(if: getuid() == 0, "starts a PostgreSQL cluster (root)"))
    func concurrentWritersOnPostgresAllSucceed() throws {
        let url = try SharedPostgres.freshDatabase("ec2conc")
        let api = try APIServerFixture(store: url, arguments: ["--connections", "4"])
        let r = try api.python(pythonPrelude + """
            import threading
            web = ec2.create_security_group(GroupName='web', Description='web')['GroupId']
            results = []
            lock = threading.Lock()
            def work(k):
                c = boto3.client('ec2', endpoint_url=os.environ['ENDPOINT'], region_name='us-east-1',
                                 config=Config(retries={'max_attempts': 1, 'mode': 'standard'}))
                for i in range(6):
                    got = code(c.authorize_security_group_ingress, GroupId=web, IpPermissions=[
                        {'IpProtocol': 'tcp', 'FromPort': 1000 + k * 10 + i, 'ToPort': 1000 + k * 10 + i, 'IpRanges': [{'CidrIp': '10.0.0.0/8'}]}])
                    with lock:
                        results.append(got)
            threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
            for t in threads: t.start()
            for t in threads: t.join()
            g = ec2.describe_security_groups(GroupIds=[web])['SecurityGroups'][0]
            print(json.dumps({'results': sorted(set(results)), 'calls': len(results),
                              'ports': sorted(p['FromPort'] for p in g['IpPermissions'])}))
            """)
        #expect(r["results"] as? [String] == ["OK"], "\(r)")
        #expect(r["calls"] as? Int == 48)
        var expected: [Int] = []
        for k in 0..<8 { for i in 0..<6 { expected.append(1000 + k * 10 + i) } }
        #expect(r["ports"] as? [Int] == expected)
        #expect(!api.errorLog.contains("InternalError"))
    }
}
