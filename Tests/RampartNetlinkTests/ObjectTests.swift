import Foundation
import Testing
import RampartHarness
@testable import RampartNetlink

/// Every object kind is created over netlink, read back over netlink, and checked against
/// `nft -j list ruleset`: nft parses what we wrote, so if nft prints the rule we meant, the
/// bytecode is right.
@Suite("Objects against the kernel and nft", .tags(.kernel), .rootOnly) struct ObjectTests {
    @Test func tablesAndTheirFlags() throws {
        let k = try KernelFixture()
        try k.nl.commit(Batch([
            .addTable(NFTTable(family: .inet, name: T, comment: "owned by tests", tag: [1, 2, 3])),
            .addTable(NFTTable(family: .ipv4, name: "dormant", flags: 0x1)),
            .addTable(NFTTable(family: .ipv6, name: "six")),
        ]))
        let t = try #require(try k.nl.readTable(family: .inet, name: T))
        #expect(t.table == NFTTable(family: .inet, name: T, comment: "owned by tests", tag: [1, 2, 3]))
        #expect(try k.nl.readTable(family: .ipv4, name: "dormant")?.table.flags == 0x1)
        #expect(try k.nl.readTable(family: .ipv4, name: T) == nil)  // family matters

        // nft 1.0.6's JSON omits table comments and prints flags wrongly (the table's name),
        // so the text listing is the oracle here.
        let text = try k.ns.nft("list", "ruleset").stdout
        #expect(text.contains("table inet rtest {\n\tcomment \"owned by tests\"\n}"))
        #expect(text.contains("table ip dormant {\n\tflags dormant\n}"))
        #expect(text.contains("table ip6 six {\n}"))

        try k.nl.commit(Batch([.deleteTable(family: .ipv6, name: "six")]))
        #expect(try k.nl.readTable(family: .ipv6, name: "six") == nil)
        #expect(try k.ns.nft("list", "tables").stdout.contains("six") == false)
    }

    /// The owner flag ties a table to the socket that made it; with persist (Linux 6.9) the
    /// table outlives that socket. Rampart must not lose its rules when its daemon dies.
    @Test func ownerAndPersistFlags() throws {
        let ns = try TestNamespace(prefix: "own")
        do {
            let nl = try NFTablesConnection(namespace: .named(ns.name))
            try nl.commit(Batch([
                .addTable(NFTTable(family: .inet, name: "owned", flags: 0x2)),
                .addTable(NFTTable(family: .inet, name: "persisted", flags: 0x2 | 0x4)),
            ]))
            #expect(try nl.readTable(family: .inet, name: "owned") != nil)
        }  // the connection (and its socket) is released here
        let after = try NFTablesConnection(namespace: .named(ns.name))
        #expect(try after.readTable(family: .inet, name: "owned") == nil)
        #expect(try after.readTable(family: .inet, name: "persisted") != nil)
    }

    @Test func baseAndRegularChains() throws {
        let k = try KernelFixture()
        let chains = [
            NFTChain(family: .inet, table: T, name: "egress", base: NFTBaseChainSpec(hook: .forward, priority: -1)),
            NFTChain(family: .inet, table: T, name: "ingress", base: NFTBaseChainSpec(hook: .forward, priority: 0, policy: .accept)),
            NFTChain(family: .inet, table: T, name: "in", base: NFTBaseChainSpec(hook: .input, priority: 10, policy: .drop)),
            NFTChain(family: .inet, table: T, name: "out", base: NFTBaseChainSpec(hook: .output, priority: -150)),
            NFTChain(family: .inet, table: T, name: "regular", comment: "a regular chain", tag: Array("h:1234".utf8)),
        ]
        try k.nl.commit(Batch([.addTable(NFTTable(family: .inet, name: T))] + chains.map { .addChain($0) }))
        let t = try #require(try k.nl.readTable(family: .inet, name: T))
        #expect(Set(t.chains) == Set(chains))

        let nft = try k.ns.nftJSON().compactMap { $0["chain"] as? [String: Any] }
        let summary = nft.map { c in
            [c["name"], c["type"], c["hook"], c["prio"], c["policy"]].map { "\($0 ?? "-")" }.joined(separator: " ")
        }.sorted()
        #expect(summary == [
            "egress filter forward -1 accept",
            "in filter input 10 drop",
            "ingress filter forward 0 accept",
            "out filter output -150 accept",
            "regular - - - -",
        ])
        // NFTChain comments are missing from nft 1.0.6's JSON: the text listing shows them.
        #expect(try k.ns.nft("list", "chain", "inet", T, "regular").stdout.contains("comment \"a regular chain\""))
    }

    /// One rule per match builder; read back equal, and nft prints each as the match meant.
    @Test func rulesOfEveryExpression() throws {
        let k = try KernelFixture()
        var b = Batch([
            .addTable(NFTTable(family: .inet, name: T)),
            .addChain(NFTChain(family: .inet, table: T, name: "c1")),
            .addChain(NFTChain(family: .inet, table: T, name: "r")),
            .addSet(NFTSetDefinition(family: .inet, table: T, name: "s4", keyType: .ipv4Address)),
            .addSet(NFTSetDefinition(family: .inet, table: T, name: "s6", keyType: .ipv6Address)),
            .addSet(NFTSetDefinition(family: .inet, table: T, name: "ifs", keyType: .ifname)),
            .addSet(NFTSetDefinition(family: .inet, table: T, name: "vm", keyType: .ifname, isVerdictMap: true)),
        ])
        let cases: [(exprs: [NFTExpr], nft: String)] = [
            (NFTMatch.interface(.iifname, "tap0") + [.verdict(.accept)],
             #"[{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"tap0"}},{"accept":null}]"#),
            (NFTMatch.interface(.oifname, "tap0", equal: false) + [.verdict(.drop)],
             #"[{"match":{"left":{"meta":{"key":"oifname"}},"op":"!=","right":"tap0"}},{"drop":null}]"#),
            (NFTMatch.nfproto(.ipv6) + [.verdict(.return)],
             #"[{"match":{"left":{"meta":{"key":"nfproto"}},"op":"==","right":"ipv6"}},{"return":null}]"#),
            (NFTMatch.address(.source, ip4("10.0.0.0"), prefixLength: 8) + [.verdict(.accept)],
             #"[{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"==","right":{"prefix":{"addr":"10.0.0.0","len":8}}}},{"accept":null}]"#),
            (NFTMatch.address(.destination, ip4("10.1.2.0"), prefixLength: 23) + [.verdict(.accept)],
             #"[{"match":{"left":{"payload":{"field":"daddr","protocol":"ip"}},"op":"==","right":{"prefix":{"addr":"10.1.2.0","len":23}}}},{"accept":null}]"#),
            (NFTMatch.address(.source, ip4("10.0.1.11"), equal: false) + NFTMatch.address(.source, ip4("10.0.1.12"), equal: false) + [.verdict(.drop)],
             #"[{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"!=","right":"10.0.1.11"}},{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"!=","right":"10.0.1.12"}},{"drop":null}]"#),
            (NFTMatch.address(.source, ip6("fd00::11"), equal: false) + [.verdict(.drop)],
             #"[{"match":{"left":{"payload":{"field":"saddr","protocol":"ip6"}},"op":"!=","right":"fd00::11"}},{"drop":null}]"#),
            (NFTMatch.address(.destination, ip6("2001:db8::"), prefixLength: 32) + [.verdict(.accept)],
             #"[{"match":{"left":{"payload":{"field":"daddr","protocol":"ip6"}},"op":"==","right":{"prefix":{"addr":"2001:db8::","len":32}}}},{"accept":null}]"#),
            (NFTMatch.address(.source, ipv4Any, prefixLength: 0) + [.verdict(.accept)],
             #"[{"match":{"left":{"meta":{"key":"nfproto"}},"op":"==","right":"ipv4"}},{"accept":null}]"#),
            (NFTMatch.address(.source, ipv6: true, inSet: "s6", inverted: true) + [.verdict(.drop)],
             #"[{"match":{"left":{"payload":{"field":"saddr","protocol":"ip6"}},"op":"!=","right":"@s6"}},{"drop":null}]"#),
            (NFTMatch.address(.destination, ipv6: false, inSet: "s4") + [.verdict(.accept)],
             #"[{"match":{"left":{"payload":{"field":"daddr","protocol":"ip"}},"op":"==","right":"@s4"}},{"accept":null}]"#),
            (NFTMatch.interface(.iifname, inSet: "ifs") + NFTMatch.ctState([.established, .related]) + [.verdict(.accept)],
             #"[{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"@ifs"}},{"match":{"left":{"ct":{"key":"state"}},"op":"in","right":["established","related"]}},{"accept":null}]"#),
            (NFTMatch.interface(.oifname, inSet: "ifs") + NFTMatch.ctState(.invalid) + [.verdict(.drop)],
             #"[{"match":{"left":{"meta":{"key":"oifname"}},"op":"==","right":"@ifs"}},{"match":{"left":{"ct":{"key":"state"}},"op":"in","right":"invalid"}},{"drop":null}]"#),
            (NFTMatch.interfaceVerdictMap(.iifname, map: "vm"),
             #"[{"vmap":{"data":"@vm","key":{"meta":{"key":"iifname"}}}}]"#),
            (NFTMatch.port(protocol: 6, destination: true, 22...22) + NFTMatch.counter + [.verdict(.accept)],
             #"[{"match":{"left":{"payload":{"field":"dport","protocol":"tcp"}},"op":"==","right":22}},{"counter":{"bytes":0,"packets":0}},{"accept":null}]"#),
            (NFTMatch.port(protocol: 17, destination: true, 1000...2000) + [.verdict(.accept)],
             #"[{"match":{"left":{"payload":{"field":"dport","protocol":"udp"}},"op":"==","right":{"range":[1000,2000]}}},{"accept":null}]"#),
            (NFTMatch.l4proto(132) + NFTMatch.transportPort(destination: true, 5000...5000) + [.verdict(.accept)],
             #"[{"match":{"left":{"payload":{"field":"dport","protocol":"sctp"}},"op":"==","right":5000}},{"accept":null}]"#),
            (NFTMatch.l4proto(17) + NFTMatch.transportPort(destination: false, 68...68) + NFTMatch.transportPort(destination: true, 67...67) + [.verdict(.accept)],
             #"[{"match":{"left":{"payload":{"field":"sport","protocol":"udp"}},"op":"==","right":68}},{"match":{"left":{"payload":{"field":"dport","protocol":"udp"}},"op":"==","right":67}},{"accept":null}]"#),
            (NFTMatch.icmp(v6: false, types: 8...8) + [.verdict(.accept)],
             #"[{"match":{"left":{"payload":{"field":"type","protocol":"icmp"}},"op":"==","right":"echo-request"}},{"accept":null}]"#),
            (NFTMatch.icmp(v6: false, types: 3...3, code: 4) + [.verdict(.accept)],
             #"[{"match":{"left":{"payload":{"field":"type","protocol":"icmp"}},"op":"==","right":"destination-unreachable"}},{"match":{"left":{"payload":{"field":"code","protocol":"icmp"}},"op":"==","right":"frag-needed"}},{"accept":null}]"#),
            (NFTMatch.icmp(v6: true, types: 133...136) + [.verdict(.accept)],
             #"[{"match":{"left":{"payload":{"field":"type","protocol":"icmpv6"}},"op":"==","right":{"range":["nd-router-solicit","nd-neighbor-advert"]}}},{"accept":null}]"#),
            (NFTMatch.etherSource([2, 0, 0, 0, 1, 0x11], equal: false) + [.verdict(.drop)],
             #"[{"match":{"left":{"payload":{"field":"saddr","protocol":"ether"}},"op":"!=","right":"02:00:00:00:01:11"}},{"drop":null}]"#),
            ([.verdict(.jump("c1"))], #"[{"jump":{"target":"c1"}}]"#),
            ([.verdict(.goto("c1"))], #"[{"goto":{"target":"c1"}}]"#),
            (NFTMatch.l4proto(47) + NFTMatch.counter + [.verdict(.accept)],
             #"[{"match":{"left":{"meta":{"key":"l4proto"}},"op":"==","right":"gre"}},{"counter":{"bytes":0,"packets":0}},{"accept":null}]"#),
        ]
        for (i, c) in cases.enumerated() {
            b.append(.addRule(rule("r", c.exprs, comment: "case \(i)", tag: [UInt8(i), 0xff])))
        }
        try k.nl.commit(b)

        let read = try #require(try k.nl.readTable(family: .inet, name: T)?.rules["r"])
        try #require(read.count == cases.count)
        for (i, r) in read.enumerated() {
            #expect(r.expressions == cases[i].exprs, "read-back of case \(i)")
            #expect(r.comment == "case \(i)")
            #expect(r.tag == [UInt8(i), 0xff])
            #expect(r.handle != nil)
        }
        let nft = nftRules(try k.ns.nftJSON(), chain: "r")
        try #require(nft.count == cases.count)
        for (i, r) in nft.enumerated() {
            #expect(json(r["expr"]!) == cases[i].nft, "nft's reading of case \(i)")
            #expect(r["comment"] as? String == "case \(i)")
        }
    }

    @Test func setsMapsAndTheirElements() throws {
        let k = try KernelFixture()
        let defs = [
            NFTSetDefinition(family: .inet, table: T, name: "h4", keyType: .ipv4Address, comment: "hash v4", tag: [9]),
            NFTSetDefinition(family: .inet, table: T, name: "h6", keyType: .ipv6Address),
            NFTSetDefinition(family: .inet, table: T, name: "i4", keyType: .ipv4Address, isInterval: true),
            NFTSetDefinition(family: .inet, table: T, name: "i6", keyType: .ipv6Address, isInterval: true),
            NFTSetDefinition(family: .inet, table: T, name: "ifs", keyType: .ifname),
            NFTSetDefinition(family: .inet, table: T, name: "to-inst", keyType: .ifname, isVerdictMap: true),
        ]
        let elements: [String: [NFTSetElement]] = [
            "h4": [NFTSetElement(key: ip4("10.0.0.1")), NFTSetElement(key: ip4("10.0.0.2"))],
            "h6": [NFTSetElement(key: ip6("fd00::1"))],
            "i4": [NFTSetElement(key: ip4("10.0.0.0"), rangeEnd: ip4("11.0.0.0")),
                   NFTSetElement(key: ip4("192.168.1.0"), rangeEnd: ip4("192.168.2.0"))],
            "i6": [NFTSetElement(key: ip6("2001:db8::"), rangeEnd: ip6("2001:db9::")),
                   NFTSetElement(key: ip6("fd00::"), rangeEnd: nil)],
            "ifs": [NFTSetElement(key: NFTMatch.ifnameBytes("tap0")), NFTSetElement(key: NFTMatch.ifnameBytes("tapweb1"))],
            "to-inst": [NFTSetElement(key: NFTMatch.ifnameBytes("tap0"), verdict: .jump("in-a")),
                        NFTSetElement(key: NFTMatch.ifnameBytes("tap1"), verdict: .goto("in-b")),
                        NFTSetElement(key: NFTMatch.ifnameBytes("tap2"), verdict: .drop)],
        ]
        var b = Batch([.addTable(NFTTable(family: .inet, name: T)),
                       .addChain(NFTChain(family: .inet, table: T, name: "in-a")),
                       .addChain(NFTChain(family: .inet, table: T, name: "in-b"))])
        for d in defs {
            b.append(.addSet(d))
            b.append(.addElements(family: .inet, table: T, set: d.name, elements: elements[d.name]!))
        }
        try k.nl.commit(b)
        let t = try #require(try k.nl.readTable(family: .inet, name: T))
        #expect(Set(t.sets) == Set(defs))
        for d in defs {
            #expect(Set(t.elements[d.name] ?? []) == Set(elements[d.name]!), "elements of \(d.name)")
        }

        let sets = try k.ns.nftJSON().compactMap { ($0["set"] ?? $0["map"]) as? [String: Any] }
        let summary = Dictionary(uniqueKeysWithValues: sets.map { ($0["name"] as! String, json($0["elem"] ?? [])) })
        #expect(summary["h4"] == #"["10.0.0.1","10.0.0.2"]"#)
        #expect(summary["h6"] == #"["fd00::1"]"#)
        #expect(summary["i4"] == #"[{"prefix":{"addr":"10.0.0.0","len":8}},{"prefix":{"addr":"192.168.1.0","len":24}}]"#)
        #expect(summary["i6"] == #"[{"prefix":{"addr":"2001:db8::","len":32}},{"range":["fd00::","ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]}]"#)
        #expect(summary["ifs"] == #"["tap0","tapweb1"]"#)
        #expect(summary["to-inst"] == #"[["tap0",{"jump":{"target":"in-a"}}],["tap1",{"goto":{"target":"in-b"}}],["tap2",{"drop":null}]]"#)
        #expect(sets.first { $0["name"] as? String == "h4" }?["comment"] as? String == "hash v4")

        // Deltas: delete some, add some.
        try k.nl.commit(Batch([
            .deleteElements(family: .inet, table: T, set: "h4", elements: [NFTSetElement(key: ip4("10.0.0.1"))]),
            .addElements(family: .inet, table: T, set: "h4", elements: [NFTSetElement(key: ip4("10.0.0.3"))]),
            .deleteElements(family: .inet, table: T, set: "i4", elements: [NFTSetElement(key: ip4("10.0.0.0"), rangeEnd: ip4("11.0.0.0"))]),
            .deleteElements(family: .inet, table: T, set: "to-inst", elements: [NFTSetElement(key: NFTMatch.ifnameBytes("tap1"))]),
        ]))
        let t2 = try #require(try k.nl.readTable(family: .inet, name: T))
        #expect(Set(t2.elements["h4"]!) == [NFTSetElement(key: ip4("10.0.0.2")), NFTSetElement(key: ip4("10.0.0.3"))])
        #expect(t2.elements["i4"]! == [NFTSetElement(key: ip4("192.168.1.0"), rangeEnd: ip4("192.168.2.0"))])
        #expect(Set(t2.elements["to-inst"]!.map(\.key)) == [NFTMatch.ifnameBytes("tap0"), NFTMatch.ifnameBytes("tap2")])
    }

    @Test func flushAndDelete() throws {
        let k = try KernelFixture()
        try k.nl.commit(Batch([
            .addTable(NFTTable(family: .inet, name: T)),
            .addChain(NFTChain(family: .inet, table: T, name: "a")),
            .addChain(NFTChain(family: .inet, table: T, name: "b")),
            .addSet(NFTSetDefinition(family: .inet, table: T, name: "s", keyType: .ipv4Address)),
            .addElements(family: .inet, table: T, set: "s", elements: [NFTSetElement(key: ip4("1.2.3.4"))]),
            .addRule(rule("a", [.verdict(.jump("b"))])),
            .addRule(rule("a", NFTMatch.address(.source, ipv6: false, inSet: "s") + [.verdict(.drop)])),
            .addRule(rule("b", [.verdict(.accept)])),
        ]))
        // A chain still jumped to cannot go (EBUSY); with the jump flushed away in the same
        // batch it can: references are checked at the end of the batch.
        #expect(throws: NetlinkError.self) { try k.nl.commit(Batch([.deleteChain(family: .inet, table: T, name: "b")])) }
        try k.nl.commit(Batch([
            .flushChain(family: .inet, table: T, name: "a"),
            .flushChain(family: .inet, table: T, name: "b"),
            .deleteChain(family: .inet, table: T, name: "b"),
            .deleteSet(family: .inet, table: T, name: "s"),
        ]))
        let t = try #require(try k.nl.readTable(family: .inet, name: T))
        #expect(t.chains.map(\.name) == ["a"])
        #expect(t.rules["a"] == [])
        #expect(t.sets.isEmpty)
        try k.nl.commit(Batch([
            .addSet(NFTSetDefinition(family: .inet, table: T, name: "s2", keyType: .ifname)),
            .addElements(family: .inet, table: T, set: "s2", elements: [NFTSetElement(key: NFTMatch.ifnameBytes("x"))]),
        ]))
        try k.nl.commit(Batch([.flushSet(family: .inet, table: T, name: "s2")]))
        #expect(try k.nl.readTable(family: .inet, name: T)?.elements["s2"] == [])
        try k.nl.commit(Batch([.deleteTable(family: .inet, name: T)]))
        #expect(try k.nl.readTable(family: .inet, name: T) == nil)
        #expect(try k.ns.nft("list", "ruleset").stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "")
    }
}
