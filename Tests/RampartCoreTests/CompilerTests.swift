import Foundation
import Testing
@testable import RampartCore

/// The spec's example document (a copy kept in the project, docs/examples/two-tier.json).
let twoTierURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../../docs/examples/two-tier.json").standardizedFileURL

func twoTier() throws -> Document {
    try Document.parse(json: Data(contentsOf: twoTierURL))
}

func rendered(_ c: Chain?) -> [String] { c?.rules.map(Render.rule) ?? [] }

@Suite struct CompilerTests {
    @Test func twoTierObjects() throws {
        let ir = Compiler.compile(try twoTier())
        #expect(Set(ir.chains.keys) == ["prerouting", "egress", "ingress", "input", "output", "in-web-1", "out-web-1", "in-web-2", "out-web-2",
                                        "in-db-1", "out-db-1", "gin-web", "gout-web", "gin-db", "gout-db"])
        // The source checks run on the prerouting hook, before defragmentation and conntrack
        // (rendered below).
        let pre = try #require(ir.chains[Naming.preroutingChain])
        #expect(pre.base == BaseChainSpec(hook: .prerouting, priority: -450, policy: .accept))
        #expect(pre.rules.first == IRRule([.iifnameNotInSet(Naming.instanceInterfaces)], .accept))
        #expect(pre.rules.allSatisfy { $0.verdict == .drop || $0.verdict == .accept })
        // admin has no member here: no chains; it is referenced, so it has sets.
        #expect(Set(ir.sets.keys) == ["inst-ifaces", "inst-src4", "inst-src6", "inst-macs", "mac-ifaces", "inst-nd-targets",
                                      "m4-web", "m6-web", "m4-admin", "m6-admin"])
        #expect(ir.sets["m4-admin"]?.elements == [.ipv4(IPv4Address("10.0.9.5")!)])
        #expect(ir.sets["m6-web"]?.elements == [.ipv6(IPv6Address("fd00::11")!)])
        #expect(ir.sets["inst-ifaces"]?.elements == [.ifname("tapweb1"), .ifname("tapweb2"), .ifname("tapdb1")])
        #expect(ir.maps["from-inst"]?.elements["tapweb1"] == .jump("out-web-1"))
        #expect(ir.maps["to-inst"]?.elements["tapdb1"] == .jump("in-db-1"))
    }

    @Test func baseChains() throws {
        let ir = Compiler.compile(try twoTier())
        #expect(ir.chains["egress"]?.base == BaseChainSpec(hook: .forward, priority: -1, policy: .accept))
        #expect(ir.chains["ingress"]?.base == BaseChainSpec(hook: .forward, priority: 0, policy: .accept))
        #expect(ir.chains["input"]?.base?.hook == .input)
        #expect(ir.chains["output"]?.base?.hook == .output)
        // Source checks before anything else; the link's protocols dropped on the forward path;
        // rule 1 (initial SYN) before the established accept; every accept scoped to instances;
        // from an instance, related packets only of a connection it is an end of.
        let fromState = [
            "iifname @inst-ifaces ct state invalid drop",
            "iifname @inst-ifaces meta l4proto tcp ct state new tcp flags & (fin|syn|rst|ack) != syn drop",
            "iifname @inst-ifaces ct state established accept",
            "iifname @inst-ifaces ct state related meta nfproto ipv4 iifname . ct original ip saddr @inst-src4 accept",
            "iifname @inst-ifaces ct state related meta nfproto ipv4 iifname . ct reply ip saddr @inst-src4 accept",
            "iifname @inst-ifaces ct state related meta nfproto ipv6 iifname . ct original ip6 saddr @inst-src6 accept",
            "iifname @inst-ifaces ct state related meta nfproto ipv6 iifname . ct reply ip6 saddr @inst-src6 accept",
            "iifname vmap @from-inst",
        ]
        // Every packet from an instance: its MAC and source address, before conntrack; the
        // link's own sources (NDP from link-local or ::, DHCP from 0.0.0.0) let past.
        #expect(rendered(ir.chains["prerouting"]) == [
            "iifname != @inst-ifaces accept",
            "iifname @mac-ifaces iifname . ether saddr != @inst-macs drop",
            "ip6 saddr fe80::/10 meta l4proto icmpv6 icmpv6 type 133 accept",
            "ip6 saddr fe80::/10 meta l4proto icmpv6 icmpv6 type 135-136 accept",
            "ip6 saddr :: meta l4proto icmpv6 icmpv6 type 133 accept",
            "ip6 saddr :: meta l4proto icmpv6 icmpv6 type 135 accept",
            "ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept",
            "meta nfproto ipv4 iifname . ip saddr != @inst-src4 drop",
            "meta nfproto ipv6 iifname . ip6 saddr != @inst-src6 drop",
        ])
        #expect(rendered(ir.chains["egress"]) == [
            "iifname @inst-ifaces meta l4proto icmpv6 icmpv6 type 133-137 drop",
            "iifname @inst-ifaces meta nfproto ipv4 udp sport 68 udp dport 67 drop",
            "iifname @inst-ifaces meta nfproto ipv4 udp sport 67 drop",
        ] + fromState)
        #expect(rendered(ir.chains["ingress"]) == [
            "oifname @inst-ifaces meta l4proto icmpv6 icmpv6 type 133-137 drop",
            "oifname @inst-ifaces meta nfproto ipv4 udp sport 67 udp dport 68 drop",
            "oifname @inst-ifaces ct state invalid drop",
            "oifname @inst-ifaces meta l4proto tcp ct state new tcp flags & (fin|syn|rst|ack) != syn drop",
            "oifname @inst-ifaces ct state established,related accept",
            "oifname vmap @to-inst",
        ])
        // To the host (sources checked in prerouting): NDP with hop limit 255 and a target of its
        // own, DHCP requests; RA and redirects never.
        #expect(rendered(ir.chains["input"]) == [
            "iifname @inst-ifaces meta l4proto icmpv6 icmpv6 type 134 drop",
            "iifname @inst-ifaces meta l4proto icmpv6 icmpv6 type 137 drop",
            "iifname @inst-ifaces meta l4proto icmpv6 icmpv6 type 133-136 ip6 hoplimit != 255 drop",
            "iifname @inst-ifaces meta l4proto icmpv6 icmpv6 type 136 @th,64,16 & 0xffc0 != 0xfe80 iifname . @th,64,128 != @inst-nd-targets drop",
        ] + [
            "iifname @inst-ifaces meta l4proto icmpv6 icmpv6 type 133 accept",
            "iifname @inst-ifaces meta l4proto icmpv6 icmpv6 type 135-136 accept",
            "iifname @inst-ifaces meta nfproto ipv4 udp sport 68 udp dport 67 accept",
            "iifname @inst-ifaces meta nfproto ipv4 udp sport 67 drop",
        ] + fromState)
        #expect(rendered(ir.chains["output"]) == [
            "oifname @inst-ifaces meta l4proto icmpv6 icmpv6 type 133-137 ip6 hoplimit 255 accept",
            "oifname @inst-ifaces meta nfproto ipv4 udp sport 67 udp dport 68 accept",
        ] + rendered(ir.chains["ingress"]).dropFirst(2))
        #expect(ir.guardedPrefixes.isEmpty)
    }

    /// Guarded prefixes (rule 9): one drop per prefix after each dispatch, both directions, so
    /// that only interfaces of no instance reach them, established connections included.
    @Test func guardedPrefixes() throws {
        var d = try twoTier()
        d.guardedPrefixes = ["tap", "vnet", "tap"]
        let ir = Compiler.compile(d)
        #expect(ir.guardedPrefixes == ["tap", "vnet"])
        for (c, key) in [("egress", "iifname"), ("input", "iifname"), ("ingress", "oifname"), ("output", "oifname")] {
            #expect(rendered(ir.chains[c]).suffix(3) == ["\(key) vmap @\(key == "iifname" ? "from-inst" : "to-inst")",
                                                         "\(key) \"tap*\" drop", "\(key) \"vnet*\" drop"])
        }
        // Before conntrack, a guarded interface that is no instance's is dropped first.
        #expect(rendered(ir.chains[Naming.preroutingChain]).prefix(2) == ["iifname \"tap*\" iifname != @inst-ifaces drop",
                                                                         "iifname \"vnet*\" iifname != @inst-ifaces drop"])
        // Changing the prefixes rewrites the five base chains and nothing else.
        let p = diff(from: Compiler.compile(try twoTier()), to: ir)
        #expect(p.summary.chainsRewritten == 5)
        #expect(p.summary.chainsCreated == 0)
        #expect(p.summary.elementsAdded == 0)
    }

    @Test func instanceChains() throws {
        let ir = Compiler.compile(try twoTier())
        #expect(rendered(ir.chains["out-web-1"]) == ["jump gout-web", "drop"])
        #expect(rendered(ir.chains["in-db-1"]) == ["jump gin-db", "drop"])
    }

    /// Anti-spoofing pairs: each local instance's addresses with its interface, its MAC if it
    /// has one; instances elsewhere contribute nothing.
    @Test func antiSpoofingSets() throws {
        let ir = Compiler.compile(try twoTier())
        #expect(ir.sets["inst-src4"]?.elements == [.ifaceIPv4("tapweb1", IPv4Address("10.0.1.11")!),
                                                   .ifaceIPv4("tapweb2", IPv4Address("10.0.1.12")!),
                                                   .ifaceIPv4("tapdb1", IPv4Address("10.0.2.21")!)])
        #expect(ir.sets["inst-src6"]?.elements == [.ifaceIPv6("tapweb1", IPv6Address("fd00::11")!)])
        #expect(ir.sets["inst-macs"]?.elements == [.ifaceEther("tapweb1", MACAddress("02:00:00:00:01:11")!)])
        #expect(ir.sets["mac-ifaces"]?.elements == [.ifname("tapweb1")])
        #expect(ir.sets["inst-src4"]?.keyType == .ifnameIPv4)
    }

    @Test func groupChains() throws {
        let ir = Compiler.compile(try twoTier())
        #expect(rendered(ir.chains["gin-web"]) == [
            #"meta nfproto ipv4 meta l4proto tcp th dport 80 counter accept comment "web/http""#,
            #"meta nfproto ipv4 meta l4proto tcp th dport 443 counter accept comment "web/https""#,
            #"meta nfproto ipv6 meta l4proto tcp th dport 443 counter accept comment "web/https6""#,
            #"ip saddr @m4-admin meta l4proto tcp th dport 22 counter accept comment "web/ssh-from-admin""#,
            #"ip6 saddr @m6-admin meta l4proto tcp th dport 22 counter accept comment "web/ssh-from-admin""#,
            #"ip saddr 10.0.0.0/8 meta l4proto icmp icmp type 8 counter accept comment "web/ping""#,
        ])
        #expect(rendered(ir.chains["gout-db"]) == [#"ip daddr 10.0.0.2 meta l4proto udp th dport 53 counter accept comment "db/replies-only""#])
    }

    @Test func familiesOfGroupRules() {
        func chain(_ r: Rule) -> [String] {
            let g = Group(rules: [r])
            let c = Compiler.groupChains("g", g)
            return rendered(r.direction == .ingress ? c.ingress : c.egress)
        }
        #expect(chain(Rule(proto: .icmp, remote: .group("x"))) == [#"ip saddr @m4-x meta l4proto icmp counter accept comment "g/#0""#])
        #expect(chain(Rule(proto: .icmpv6, icmpType: 128, icmpCode: 0, remote: .group("x"))) ==
            [#"ip6 saddr @m6-x meta l4proto icmpv6 icmpv6 type 128 icmpv6 code 0 counter accept comment "g/#0""#])
        #expect(chain(Rule(direction: .egress, proto: .any, remote: .group("x"), ethertype: .ipv6)) == [#"ip6 daddr @m6-x counter accept comment "g/#0""#])
        #expect(chain(Rule(direction: .egress, proto: .udp, ports: 1000...2000, remote: .group("x"))) == [
            #"ip daddr @m4-x meta l4proto udp th dport 1000-2000 counter accept comment "g/#0""#,
            #"ip6 daddr @m6-x meta l4proto udp th dport 1000-2000 counter accept comment "g/#0""#,
        ])
        #expect(chain(Rule(proto: .number(47), remote: .cidr(.v6(IPv6Prefix(address: IPv6Address("fd00::")!, length: 8))))) ==
            [#"ip6 saddr fd00::/8 meta l4proto 47 counter accept comment "g/#0""#])
    }

    @Test func memberSetsOnlyWhenReferencedByACompiledRule() {
        // A rule referencing "x" in a group with no member here compiles nowhere: no set.
        var d = Document(host: "hv1", groups: ["a": Group(rules: [Rule(proto: .tcp, remote: .group("x"))]), "x": Group()])
        d.instances["r"] = Instance(host: "hv2", groups: ["x"], ips: [IPAddress("10.9.9.9")!])
        let fixed = ["inst-ifaces", "inst-macs", "inst-nd-targets", "inst-src4", "inst-src6", "mac-ifaces"]
        #expect(Compiler.compile(d).sets.keys.sorted() == fixed)
        d.instances["l"] = Instance(host: "hv1", groups: ["a"], ips: [IPAddress("10.0.0.1")!], interface: "tap0")
        let ir = Compiler.compile(d)
        #expect(ir.sets.keys.sorted() == (fixed + ["m4-x", "m6-x"]).sorted())
        #expect(ir.sets["m4-x"]?.elements == [.ipv4(IPv4Address("10.9.9.9")!)])
        #expect(ir.sets["m6-x"]?.elements == [])
        // An instance in no group gets only the basics.
        #expect(ir.chains["gin-x"] == nil)
    }

    @Test func fnv1aIsFixedAcrossProcesses() {
        // The iptables backend shortens long names with it: the value must not depend on the
        // process (Swift's Hasher is seeded per run).
        #expect(FNV1a.hash("") == 0xaf63_bd4c_8601_b7df)
        #expect(FNV1a.hash("a") != FNV1a.hash("b"))
    }
}

