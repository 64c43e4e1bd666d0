import Foundation
import RampartCompute
import RampartCore
import RampartHarness
import RampartStore
import Testing

/// `rampart-api --compute netns` (docs/ec2-api.md, "A cloud you can touch"): two hypervisor
/// namespaces behind a fabric, a real rampartd on each (`ComputeCloud`), the real aws CLI; an
/// instance is a namespace with a veth on its hypervisor, and security-group changes show in
/// real TCP and ICMP packets between instances. Every namespace and process is removed, also
/// when a check fails (the fixture's deinit).
@Suite("EC2 API: the netns compute driver", .serialized, .tags(.kernel), .rootOnly) struct EC2ComputeTests {
    /// Where the built executables are (rampart, rampartd, rampart-api, rampart-demo).
    static var binaries: String { URL(fileURLWithPath: builtExecutable("rampart-api")).deletingLastPathComponent().path }

    /// Runs `ip ARGS` and returns its standard output ("" when it fails).
    func ip(_ args: [String]) -> String { (try? runCommand(["ip"] + args).stdout) ?? "" }

    /// The store's record of instance `id` (opened beside the server).
    func record(_ c: ComputeCloud, _ id: String) throws -> Instance {
        try #require(try StoreAddress(c.storePath).openForWriting().instance(id))
    }

    func exists(_ namespace: String) -> Bool { FileManager.default.fileExists(atPath: "/run/netns/\(namespace)") }

    func instanceNamespaces() -> Set<String> {
        Set(ip(["netns", "list"]).split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }
            .filter(NetnsCompute.isInstanceNamespace))
    }

    @Test func instancesAreNamespacesAndGroupsShowInPackets() throws {
        let before = instanceNamespaces()
        let c = try ComputeCloud(binaries: Self.binaries)
        defer { c.destroy() }
        let (hv1, hv2) = (c.namespace(ofHost: "hv1"), c.namespace(ofHost: "hv2"))
        let sg = try #require(try c.awsJSON(["create-security-group", "--group-name", "web", "--description", "w"])["GroupId"] as? String)
        let a = try c.launch(on: "hv1", groups: [sg]), b = try c.launch(on: "hv2", groups: [sg])

        // Each instance: a namespace named as its id, eth0 with its address and MAC, a default
        // route via the gateway; its tap (the store's interface) on its own hypervisor only,
        // and a fabric route to its address.
        #expect(exists(a.id) && exists(b.id))
        for (i, hv, other) in [(a, hv1, hv2), (b, hv2, hv1)] {
            let rec = try record(c, i.id)
            let tap = try #require(rec.interface)
            #expect(ip(["-n", i.id, "-br", "addr", "show", "dev", "eth0"]).contains("\(i.address)/32"))
            #expect(ip(["-n", i.id, "-br", "link", "show", "dev", "eth0"]).contains(try #require(rec.mac).description))
            #expect(ip(["-n", i.id, "route", "show", "default"]).contains("via 169.254.0.1"))
            #expect(ip(["-n", hv, "-br", "link", "show", "dev", tap]).contains("UP"))
            #expect(ip(["-n", other, "-br", "link", "show", "dev", tap]).isEmpty)
            #expect(ip(["-n", c.cloud.fabric.name, "route", "show", "\(i.address)/32"]).contains("dev \(rec.host)"))
        }

        // Real packets, both ways: web allows no ingress yet.
        let prober = try NamespaceProber()
        defer { prober.stop() }
        let owners = [a.address: a.id, b.address: b.id]
        func expectProbes(_ passing: Bool, sourceLocation: SourceLocation = #_sourceLocation) throws {
            let results = try prober.probe([
                .tcp(from: a.id, to: b.address, port: 80), .icmp(from: a.id, to: b.address),
                .tcp(from: b.id, to: a.address, port: 80), .icmp(from: b.id, to: a.address),
            ], owners: owners)
            #expect(results.allSatisfy { $0.passed == passing }, "\(results)", sourceLocation: sourceLocation)
        }
        try expectProbes(false)
        let rules = [["--protocol", "tcp", "--port", "80"], ["--protocol", "icmp", "--port", "-1"]]
        for r in rules { _ = try c.awsJSON(["authorize-security-group-ingress", "--group-id", sg] + r + ["--cidr", "172.31.0.0/16"]) }
        try expectProbes(true)
        let session = try prober.openTCPSession(from: a.id, to: b.address, owner: b.id, port: 80)
        #expect(session.exchange())
        for r in rules { _ = try c.awsJSON(["revoke-security-group-ingress", "--group-id", sg] + r + ["--cidr", "172.31.0.0/16"]) }
        try expectProbes(false)
        #expect(!session.exchange(timeout: 1.5), "the revoke did not cut \(session)")
        session.close()

        // Stop takes eth0 down, start brings it and its default route back.
        _ = try c.awsJSON(["stop-instances", "--instance-ids", b.id])
        #expect(ip(["-n", b.id, "-br", "link", "show", "dev", "eth0"]).contains("DOWN"))
        _ = try c.awsJSON(["start-instances", "--instance-ids", b.id])
        #expect(ip(["-n", b.id, "-br", "link", "show", "dev", "eth0"]).contains("UP"))
        #expect(ip(["-n", b.id, "route", "show", "default"]).contains("via 169.254.0.1"))

        // Terminate: the namespaces, taps and fabric routes go.
        let taps = try [a, b].map { try #require(try record(c, $0.id).interface) }
        _ = try c.awsJSON(["terminate-instances", "--instance-ids", a.id, b.id])
        #expect(!exists(a.id) && !exists(b.id))
        #expect(!ip(["-n", hv1, "-br", "link"]).contains(taps[0]) && !ip(["-n", hv2, "-br", "link"]).contains(taps[1]))
        #expect(ip(["-n", c.cloud.fabric.name, "route", "show", "\(a.address)/32"]).isEmpty)
        prober.stop()
        c.destroy()
        #expect(instanceNamespaces() == before)
        #expect(c.cloud.namespaceNames.allSatisfy { !exists($0) })
    }

    /// A host the driver has no namespace for is refused before COMMIT (a 4xx, nothing
    /// stored); without HostId the API places instances only where the driver can; a driver
    /// failure after COMMIT answers 500 and leaves the instance terminated, nothing running.
    @Test func unmappedHostsAndDriverFailures() throws {
        let before = instanceNamespaces()
        let hv = try TestNamespace(prefix: "cmp")
        let api = try APIServerFixture(arguments: ["--compute", "netns", "--compute-host", "hv1=\(hv.name)"])
        let st = try api.store()
        for h in ["hv1", "hv2"] { _ = try st.setGuardedPrefixes(host: h, ["tap"]) }
        try api.awsFails(["run-instances", "--image-id", "ami-12345678", "--placement", "HostId=hv2"], code: "InsufficientInstanceCapacity")
        #expect(try api.instanceSnapshot().isEmpty)

        // hv2 has fewer instances after the first, but only hv1 has compute.
        var ids: [String] = []
        for _ in 0..<2 {
            let run = try api.awsOK(["run-instances", "--image-id", "ami-12345678"])
            let i = try #require(items(run, "Instances").first)
            #expect((i["Placement"] as? [String: Any])?["HostId"] as? String == "hv1")
            ids += [try #require(i["InstanceId"] as? String)]
        }
        #expect(ids.allSatisfy { exists($0) })
        _ = try api.awsOK(["terminate-instances", "--instance-ids"] + ids)
        #expect(!ids.contains { exists($0) })

        // The hypervisor's namespace disappears under the API: the launch fails after COMMIT.
        _ = try runCommand(["ip", "netns", "del", hv.name], check: true)
        let r = try api.aws(["run-instances", "--image-id", "ami-12345678"])
        #expect(r.status != 0 && r.err.contains("InternalError") && r.err.contains("were terminated"), "\(r.err)")
        let left = try api.instanceSnapshot().filter { !ids.contains($0.id) }
        #expect(left.count == 1 && left.allSatisfy { $0.state == .terminated }, "\(left)")
        #expect(instanceNamespaces() == before)
    }

    /// rampart-api refuses a compute it could not use safely, before it listens.
    @Test func refusedConfigurations() throws {
        let api = builtExecutable("rampart-api")
        let hv = try TestNamespace(prefix: "cmp")
        let common = ["--no-auth", "--store", NSTemporaryDirectory() + "compute-\(UUID().uuidString).db", "--listen", "127.0.0.1:0"]
        defer { try? FileManager.default.removeItem(atPath: common[2]) }
        for (args, message) in [
            (["--compute", "netns"], "at least one --compute-host"),
            (["--compute", "netns", "--compute-host", "hv1"], "expected HOST=NETNS"),
            (["--compute", "netns", "--compute-host", "hv1=rt-none-\(getpid())"], "does not exist"),
            (["--compute", "netns", "--compute-host", "hv1=\(hv.name)", "--compute-fabric", hv.name], "has no device named hv1"),
            (["--compute-host", "hv1=\(hv.name)"], "need --compute netns"),
            (["--compute", "vm"], "none or netns"),
        ] {
            let r = try run(api, common + args)
            #expect(r.status == 1 && r.err.contains(message), "\(args): \(r.status) \(r.err)")
        }
    }

    /// `scripts/demo-cloud --run-checks` (its executable): every check holds and it leaves
    /// nothing behind.
    @Test func demoCloudRunChecks() throws {
        let before = Set(ip(["netns", "list"]).split(separator: "\n").map { String($0.split(separator: " ")[0]) })
        let r = try run(builtExecutable("rampart-demo"), ["cloud", "--run-checks", "--port", "0"])
        #expect(r.status == 0 && r.out.contains("all checks passed"), "\(r.out)\n\(r.err)")
        #expect(!r.out.contains("FAIL"))
        let after = Set(ip(["netns", "list"]).split(separator: "\n").map { String($0.split(separator: " ")[0]) })
        // Other suites may make namespaces meanwhile: the demo's are instances, rt-hv… and rt-fabric….
        #expect(after.subtracting(before).filter { NetnsCompute.isInstanceNamespace($0) || $0.hasPrefix("rt-fabric-") }.isEmpty)
    }
}

