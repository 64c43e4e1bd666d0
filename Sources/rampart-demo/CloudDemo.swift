import Foundation
import RampartHarness

/// `rampart-demo cloud [--port N] [--run-checks]` (scripts/demo-cloud): two hypervisors in
/// network namespaces joined by a fabric, a SQLite store that knows them, a rampartd on each,
/// and rampart-api on 127.0.0.1 with `--compute netns`, so that `aws ec2 run-instances` makes
/// an instance you can enter (`ip netns exec i-… …`) and security-group changes show in real
/// packets. It prints the commands to try and waits for Ctrl-C, or with `--run-checks` runs
/// `CloudDemoChecks` and exits 1 if anything differs. Either way it removes everything it made.
enum CloudDemo {
    static func main(_ arguments: [String], binaries: String) -> Int32 {
        var runChecks = false
        var port = 8773
        var rest = arguments[...]
        while let a = rest.popFirst() {
            switch a {
            case "--run-checks": runChecks = true
            case "--port":
                guard let p = rest.popFirst().flatMap(Int.init), (0...65535).contains(p) else { return usage("--port needs 0-65535") }
                port = p
            default: return usage("unknown argument \(a)")
            }
        }
        // Before any thread exists, so every thread inherits it: Ctrl-C, SIGTERM and SIGHUP wait
        // for sigwait below, and the clean-up runs. Children start with no signal blocked.
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        section("building two hypervisors, a store, a rampartd on each, and rampart-api with --compute netns")
        let cloud: ComputeCloud
        do { cloud = try ComputeCloud(binaries: binaries, port: port) } catch {
            print("rampart-demo cloud: \(error)")
            return 1
        }
        defer { cleanUp(cloud) }
        describe(cloud)
        if runChecks { return CloudDemoChecks.run(cloud) ? 0 : 1 }
        printCommands(cloud)
        fflush(nil)  // all streams: the commands must show before the wait
        var received: Int32 = 0
        sigwait(&signals, &received)
        return 0
    }

    static func usage(_ problem: String) -> Int32 {
        print("rampart-demo cloud: \(problem)\nusage: rampart-demo cloud [--port N] [--run-checks]")
        return 2
    }

    static func describe(_ c: ComputeCloud) {
        for host in c.hosts {
            print("  hypervisor \(host) = namespace \(c.namespace(ofHost: host)); rampartd socket \(c.socket(ofHost: host)), log \(c.log("rampartd-\(host)"))")
        }
        print("  fabric     = namespace \(c.cloud.fabric.name) (routes each instance's address to its hypervisor)")
        print("  store      \(c.storePath) (hosts \(c.hosts.joined(separator: ", ")) registered, guarded prefix tap)")
        print("  rampart-api \(c.endpoint), key file \(c.keyPath) (0600), log \(c.log("rampart-api"))")
    }

    static func printCommands(_ c: ComputeCloud) {
        section("try it (as root, in another shell); Ctrl-C here removes everything")
        print("""
        export AWS_ACCESS_KEY_ID=\(c.key.id) AWS_SECRET_ACCESS_KEY=\(c.key.secret)
        export AWS_DEFAULT_REGION=\(c.region) AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_PAGER=
        ec2() { aws ec2 --endpoint-url \(c.endpoint) "$@"; }

        sg=$(ec2 create-security-group --group-name web --description web --query GroupId --output text)
        a=$(ec2 run-instances --image-id ami-00000001 --security-group-ids $sg --placement HostId=\(c.hosts[0]) --query 'Instances[0].InstanceId' --output text)
        b=$(ec2 run-instances --image-id ami-00000001 --security-group-ids $sg --placement HostId=\(c.hosts[1]) --query 'Instances[0].InstanceId' --output text)
        ipb=$(ec2 describe-instances --instance-ids $b --query 'Reservations[0].Instances[0].PrivateIpAddress' --output text)
        ip netns list; ip -n $b addr show eth0                 # each instance is a namespace named as its id

        ip netns exec $b nc -lk 80 >/dev/null &                # a listener on instance b (hypervisor \(c.hosts[1]))
        ip netns exec $a ping -c 1 -W 1 $ipb                   # dropped: web allows no ingress yet
        ip netns exec $a nc -z -w 1 $ipb 80 && echo open || echo dropped
        ec2 authorize-security-group-ingress --group-id $sg --protocol tcp --port 80 --cidr 172.31.0.0/16
        ec2 authorize-security-group-ingress --group-id $sg --protocol icmp --port -1 --cidr 172.31.0.0/16
        ip netns exec $a ping -c 1 -W 1 $ipb                   # answered
        ip netns exec $a nc -z -w 1 $ipb 80 && echo open || echo dropped
        ec2 revoke-security-group-ingress --group-id $sg --protocol tcp --port 80 --cidr 172.31.0.0/16
        ip netns exec $a nc -z -w 1 $ipb 80 && echo open || echo dropped
        ip netns exec \(c.namespace(ofHost: c.hosts[1])) nft list ruleset | less   # what rampartd programmed on \(c.hosts[1])
        ec2 stop-instances --instance-ids $b; ec2 start-instances --instance-ids $b    # eth0 down, then up
        kill %1; ec2 terminate-instances --instance-ids $a $b  # their namespaces go
        """)
    }

    static func cleanUp(_ c: ComputeCloud) {
        section("cleaning up")
        c.destroy()
        print("  stopped rampart-api and the rampartd processes; removed every namespace and file the demo made")
    }
}