@Suite struct NamingTests {
    @Test func names() {
        #expect(Naming.groupIn("web") == "gin-web")
        #expect(Naming.groupOut("web") == "gout-web")
        #expect(Naming.instanceIn("a:b") == "in-a/b")
        #expect(Naming.memberSet(.ipv4, "x:y:z") == "m4-x/y/z")
        #expect(Naming.memberSet(.ipv6, "g") == "m6-g")
        let longest = Naming.groupOut(String(repeating: "x", count: 64))
        #expect(longest.utf8.count == 69)
    }

    @Test func quoting() {
        #expect(Naming.nftQuoted("gin-web") == "gin-web")
        #expect(Naming.nftQuoted("gin-a/b") == "gin-a/b")
        #expect(Naming.nftQuoted("ingress") == "ingress")
        #expect(Naming.nftQuoted("m4-1.2") == "m4-1.2")
        #expect(Naming.nftQuoted("odd name") == #""odd name""#)
        #expect(Render.rule(IRRule([.saddrInSet(.ipv4, Naming.memberSet(.ipv4, "a:b"))], .jump(Naming.groupIn("a:b")))) == "ip saddr @m4-a/b jump gin-a/b")
    }

    @Test func comments() {
        #expect(Naming.ruleComment(group: "web", ruleID: nil, index: 3) == "web/#3")
        #expect(Naming.ruleComment(group: "web", ruleID: "say \"hi\"\n", index: 0) == "web/say 'hi'?")
        let g = String(repeating: "g", count: 64)
        let c = Naming.ruleComment(group: g, ruleID: String(repeating: "é", count: 100), index: 0)
        #expect(c.utf8.count <= 128)
        #expect(c.utf8.count == 127) // 65 bytes of head, 31 two-byte characters; never half a character
        #expect(Naming.ruleComment(group: "g", ruleID: String(repeating: "r", count: 300), index: 0).utf8.count == 128)
    }
}
