import Foundation
import Testing
@testable import RampartCore
import RampartSystem

/// Whether `nft` can check files here: it also needs root (`.rootOnly`) and a private network
/// namespace (`unshare -n`), so the check never touches the host's ruleset. Elsewhere these
/// tests are skipped.
let nftCheckAvailable: Bool = FileManager.default.isExecutableFile(atPath: "/usr/sbin/nft")
    && FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare")

/// Runs `nft -c -f` on the text in a fresh network namespace; returns nft's complaint or nil.
func nftCheck(_ text: String) throws -> String? {
    let path = NSTemporaryDirectory() + "rampart-core-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).nft"
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(atPath: path) }
    let r = try Command(["/usr/bin/unshare", "-n", "/usr/sbin/nft", "-c", "-f", path]).run()
    return r.succeeded ? nil : r.stdout + r.stderr
}

/// The rendered text is what operators read and may feed to `nft -f`; nft itself (and the kernel,
/// which validates the check-mode transaction) must accept it, including the order of a Plan.
@Suite(.tags(.kernel), .rootOnly, .enabled(if: nftCheckAvailable, "needs nft and unshare")) struct NftSyntaxTests {
    @Test func checkerRejectsBadInput() throws {
        // Not vacuous: bad syntax and a reference the kernel would refuse are both reported.
        #expect(try nftCheck("add chain inet rampart \"a:b\"\n") != nil)
        #expect(try nftCheck("add table inet rampart\nadd chain inet rampart c\nadd rule inet rampart c jump missing\n") != nil)
        #expect(try nftCheck("add table inet rampart\nadd chain inet rampart a\nadd chain inet rampart b\nadd rule inet rampart a jump b\ndelete chain inet rampart b\n") != nil)
    }

    @Test func rulesetAndPlansParse() throws {
        var d = try twoTier()
        d.groups["a:b"] = Group(rules: [Rule(id: "say \"hi\"", proto: .udp, ports: 1...2, remote: .group("a:b")),
                                        Rule(direction: .egress, proto: .icmpv6, icmpType: 1, icmpCode: 2,
                                             remote: .cidr(.v6(IPv6Prefix(address: IPv6Address("fd00::")!, length: 8))))])
        d.instances["1:x"] = Instance(host: "hv1", groups: ["a:b", "web"], ips: [IPAddress("10.5.5.5")!], interface: "tap-x.1")
        let ir = Compiler.compile(d)
        #expect(try nftCheck(Render.ruleset(ir)) == nil)
        var e = Engine(host: "hv1")
        var text = Render.plan(try e.apply(document: d))
        text += Render.plan(try e.instanceUnplugged(id: "1:x"))
        text += Render.plan(try e.rulesChanged(group: "web", rules: []))
        #expect(try nftCheck(text) == nil)
    }

    @Test func randomPlansParse() throws {
        for seed in 0..<12 as Range<UInt64> {
            var gen = DocGen(seed: seed)
            var e = Engine(host: "hv1")
            // One file = one transaction: the first Plan and a run of incremental ones on top, so
            // the kernel checks every reference and deletion in order.
            var text = Render.plan(try e.apply(document: gen.document()))
            for _ in 0..<12 { text += Render.plan(try randomEdit(&e, &gen).1) }
            let complaint = try nftCheck(text)
            #expect(complaint == nil, "seed \(seed): \(complaint ?? "")")
        }
    }
}
