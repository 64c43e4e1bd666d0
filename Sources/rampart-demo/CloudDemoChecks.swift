import Foundation
import RampartHarness

/// `rampart-demo cloud --run-checks`: a scripted tour through the aws CLI with what each step
/// must show, for people and for tests: two instances on different hypervisors, TCP and ICMP
/// between them dropped, then allowed once ingress is authorized, dropped again (an
/// established connection cut) once it is revoked, and their namespaces gone once terminated.
enum CloudDemoChecks {
    /// Runs the tour; true iff every check held. Prints each command and check.
    static func run(_ c: ComputeCloud) -> Bool {
        section("checks: the aws CLI against rampart-api, real packets between instance namespaces")
        var failed = 0
        func check(_ what: String, _ ok: Bool) {
            print("  \(ok ? "ok  " : "FAIL")  \(what)")
            if !ok { failed += 1 }
        }
        func ec2(_ args: [String]) throws -> [String: Any] {
            print("$ aws ec2 \(args.joined(separator: " "))")
            return try c.awsJSON(args)
        }
        do {
            let prober = try NamespaceProber()
            defer { prober.stop() }
            guard let sg = try ec2(["create-security-group", "--group-name", "web", "--description", "web"])["GroupId"] as? String else {
                check("create-security-group answers a group id", false)
                return false
            }
            print("$ aws ec2 run-instances … --placement HostId=\(c.hosts[0]) / HostId=\(c.hosts[1])")
            let a = try c.launch(on: c.hosts[0], groups: [sg]), b = try c.launch(on: c.hosts[1], groups: [sg])
            print("  \(a.id) \(a.address) on \(c.hosts[0]), \(b.id) \(b.address) on \(c.hosts[1])")
            check("each instance is a namespace", c.instanceNamespaces() == [a.id, b.id].sorted())
            let owners = [a.address: a.id, b.address: b.id]
            func probes(_ expected: Bool, _ when: String) throws {
                let results = try prober.probe([.tcp(from: a.id, to: b.address, port: 80), .icmp(from: a.id, to: b.address)], owners: owners)
                for r in results { check("\(r.probe.kind) \(a.id) → \(b.address) \(expected ? "passes" : "is dropped") \(when)", r.passed == expected) }
            }
            try probes(false, "(web allows no ingress)")
            let rules = [["--protocol", "tcp", "--port", "80"], ["--protocol", "icmp", "--port", "-1"]]
            for r in rules { _ = try ec2(["authorize-security-group-ingress", "--group-id", sg] + r + ["--cidr", "172.31.0.0/16"]) }
            try probes(true, "once authorized")
            let session = try prober.openTCPSession(from: a.id, to: b.address, owner: b.id, port: 80)
            check("an established connection carries data", session.exchange())
            for r in rules { _ = try ec2(["revoke-security-group-ingress", "--group-id", sg] + r + ["--cidr", "172.31.0.0/16"]) }
            try probes(false, "once revoked")
            check("the established connection is cut by the revoke", !session.exchange(timeout: 1.5))
            session.close()
            _ = try ec2(["terminate-instances", "--instance-ids", a.id, b.id])
            check("terminated instances have no namespace", [a.id, b.id].allSatisfy { !FileManager.default.fileExists(atPath: "/run/netns/\($0)") })
        } catch {
            check("\(error)", false)
        }
        print(failed == 0 ? "\nall checks passed" : "\n\(failed) check(s) failed")
        return failed == 0
    }
}
