import Foundation
import RampartCore
import RampartDaemon
import RampartHarness
import RampartNetlink
import RampartStore
import Testing

/// Revocation is immediate through rampartd (contract rule 8): a refresh that narrows the policy
/// has cut the connections it no longer allows by the time the daemon answers; connections still
/// allowed live on; the cut is counted in the status and the metrics.
@Suite("rampartd cuts revoked connections", .serialized, .tags(.kernel), .rootOnly) struct DaemonRevocationTests {
    @Test(arguments: KernelBackend.allCases)
    func revokedRuleAndMemberRemovalCutThroughTheDaemon(backend: KernelBackend) async throws {
        let h = try await DaemonHypervisor(backend)
        let add = try h.cli(["instance", "add", "bastion", "--host", "hv2", "--ip", "10.0.9.5", "--interface", "tapb", "--group", "admin"])
        #expect(add.status == 0, "\(add.stderr)")
        let ssh = try h.topo.openTCPSession(from: "bastion", to: "10.0.1.11", port: 22)     // web ssh from admin
        let http = try h.topo.openTCPSession(from: "internet", to: "10.0.1.11", port: 80)   // web http: stays
        let pg = try h.topo.openTCPSession(from: "web-1", to: "10.0.2.21", port: 5432)      // db pg from web: stays
        let out = try h.topo.openTCPSession(from: "web-1", to: "192.0.2.10", port: 8080)    // web egress: stays throughout
        for s in [ssh, http, pg, out] { #expect(s.exchange(), "\(s)") }

        // bastion leaves admin: a members refresh; its ssh connection is cut when the CLI returns.
        let leave = try h.cli(["instance", "set-groups", "bastion"])
        #expect(leave.status == 0, "\(leave.stderr)")
        #expect(!ssh.exchange(timeout: 1.5), "\(ssh) still passes")
        for s in [http, pg] { #expect(s.exchange(timeout: 2), "\(s) was disturbed") }

        // http is revoked: a rules refresh; the http connection is cut, pg lives on.
        let revoke = try h.cli(["group", "revoke", "web", "--id", "http"])
        #expect(revoke.status == 0, "\(revoke.stderr)")
        #expect(!http.exchange(timeout: 1.5), "\(http) still passes")
        #expect(pg.exchange(timeout: 2), "\(pg) was disturbed")

        // db-1 is removed (its device stays plugged): every connection at its addresses is cut.
        let remove = try h.cli(["instance", "remove", "db-1"])
        #expect(remove.status == 0, "\(remove.stderr)")
        let left = try h.topo.hypervisorNode.run(["conntrack", "-L", "-p", "tcp", "--sport", "\(pg.localPort)"]).stdout
        #expect(!left.contains("sport=\(pg.localPort) "), "\(left)")
        #expect(out.exchange(timeout: 2), "\(out) was disturbed")

        let status = try DaemonClient(socketPath: h.socketPath).request("GET", "/v1/status")
        let cut = status.body.firstMatch(of: #/"conntrack_cut":(\d+)/#).flatMap { Int($0.1) } ?? 0
        #expect(cut >= 3 && status.body.contains(#""conntrack_cut_owed":false"#), "\(status.body)")
        let metrics = try DaemonClient(socketPath: h.socketPath).request("GET", "/metrics")
        #expect(metrics.body.contains("rampart_conntrack_cut_total"), "\(metrics.body.prefix(500))")
        await h.stop()
    }
}
