import Foundation
import RampartCore
import RampartStore
import Testing

/// RunInstances, DescribeInstances, TerminateInstances through the `aws` CLI: placement on a
/// registered hypervisor, an address from the VPC, the instance record in the store, and the
/// refresh calls delivered to that hypervisor's daemon.
@Suite("EC2 API instances with the aws CLI", .serialized) struct EC2InstanceTests {
    @Test func runDescribeTerminate() throws {
        let api = try APIServerFixture()
        try api.awsFails(["run-instances", "--image-id", "ami-12345678"], code: "InsufficientInstanceCapacity")
        _ = try api.store().setGuardedPrefixes(host: "hv1", ["tap"])  // registers the hypervisor
        let daemon = try FakeDaemon(path: api.daemonSocket, host: "hv1")
        let web = try #require(try api.awsOK(["create-security-group", "--group-name", "web", "--description", "w"])["GroupId"] as? String)

        let before = try api.snapshot()
        try api.awsFails(["run-instances", "--image-id", "ami-12345678", "--dry-run"], code: "DryRunOperation")
        try api.awsFails(["run-instances", "--image-id", "ami-12345678", "--placement", "HostId=nohost"], code: "InvalidHostId.NotFound")
        try api.awsFails(["run-instances", "--image-id", "ami-12345678", "--security-group-ids", "sg-0123456789abcdef0"], code: "InvalidGroup.NotFound")
        #expect(try api.snapshot() == before)
        #expect(try api.store().document(forHost: "hv1").instances.isEmpty)

        let run = try api.awsOK(["run-instances", "--image-id", "ami-12345678", "--count", "2", "--security-group-ids", web,
                                 "--placement", "HostId=hv1", "--client-token", "tok-1"])
        let launched = items(run, "Instances")
        let ids = launched.compactMap { $0["InstanceId"] as? String }
        #expect(ids.count == 2)
        #expect(Set(launched.compactMap { $0["PrivateIpAddress"] as? String }) == ["172.31.0.4", "172.31.0.5"])
        #expect(launched.allSatisfy { ($0["State"] as? [String: Any])?["Name"] as? String == "running" })
        // The same ClientToken answers the same reservation, launching nothing.
        let again = try api.awsOK(["run-instances", "--image-id", "ami-12345678", "--count", "2", "--security-group-ids", web, "--client-token", "tok-1"])
        #expect(Set(items(again, "Instances").compactMap { $0["InstanceId"] as? String }) == Set(ids))

        // In the store: the contract's records on hv1; the daemon heard of each.
        let st = try api.store()
        let record = try #require(try st.instance(ids[0]))
        #expect(record.host == "hv1" && record.groups == [web] && record.interface?.hasPrefix("tap") == true && record.mac != nil)
        #expect(Set(daemon.received) == Set(ids.map { "/v1/refresh/instance/\($0)" }))
        #expect(try st.document(forHost: "hv1").instances.count == 2)

        func described(_ args: [String]) throws -> [String] {
            items(try api.awsOK(["describe-instances"] + args), "Reservations").flatMap { items($0, "Instances") }.compactMap { $0["InstanceId"] as? String }.sorted()
        }
        #expect(try described([]) == ids.sorted())
        #expect(try described(["--instance-ids", ids[1]]) == [ids[1]])
        #expect(try described(["--filters", "Name=instance.group-id,Values=\(web)"]) == ids.sorted())
        #expect(try described(["--filters", "Name=private-ip-address,Values=172.31.0.5"]).count == 1)
        try api.awsFails(["describe-instances", "--instance-ids", "i-0123456789abcdef0"], code: "InvalidInstanceID.NotFound")
        try api.awsFails(["describe-instances", "--instance-ids", "i-xyz"], code: "InvalidInstanceID.Malformed")
        // Other accounts see none of them.
        #expect(items(try api.awsOK(["describe-instances"], as: keyB), "Reservations").isEmpty)

        // web has members: not deletable.
        try api.awsFails(["delete-security-group", "--group-id", web], code: "DependencyViolation")

        let t = try api.awsOK(["terminate-instances", "--instance-ids", ids[0]])
        #expect((items(t, "TerminatingInstances").first?["CurrentState"] as? [String: Any])?["Name"] as? String == "terminated")
        #expect(try st.instance(ids[0]) == nil)
        #expect(daemon.received.filter { $0 == "/v1/refresh/instance/\(ids[0])" }.count == 2)
        try api.awsFails(["terminate-instances", "--instance-ids", ids[1], "--dry-run"], code: "DryRunOperation")
        // The terminated instance stays listed, as terminated (LifecycleTests covers the rest).
        #expect(try described(["--filters", "Name=instance-state-name,Values=running"]) == [ids[1]])
        #expect(try described(["--filters", "Name=instance-state-name,Values=terminated"]) == [ids[0]])
        _ = try api.awsOK(["terminate-instances", "--instance-ids", ids[1]])
        _ = try api.awsOK(["delete-security-group", "--group-id", web])
    }
}
