import Foundation
import Testing
import RampartCore
@testable import RampartNFTables
import RampartNetlink

/// Bytecode → IR (what `explain` reads from the kernel): every rule Rampart compiles decodes to
/// terms that encode back to the very same bytecode, and evaluate the same.
@Suite struct DecodeTests {
    /// The example with every kind of term: prefixes of each length class, ranges, ICMP codes,
    /// protocols without ports, guarded prefixes.
    static let document: Document = {
        var d = exampleDocument
        d.guardedPrefixes = ["tap", "vnet"]
        d.groups["web"]!.rules += [
            Rule(id: "r1", proto: .udp, ports: 5000...5010, remote: .cidr(.v4(IPv4Prefix(address: IPv4Address("10.0.0.0")!, length: 12)))),
            Rule(id: "r2", proto: .icmpv6, icmpType: 1, icmpCode: 3, remote: .cidr(.v6(IPv6Prefix(address: IPv6Address("fd00::")!, length: 7)))),
            Rule(id: "r3", direction: .egress, proto: .number(47), remote: .group("admin"), ethertype: .ipv6),
            Rule(id: "r4", proto: .icmp, icmpType: 3, icmpCode: 4, remote: .cidr(.v4(IPv4Prefix(address: IPv4Address("192.0.2.7")!, length: 32)))),
            Rule(id: "r5", proto: .sctp, ports: 9...9, remote: .cidr(.v6(IPv6Prefix(address: IPv6Address("2001:db8::")!, length: 32)))),
        ]
        return d
    }()

    @Test func everyCompiledRuleRoundTrips() throws {
        let ir = Compiler.compile(Self.document)
        var count = 0
        for c in ir.chains.values {
            for r in c.rules {
                let kernel = Translate.rule(r, chain: c.name, table: "rampart")
                let decoded = try #require(Decode.rule(kernel), "\(c.name): \(Render.rule(r))")
                #expect(Translate.expressions(decoded) == Translate.expressions(r), "\(c.name): \(Render.rule(r)) → \(Render.rule(decoded))")
                #expect(decoded.verdict == r.verdict)
                #expect(decoded.comment == r.comment)
                count += 1
            }
        }
        #expect(count > 60)
    }

    @Test func foreignRulesAreNotDecoded() {
        let r = NFTRule(family: .inet, table: "rampart", chain: "x",
                                    expressions: [.meta(key: .mark, dreg: .r1), .cmp(sreg: .r1, op: .eq, data: [1, 0, 0, 0]), .verdict(.accept)])
        #expect(Decode.rule(r) == nil)
        let cut = NFTRule(family: .inet, table: "rampart", chain: "x", expressions: [.meta(key: .nfproto, dreg: .r1)])
        #expect(Decode.rule(cut) == nil)
    }
}
