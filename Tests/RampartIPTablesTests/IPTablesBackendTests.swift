import Foundation
import Testing
import RampartCore
import RampartHarness
@testable import RampartIPTables

/// Name mapping and rendering, no kernel.
@Suite("iptables backend: names and rendering") struct IPTablesRenderTests {
    @Test func namesFitTheKernelLimitsAndAreStable() {
        #expect(IPTNames.chain("gin-web") == "rp-gi-web")
        #expect(IPTNames.chain("out-web-1") == "rp-o-web-1")
        #expect(IPTNames.set("m4-admin") == "rp4-admin")
        #expect(IPTNames.set("m6-admin") == "rp6-admin")
        let long = String(repeating: "g", count: 64)
        let a = IPTNames.chain("gout-" + long), b = IPTNames.chain("gout-" + long.dropLast() + "h")
        #expect(a.utf8.count <= 26 && b.utf8.count <= 26 && a != b && a.hasPrefix("rp-go-"))
        #expect(IPTNames.chain("gout-" + long) == a)  // deterministic
        let s = IPTNames.set("m6-" + long)
        #expect(s.utf8.count <= 31 && s.hasPrefix("rp6-"))
        #expect(IPTNames.chain("gin-a/b").hasPrefix("rp-gi-a_b-"))  // ':' in an id (kernel name '/') is hashed
    }

    @Test func exampleRendersPerFamily() throws {
        var helpers: [String: [String]] = [:]
        let st = try IPTRender.state(Compiler.compile(exampleDocument))
        #expect(st.v4.chains["rp-gi-db"] == [
            #"-p tcp -m set --match-set rp4-web src -m tcp --dport 5432 -m comment --comment "db/pg-from-web" -g rp-accept"#,
            #"-p tcp -m set --match-set rp4-admin src -m tcp --dport 22 -m comment --comment "db/ssh-from-admin" -g rp-accept"#,
        ])
        // An instance chain is the IR's: each group jump is followed by the accepted-mark check.
        #expect(st.v4.chains["rp-i-db-1"] == ["-j rp-gi-db", "-m mark --mark 0x20000000/0x20000000 -j RETURN", "-j DROP"])
        #expect(st.v6.chains["rp-i-db-1"] == st.v4.chains["rp-i-db-1"])
        #expect(st.sets["rp4-web"]?.members == ["10.0.1.11", "10.0.1.12"])
        #expect(st.sets["rp6-web"]?.family == .ipv6)
        // The fixed sets: (address, interface) pairs; the instance interfaces are dispatch rules.
        #expect(st.sets["rp-src4"]?.type == "hash:net,iface")
        #expect(st.sets["rp-src4"]?.members == ["10.0.1.11,tapweb1", "10.0.1.12,tapweb2", "10.0.2.21,tapdb1"])
        #expect(st.sets["rp-src6"]?.members == ["fd00::11,tapweb1"])
        #expect(st.v4.chains[IPTNames.isInstanceIn]?.sorted() == ["-i tapdb1 -g rp-accept", "-i tapweb1 -g rp-accept", "-i tapweb2 -g rp-accept"])
        #expect(st.v4.chains[IPTNames.forwardFrom]?.last == "-j ACCEPT" && st.v4.chains[IPTNames.forwardTo]?.last == "-j ACCEPT")
        #expect(st.v4.chains[IPTNames.macCheck] == ["-i tapweb1 -m mac ! --mac-source 02:00:00:00:01:11 -j DROP"])
        #expect(st.v6.chains[IPTNames.naTargets] == [#"-i tapweb1 -m u32 --u32 "0x30=0xfd000000&&0x34=0x0&&0x38=0x0&&0x3c=0x11" -g rp-accept"#])
        #expect(st.eb.chains.isEmpty)  // routed: no ebtables
        // MAC addresses as iptables-save prints them (lower case), so read-back compares equal.
        #expect(try IPTRender.rule(IRRule([.etherSaddrNot(MACAddress("02:AB:00:00:00:0A")!)], .drop), in: "c", family: .ipv4, helpers: &helpers) == ["-m mac ! --mac-source 02:ab:00:00:00:0a -j DROP"])
    }

    /// Protocols by the names iptables-save prints, so a re-apply compares equal.
    @Test func protocolNamesMatchIPTablesSave() throws {
        #expect(IPTRender.protoName(6) == "tcp" && IPTRender.protoName(58) == "ipv6-icmp" && IPTRender.protoName(132) == "sctp")
        #expect(IPTRender.protoName(47) == "gre" && IPTRender.protoName(135) == "mobility-header")
        #expect(IPTRender.protoName(253) == "253")
    }

    /// Anti-spoofing, MAC and source, comes before any conntrack verdict on every path from an
    /// instance; link protocols are never forwarded (routed); rule 1's SYN check precedes the
    /// established accept; guarded prefixes come after the instance tests.
    @Test(arguments: IPTTopology.allCases) func sourceChecksComeFirst(_ topology: IPTTopology) throws {
        let st = try IPTRender.state(Compiler.compile(exampleDocument), topology: topology, guarded: ["tap"])
        for f in [IPFamily.ipv4, .ipv6] {
            let c = st[f].chains
            for path in [IPTNames.forwardFrom, IPTNames.inputInstances] {
                let rules = try #require(c[path])
                let spoof = try #require(rules.firstIndex { $0.hasPrefix("-m set ! --match-set rp-src") || $0 == "-j rp-spoof" })
                #expect(rules.prefix(2).contains("-j rp-mac"))
                // Nothing before the source check accepts, returns or consults conntrack, except
                // the link protocols from `::`, fe80::/10 or 0.0.0.0 (to the host, or on a bridge).
                for r in rules[..<spoof] where r.hasSuffix("-j ACCEPT") || r.hasSuffix("-j RETURN") {
                    #expect(r.hasPrefix("-s fe80::/10 -p ipv6-icmp") || r.hasPrefix("-s ::/128 -p ipv6-icmp") || r.hasPrefix("-s 0.0.0.0/32 -p udp -m udp --sport 68 --dport 67"), "\(path): \(r)")
                }
                #expect(!rules[..<spoof].contains { $0.contains("conntrack") })
                let syn = try #require(rules.firstIndex { $0.contains("! --tcp-flags FIN,SYN,RST,ACK SYN -j DROP") })
                let est = try #require(rules.firstIndex { $0.contains("--ctstate ESTABLISHED") })
                // Related packets from an instance: only of its own connections (`rp-related`).
                let related = try #require(rules.firstIndex { $0 == "-m conntrack --ctstate RELATED -j rp-related" })
                #expect(spoof < syn && syn < est && est < related)
                #expect(!rules.contains { $0.contains("RELATED,ESTABLISHED") })
            }
            // Instances first, then the guard (instance interfaces share its prefix).
            let fwd = try #require(c[IPTNames.forward])
            let g = topology == .routed ? "-i tap+ -j DROP" : "-m physdev --physdev-in tap+ -j DROP"
            #expect(fwd.firstIndex(of: g)! > fwd.firstIndex { $0.hasSuffix(" -g rp-fwd-from") }!)
            #expect(c[IPTNames.input]?.last == g)
            if topology == .routed {
                let from = c[IPTNames.forwardFrom]!
                if f == .ipv6 {
                    #expect(from.contains("-p ipv6-icmp -m icmp6 --icmpv6-type 135 -j DROP"))
                } else {
                    #expect(from.contains("-p udp -m udp --sport 68 --dport 67 -j DROP") && from.contains("-p udp -m udp --sport 67 -j DROP"))
                    #expect(c[IPTNames.forwardTo]?.prefix(2).last == "-p udp -m udp --sport 67 --dport 68 -j DROP")
                }
            }
        }
        if topology == .bridged {
            #expect(st.eb.chains[IPTNames.arp]?.contains("-p ARP -s 02:00:00:00:01:11 -i tapweb1 --arp-ip-src 10.0.1.11 --arp-mac-src 02:00:00:00:01:11 -j RETURN") == true)
            #expect(st.eb.chains[IPTNames.arp]?.last == "-p ARP -i tap+ -j DROP")
            // Every frame into the bridge: source MACs first, then IP on, ARP to its checks,
            // anything else from an instance or a guarded port dropped.
            let link = try #require(st.eb.chains[IPTNames.link])
            #expect(link.first == "-s ! 02:00:00:00:01:11 -i tapweb1 -j DROP")
            let ipOn = try #require(link.firstIndex(of: "-p IPv4 -j RETURN"))
            #expect(link[ipOn...].prefix(4) == ["-p IPv4 -j RETURN", "-p IPv6 -j RETURN", "-p ARP -j RAMPART-ARP", "-p ARP -j RETURN"])
            #expect(link[..<ipOn].allSatisfy { $0.hasPrefix("-s ! ") && $0.hasSuffix(" -j DROP") })
            #expect(link.contains("-i tapweb1 -j DROP") && link.last == "-i tap+ -j DROP")
            #expect(st.v4.chains[IPTNames.spoof]?.contains("-s 10.0.1.11/32 -m physdev --physdev-in tapweb1 -g rp-accept") == true)
            #expect(st.sets["rp-src4"] == nil)
        }
    }

    /// The raw table (before conntrack): a guarded prefix sends all its interfaces to the check
    /// with one rule, an instance interface no prefix covers gets its own, a 15-byte prefix
    /// covers only the name it equals; the check returns the instance's own source and the
    /// link's, and drops everything else.
    @Test(arguments: IPTTopology.allCases) func rawTableChecksSourcesBeforeConntrack(_ topology: IPTTopology) throws {
        var d = exampleDocument
        d.instances["odd"] = Instance(host: "hv1", groups: [], ips: [IPAddress("10.0.1.50")!, IPAddress("fd00::50")!], interface: "vnet50")
        let st = try IPTRender.state(Compiler.compile(d), topology: topology, guarded: ["tap", "vnet50xxxxxxxxxx"])
        let bridged = topology == .bridged
        for f in [IPFamily.ipv4, .ipv6] {
            let raw = st.raw(f).chains
            let iif = bridged ? "-m physdev --physdev-in" : "-i"
            #expect(raw[IPTNames.prerouting]?.sorted() == ["\(iif) tap+ -g rp-pre-chk", "\(iif) vnet50 -g rp-pre-chk", "\(iif) vnet50xxxxxxxxxx -g rp-pre-chk"])
            let check = try #require(raw[IPTNames.preCheck])
            #expect(check.last == "-j DROP")
            if bridged {
                let own = f == .ipv4 ? "-s 10.0.1.50/32 -m physdev --physdev-in vnet50 -g rp-pre-mark" : "-s fd00::50/128 -m physdev --physdev-in vnet50 -g rp-pre-mark"
                #expect(raw[IPTNames.preSources]?.contains(own) == true, "\(raw[IPTNames.preSources] ?? [])")
                #expect(check.prefix(3) == [IPTRender.clearMark, "-j rp-pre-src", "-m mark --mark 0x20000000/0x20000000 -g rp-pre-ok"])
                #expect(raw[IPTNames.preOK] == [IPTRender.clearMark] && raw[IPTNames.preMark] == [IPTRender.setMark])
            } else {
                #expect(check.first == "-m set --match-set \(IPTNames.sources(f)) src,src -j RETURN")
            }
            let link = f == .ipv4 ? ["-s 0.0.0.0/32 -p udp -m udp --sport 68 --dport 67 -j RETURN"]
                : ["-s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 133 -j RETURN", "-s ::/128 -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j RETURN"]
            #expect(link.allSatisfy(check.contains), "\(check)")
            // Nothing else returns: every other RETURN is an instance's own source.
            for r in check.dropLast().dropFirst(bridged ? 3 : 0) {
                let linkOwn = r.hasPrefix("-s 0.0.0.0/32 ") || r.hasPrefix("-s fe80::/10 ") || r.hasPrefix("-s ::/128 ")
                let instanceOwn = !bridged && r.hasPrefix("-m set --match-set rp-src")
                #expect(r.hasSuffix(" -j RETURN") && (linkOwn || instanceOwn), "\(r)")
            }
        }
        let chains = bridged ? IPTNames.rawChains : [IPTNames.prerouting, IPTNames.preCheck]
        #expect(Set(st.raw4.chains.keys) == chains && Set(st.raw6.chains.keys) == chains)
    }
}

/// The iptables backend against the kernel (legacy and nft-based), in throwaway namespaces.
@Suite("iptables backend against the kernel", .serialized, .tags(.kernel), .rootOnly) struct IPTablesKernelTests {
    static func cli(_ ns: TestNamespace, _ v: IPTablesVariant, _ args: [String], input: String? = nil) throws -> CommandResult {
        try runCommand([rampartExecutable] + args.prefix(1) + ["--netns", ns.name, "--backend", "iptables", "--iptables", v.rawValue] + args.dropFirst(), input: input)
    }

    static func save(_ ns: TestNamespace, _ v: IPTablesVariant, v6: Bool = false, table: String = "filter") throws -> [String] {
        try ns.run([(v6 ? "ip6tables-" : "iptables-") + v.rawValue + "-save", "-t", table], check: true).stdout
            .split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") }
    }

    /// Lines of another owner: its chains' declarations and rules, and the built-ins' rules
    /// other than Rampart's jumps.
    static func foreign(_ lines: [String]) -> [String] {
        lines.filter { l in
            !l.contains("RAMPART-") && !l.contains(" rp-") && !l.hasPrefix(":rp-")
        }
    }

    @Test(arguments: IPTablesVariant.allCases)
    func foreignChainsStayByteIdentical(_ v: IPTablesVariant) throws {
        let ns = try TestNamespace(prefix: "ipt")
        for v6 in [false, true] {
            let t = (v6 ? "ip6tables-" : "iptables-") + v.rawValue
            try ns.run([t + "-restore", "-w", "--noflush"], input: """
                *filter
                :DOCKER-USER - [0:0]
                :AGENT-FW - [0:0]
                -A DOCKER-USER -p tcp -m tcp --dport 2375 -j DROP
                -A DOCKER-USER -j RETURN
                -A AGENT-FW -m comment --comment "owned by agent" -j RETURN
                -A FORWARD -j DOCKER-USER
                -A INPUT -j AGENT-FW
                -A OUTPUT -p udp -m udp --dport 9 -j ACCEPT
                COMMIT
                *raw
                :AGENT-RAW - [0:0]
                -A AGENT-RAW -p udp -m udp --dport 53 -j CT --notrack
                -A PREROUTING -j AGENT-RAW
                COMMIT

                """, check: true)
        }
        let before4 = try Self.save(ns, v), before6 = try Self.save(ns, v, v6: true)
        let raw4 = try Self.save(ns, v, table: "raw"), raw6 = try Self.save(ns, v, v6: true, table: "raw")
        #expect(try Self.cli(ns, v, ["apply", examplePath]).status == 0)
        // A change of rules and membership, then a flush.
        var text = try String(contentsOfFile: examplePath, encoding: .utf8)
        text = text.replacingOccurrences(of: #""ports": "5432""#, with: #""ports": "5433""#)
            .replacingOccurrences(of: #""ips": ["10.0.9.5", "fd00::95"]"#, with: #""ips": ["10.0.9.6", "fd00::96"]"#)
        let changed = try Self.cli(ns, v, ["apply", "-"], input: text)
        #expect(changed.status == 0, "\(changed.stderr)")
        #expect(changed.stdout.contains("chains: 0 created, 2 rewritten"), "\(changed.stdout)")
        let during4 = try Self.save(ns, v)
        #expect(Self.foreign(during4) == before4)
        #expect(Self.foreign(try Self.save(ns, v, v6: true)) == before6)
        // Rampart's jumps went to the top once; the foreign jumps keep their order after them.
        #expect(during4.filter { $0.hasPrefix("-A FORWARD") } == ["-A FORWARD -j RAMPART-FWD", "-A FORWARD -j DOCKER-USER"])
        // The raw table: the source check before conntrack, ahead of the foreign jump.
        let duringRaw4 = try Self.save(ns, v, table: "raw")
        let duringRaw6 = try Self.save(ns, v, v6: true, table: "raw")
        #expect(Self.foreign(duringRaw4) == raw4 && Self.foreign(duringRaw6) == raw6)
        #expect(duringRaw4.filter { $0.hasPrefix("-A PREROUTING") } == ["-A PREROUTING -j RAMPART-PRE", "-A PREROUTING -j AGENT-RAW"])
        #expect(try Self.cli(ns, v, ["flush"]).status == 0)
        #expect(try Self.save(ns, v) == before4)
        #expect(try Self.save(ns, v, v6: true) == before6)
        #expect(try Self.save(ns, v, table: "raw") == raw4)
        #expect(try Self.save(ns, v, v6: true, table: "raw") == raw6)
        #expect(try ns.run(["ipset", "list", "-n"], check: true).stdout.isEmpty)
    }

    /// Through the CLI: another owner jumps to one of Rampart's instance chains, so deleting it
    /// (the instance is gone from the document) is refused by the kernel: exit 2, and every rule
    /// and set is as before.
    @Test(arguments: IPTablesVariant.allCases)
    func refusedApplyExitsTwoAndChangesNothing(_ v: IPTablesVariant) throws {
        let ns = try TestNamespace(prefix: "ipt")
        #expect(try Self.cli(ns, v, ["apply", examplePath]).status == 0)
        try ns.run(["iptables-" + v.rawValue, "-w", "-N", "FOREIGN"], check: true)
        try ns.run(["iptables-" + v.rawValue, "-w", "-A", "FOREIGN", "-j", "rp-i-web-2"], check: true)
        let before4 = try Self.save(ns, v), before6 = try Self.save(ns, v, v6: true)
        let sets = try ns.run(["ipset", "save"], check: true).stdout
        var text = try String(contentsOfFile: examplePath, encoding: .utf8)
        text = text.replacingOccurrences(of: #""web-2": {"host": "hv1", "interface": "tapweb2", "ips": ["10.0.1.12"], "groups": ["web"]},"#, with: "")
        #expect(!text.contains("tapweb2"))
        let r = try Self.cli(ns, v, ["apply", "-"], input: text)
        #expect(r.status == 2, "\(r.stdout) \(r.stderr)")
        #expect(r.stderr.contains("restore"), "\(r.stderr)")
        #expect(try Self.save(ns, v) == before4)
        #expect(try Self.save(ns, v, v6: true) == before6)
        #expect(try ns.run(["ipset", "save"], check: true).stdout == sets)
    }

    /// Every rule shape (other protocols, port ranges, ICMP codes, IPv6 prefixes, family-limited
    /// group rules, several addresses, a MAC with letters, a comment with quotes and a backslash)
    /// reads back exactly as written: re-applying changes nothing.
    @Test(arguments: IPTablesVariant.allCases)
    func everyRuleShapeReadsBackAsWritten(_ v: IPTablesVariant) throws {
        let ns = try TestNamespace(prefix: "ipt")
        let doc = #"""
        {"version": 1, "host": "hv1",
         "groups": {
          "g": {"rules": [
            {"id": "gre", "protocol": 47, "cidr": "192.0.2.0/24"},
            {"id": "sctp", "protocol": "sctp", "ports": "3000-3010", "cidr": "0.0.0.0/0"},
            {"id": "udp", "protocol": "udp", "ports": "1-65535", "cidr": "0.0.0.0/0"},
            {"id": "unreach", "protocol": "icmp", "icmp_type": 3, "icmp_code": 4, "cidr": "10.0.0.0/8"},
            {"id": "pkt-big", "protocol": "icmpv6", "icmp_type": 2, "icmp_code": 0, "cidr": "2001:db8::/32"},
            {"id": "v6grp", "protocol": "udp", "ports": "53", "group": "h", "ethertype": "ipv6"},
            {"id": "out", "direction": "egress", "protocol": "tcp", "ports": "443", "group": "h"},
            {"id": "odd \"quoted\" 'id' \\ here", "protocol": 253, "cidr": "::/0"}
          ]},
          "h": {"rules": []}},
         "instances": {
          "a": {"host": "hv1", "interface": "tapa", "ips": ["10.0.0.5", "10.0.0.6", "fd00::5", "fd00::6"], "mac": "02:AB:CD:00:00:0F", "groups": ["g", "h"]},
          "b": {"host": "hv2", "ips": ["10.9.0.5", "fd00:9::5"], "groups": ["h"]}}}
        """#
        let first = try Self.cli(ns, v, ["apply", "-"], input: doc)
        #expect(first.status == 0, "\(first.stderr)")
        let again = try Self.cli(ns, v, ["diff", "-"], input: doc)
        #expect(again.stdout.contains("in sync"), "\(again.stdout)")
        #expect(try Self.save(ns, v, v6: true).contains(#"-A rp-gi-g -p 253 -m comment --comment "g/odd \'quoted\' \'id\' \\ here" -g rp-accept"#))
    }

    /// Guarded prefixes from the document (rule 9), of every length up to a whole interface
    /// name (15 bytes: matched exactly, `+` would not fit), read back as written on both
    /// topologies; ebtables drift is repaired; another owner's ebtables rules are untouched and
    /// flush removes only Rampart's.
    @Test(arguments: IPTablesVariant.allCases)
    func guardedPrefixesFromTheDocumentReadBack(_ v: IPTablesVariant) throws {
        let ns = try TestNamespace(prefix: "ipt")
        var text = try String(contentsOfFile: examplePath, encoding: .utf8)
        let last = try #require(text.lastIndex(of: "}"))
        text.replaceSubrange(last...last, with: #", "guarded_prefixes": ["tap", "vnet-abcdefghij", "x"]}"#)
        // Another owner's ebtables rules, in the table Rampart writes and in another.
        try ns.run(["ebtables-nft-restore", "--noflush"], input: """
            *nat
            :AGENT-ARP RETURN
            -A PREROUTING -p ARP -i eth9 -j AGENT-ARP
            -A AGENT-ARP -p ARP --arp-ip-src 192.0.2.1 -j DROP
            COMMIT
            *filter
            -A FORWARD -p IPv4 -i eth9 -j DROP
            COMMIT

            """, check: true)
        let foreignEB = try ns.run(["ebtables-nft-save"], check: true).stdout.split(separator: "\n").filter { !$0.hasPrefix("#") }
        for topology in ["routed", "bridged"] {
            let r = try Self.cli(ns, v, ["apply", "--topology", topology, "-"], input: text)
            #expect(r.status == 0, "\(r.stderr)")
            let again = try Self.cli(ns, v, ["diff", "--topology", topology, "-"], input: text)
            #expect(again.stdout.contains("in sync"), "\(topology): \(again.stdout)")
        }
        let fwd = try Self.save(ns, v).filter { $0.hasPrefix("-A RAMPART-FWD") }
        #expect(fwd.contains("-A RAMPART-FWD -m physdev --physdev-in vnet-abcdefghij -j DROP") && fwd.contains("-A RAMPART-FWD -m physdev --physdev-in x+ -j DROP"), "\(fwd)")
        let eb = try ns.run(["ebtables-nft-save", "-t", "nat"], check: true).stdout
        #expect(eb.contains("-A RAMPART-EBOUT -p IPv6 -o vnet-abcdefghij -j DROP"), "\(eb)")
        // Rampart's jumps went to the top; the other owner's rules are as they were.
        #expect(eb.split(separator: "\n").filter { $0.hasPrefix("-A PREROUTING") } == ["-A PREROUTING -j RAMPART-L2", "-A PREROUTING -p ARP -i eth9 -j AGENT-ARP"])
        #expect(eb.contains("-A AGENT-ARP -p ARP --arp-ip-src 192.0.2.1 -j DROP"))
        // ebtables drift (the ARP chain flushed, the OUTPUT jump deleted) is repaired like the rest.
        let clean = eb.split(separator: "\n").filter { !$0.hasPrefix("#") }
        try ns.run(["ebtables-nft", "-t", "nat", "-F", "RAMPART-ARP"], check: true)
        try ns.run(["ebtables-nft", "-t", "nat", "-D", "OUTPUT", "-j", "RAMPART-EBOUT"], check: true)
        let drift = try Self.cli(ns, v, ["diff", "--topology", "bridged", "-"], input: text)
        #expect(drift.stdout.contains("# ebtables-restore --noflush") && drift.stdout.contains("-I OUTPUT 1 -j RAMPART-EBOUT"), "\(drift.stdout)")
        #expect(try Self.cli(ns, v, ["apply", "--topology", "bridged", "-"], input: text).status == 0)
        #expect(try ns.run(["ebtables-nft-save", "-t", "nat"], check: true).stdout.split(separator: "\n").filter { !$0.hasPrefix("#") } == clean)
        // A host written by the layout before 2026-12-04 (PREROUTING sent ARP only, to
        // RAMPART-ARP): the next apply puts the jump to RAMPART-L2 in its place.
        try ns.run(["ebtables-nft", "-t", "nat", "-D", "PREROUTING", "-j", "RAMPART-L2"], check: true)
        try ns.run(["ebtables-nft", "-t", "nat", "-I", "PREROUTING", "1", "-p", "ARP", "-j", "RAMPART-ARP"], check: true)
        let old = try Self.cli(ns, v, ["diff", "--topology", "bridged", "-"], input: text)
        #expect(old.stdout.contains("-D PREROUTING -p ARP -j RAMPART-ARP") && old.stdout.contains("-I PREROUTING 1 -j RAMPART-L2"), "\(old.stdout)")
        #expect(try Self.cli(ns, v, ["apply", "--topology", "bridged", "-"], input: text).status == 0)
        #expect(try ns.run(["ebtables-nft-save", "-t", "nat"], check: true).stdout.split(separator: "\n").filter { !$0.hasPrefix("#") } == clean)
        #expect(try Self.cli(ns, v, ["diff", "--topology", "bridged", "-"], input: text).stdout.contains("in sync"))
        #expect(try Self.cli(ns, v, ["flush"]).status == 0)
        #expect(try ns.run(["ebtables-nft-save"], check: true).stdout.split(separator: "\n").filter { !$0.hasPrefix("#") } == foreignEB)
        #expect(!(try Self.save(ns, v).contains { $0.contains("RAMPART") || $0.contains("rp-") }))
    }

    @Test func dryRunPrintsTheRestoreInputAndChangesNothing() throws {
        let ns = try TestNamespace(prefix: "ipt")
        let dry = try Self.cli(ns, .legacy, ["apply", "--dry-run", examplePath])
        #expect(dry.status == 0)
        #expect(dry.stdout.contains("# iptables-restore --noflush") && dry.stdout.contains(":rp-gi-db - [0:0]")
                && dry.stdout.contains("-I FORWARD 1 -j RAMPART-FWD") && dry.stdout.contains("create rp4-web hash:ip family inet"), "\(dry.stdout)")
        #expect(!(try Self.save(ns, .legacy).contains { $0.contains("rp-") }))
        #expect(try ns.run(["ipset", "list", "-n"], check: true).stdout.isEmpty)
    }

    @Test func showListsInstancesGroupsAndRules() throws {
        let ns = try TestNamespace(prefix: "ipt")
        #expect(try Self.cli(ns, .legacy, ["apply", examplePath]).status == 0)
        let text = try Self.cli(ns, .legacy, ["show"]).stdout
        #expect(text.contains("instance web-1 (tapweb1)") && text.contains("  ingress web") && text.contains("  egress db"), "\(text)")
        #expect(text.contains(#"ipv4 -p tcp -m tcp --dport 80 -m comment --comment "web/http" -g rp-accept   packets 0 bytes 0"#), "\(text)")
        let json = try JSONSerialization.jsonObject(with: Data(try Self.cli(ns, .legacy, ["show", "--json"]).stdout.utf8)) as? [String: Any]
        #expect((json?["instances"] as? [[String: Any]])?.compactMap { $0["instance"] as? String } == ["db-1", "web-1", "web-2"])
        #expect(try Self.cli(ns, .legacy, ["flush"]).status == 0)
        #expect(try Self.cli(ns, .legacy, ["show"]).stdout.contains("nothing is enforced"))
    }

    @Test(arguments: IPTablesVariant.allCases)
    func driftIsRepaired(_ v: IPTablesVariant) throws {
        let ns = try TestNamespace(prefix: "ipt")
        #expect(try Self.cli(ns, v, ["apply", examplePath]).status == 0)
        let clean4 = try Self.save(ns, v), clean6 = try Self.save(ns, v, v6: true)
        let cleanRaw6 = try Self.save(ns, v, v6: true, table: "raw")
        let t = "iptables-" + v.rawValue
        // Before conntrack: the IPv6 source check emptied, its jump gone.
        try ns.run(["ip6tables-" + v.rawValue, "-w", "-t", "raw", "-F", "rp-pre-chk"], check: true)
        try ns.run(["ip6tables-" + v.rawValue, "-w", "-t", "raw", "-D", "PREROUTING", "-j", "RAMPART-PRE"], check: true)
        try ns.run([t, "-w", "-F", "rp-gi-web"], check: true)
        try ns.run([t, "-w", "-I", "rp-i-db-1", "1", "-j", "ACCEPT"], check: true)
        try ns.run([t, "-w", "-N", "rp-extra"], check: true)
        try ns.run([t, "-w", "-D", "INPUT", "-j", "RAMPART-IN"], check: true)
        try ns.run(["ipset", "del", "rp4-web", "10.0.1.12"], check: true)
        try ns.run(["ipset", "add", "rp4-admin", "192.0.2.1"], check: true)
        let diff = try Self.cli(ns, v, ["diff", examplePath])
        #expect(diff.stdout.contains(":rp-gi-web - [0:0]") && diff.stdout.contains("-X rp-extra"), "\(diff.stdout)")
        #expect(diff.stdout.contains("add rp4-web 10.0.1.12") && diff.stdout.contains("del rp4-admin 192.0.2.1"))
        let repair = try Self.cli(ns, v, ["apply", examplePath])
        #expect(repair.status == 0, "\(repair.stderr)")
        #expect(repair.stdout.contains("chains: 0 created, 3 rewritten"), "\(repair.stdout)")
        // The INPUT jump is back (at the top, where it was).
        #expect(try Self.save(ns, v) == clean4)
        #expect(try Self.save(ns, v, v6: true) == clean6)
        #expect(try Self.save(ns, v, v6: true, table: "raw") == cleanRaw6)
        #expect(try Self.cli(ns, v, ["diff", examplePath]).stdout.contains("in sync"))
    }

    /// A set of Rampart's name but another type, made while nothing referenced it, is replaced.
    @Test func squattedSetIsReplaced() throws {
        let ns = try TestNamespace(prefix: "ipt")
        try ns.run(["ipset", "create", "rp6-web", "hash:net", "family", "inet6"], check: true)
        try ns.run(["ipset", "add", "rp6-web", "2001:db8::/64"], check: true)
        let r = try Self.cli(ns, .legacy, ["apply", examplePath])
        #expect(r.status == 0, "\(r.stderr)")
        let web6 = try ns.run(["ipset", "save", "rp6-web"], check: true).stdout
        #expect(web6.contains("create rp6-web hash:ip family inet6") && web6.contains("add rp6-web fd00::11") && !web6.contains("2001:db8"), "\(web6)")
        #expect(try Self.cli(ns, .legacy, ["diff", examplePath]).stdout.contains("in sync"))
    }

    /// A refused restore leaves the previous rules (and members) in place; an IPv6 failure after
    /// the IPv4 restore puts the IPv4 rules back.
    @Test(arguments: IPTablesVariant.allCases)
    func failedApplyLeavesThePreviousRules(_ v: IPTablesVariant) throws {
        let ns = try TestNamespace(prefix: "ipt")
        let good = IPTablesBackend(variant: v, netns: ns.name)
        try good.converge(to: Compiler.compile(exampleDocument))
        let before4 = try Self.save(ns, v), before6 = try Self.save(ns, v, v6: true)
        let sets = try ns.run(["ipset", "save"], check: true).stdout
        // A new group whose sets the writer "forgets" to create: the kernel refuses the rules.
        var doc = exampleDocument
        doc.groups["db"]!.rules.append(Rule(id: "x", proto: .number(6), ports: 1...1, remote: .group("newgroup")))
        doc.groups["newgroup"] = Group(rules: [])
        doc.instances["web-2"]!.groups.append("newgroup")
        let forgetAll = IPTablesBackend(variant: v, netns: ns.name, ipset: DroppingWriter(netns: ns.name) { $0.contains("newgroup") })
        #expect(throws: IPTError.self) { try forgetAll.converge(to: Compiler.compile(doc)) }
        #expect(try Self.save(ns, v) == before4)
        #expect(try Self.save(ns, v, v6: true) == before6)
        #expect(try ns.run(["ipset", "save"], check: true).stdout == sets)
        // Only the IPv6 set is missing: IPv4 commits, IPv6 is refused, IPv4 is rolled back.
        let forgetV6 = IPTablesBackend(variant: v, netns: ns.name, ipset: DroppingWriter(netns: ns.name) { $0.contains("rp6-newgroup") })
        #expect(throws: IPTError.self) { try forgetV6.converge(to: Compiler.compile(doc)) }
        #expect(try Self.save(ns, v) == before4)
        #expect(try Self.save(ns, v, v6: true) == before6)
        #expect(try ns.run(["ipset", "save"], check: true).stdout == sets)
    }

    /// The incremental path: the Engine's Plans committed against the mirror. A membership
    /// change is an ipset delta only (in-process, no rule written); a rules change rewrites the
    /// group's chains only; the result always equals what a full converge would write.
    /// Bridged (with a guarded prefix), the ebtables chains follow plugs and unplugs too.
    @Test(arguments: [(IPTablesVariant.legacy, IPTTopology.routed), (.nft, .routed), (.nft, .bridged)])
    func enginePlansAreIncremental(_ v: IPTablesVariant, _ topology: IPTTopology) throws {
        let ns = try TestNamespace(prefix: "ipt")
        let backend = IPTablesBackend(variant: v, topology: topology, netns: ns.name)
        let bridged = topology == .bridged
        if bridged { backend.guardedOverride = ["tap"] }
        #expect(backend.ipset is LibIPSetWriter)
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        func matchesFullRender(sourceLocation: SourceLocation = #_sourceLocation) throws {
            let want = try IPTRender.state(engine.planned, topology: topology, guarded: backend.guardedOverride)
            let got = try backend.readBack()
            #expect(got.v4.canonical == want.v4.canonical && got.v6.canonical == want.v6.canonical && got.sets == want.sets && got.eb == want.eb,
                    sourceLocation: sourceLocation)
            #expect(try backend.pending(to: engine.planned).isEmpty, sourceLocation: sourceLocation)
        }
        try matchesFullRender()
        let rulesBefore = try Self.save(ns, v)
        let web3 = Instance(host: "hv2", groups: ["web"], ips: [IPAddress("10.0.5.5")!, IPAddress("fd00::55")!])
        try backend.commit(try engine.membersChanged(group: "web", added: ["web-3": web3]), result: engine.planned)
        let m = backend.lastChange
        #expect(m.restore4 == nil && m.restore6 == nil && m.membersAdded == 2)
        #expect(try Self.save(ns, v) == rulesBefore)
        try matchesFullRender()
        var rules = exampleDocument.groups["db"]!.rules
        rules[0].ports = 6432...6432
        // Counts are per family: rp-gi-db of iptables and of ip6tables.
        try backend.commit(try engine.rulesChanged(group: "db", rules: rules), result: engine.planned)
        let r = backend.lastChange
        #expect(r.chainsRewritten == 2 && r.chainsCreated == 0 && r.ipsetBefore.isEmpty, "\(r.summary)")
        try matchesFullRender()
        try backend.commit(try engine.instancePlugged(id: "web-9", instance: Instance(host: "hv1", groups: ["web"], ips: [IPAddress("10.0.1.19")!], interface: "tapweb9")), result: engine.planned)
        let p = backend.lastChange
        // Its address is a member of rp-src4, its dispatch rules are appended to rp-is-in,
        // rp-is-out, rp-from and rp-to (both families) and rp-related (IPv4); no fixed chain is
        // rewritten.
        if bridged {
            // Bridged: no interface sets; the port tests (rp-is-in, rp-is-out, rp-spoof) are
            // patched, the ARP chain (and the host → port guard) rewritten.
            #expect(p.chainsCreated == 4 && p.membersAdded == 1 && p.restoreEB != nil, "\(p.summary)")
            // Before conntrack: its address appended to rp-pre-src, nothing rewritten there.
            let raw = p.restoreRaw4 ?? ""
            #expect(raw.contains("-A rp-pre-src -s 10.0.1.19/32 -m physdev --physdev-in tapweb9 -g rp-pre-mark\n") && !raw.contains("\n:"), "\(raw)")
        } else {
            // … and rp-related, of the family it has an address in; the raw tables'
            // RAMPART-PRE (no guarded prefix covers tapweb9) gain its interface.
            #expect(p.chainsCreated == 4 && p.membersAdded == 2 && p.chainsRewritten == 0 && p.chainsPatched == 11 && p.restoreEB == nil, "\(p.summary)")
            #expect(p.restoreRaw4?.contains("-A RAMPART-PRE -i tapweb9 -g rp-pre-chk\n") == true, "\(p.text)")
        }
        try matchesFullRender()
        // Another plug, then unplugging the earlier one: its dispatch rules are deleted by
        // position from the middle of the dispatch chains.
        try backend.commit(try engine.instancePlugged(id: "web-8", instance: Instance(host: "hv1", groups: ["db"], ips: [IPAddress("10.0.1.18")!], interface: "tapweb8")), result: engine.planned)
        try backend.commit(try engine.instanceUnplugged(id: "web-9"), result: engine.planned)
        try matchesFullRender()
        try backend.commit(try engine.instanceUnplugged(id: "db-1"), result: engine.planned)
        try matchesFullRender()
        if !bridged {
            #expect(try Self.cli(ns, v, ["diff", "-"], input: try String(contentsOfFile: examplePath, encoding: .utf8)).status == 0)
        }
    }
}

/// The tightened layout with real packets, per variant and topology, through the library (the
/// guarded prefixes are given to the backend directly).
@Suite("iptables backend: guarded prefixes, ebtables", .serialized, .tags(.kernel), .rootOnly) struct IPTablesGuardTests {
    static let spec = TopologySpec(
        instances: [
            InstanceSpec(name: "web-1", interface: "tapweb1", addresses: ["10.0.1.11", "fd00::11"], mac: "02:00:00:00:01:11"),
            InstanceSpec(name: "rogue", interface: "taprogue", addresses: ["10.0.7.77", "fd00::77"]),
        ],
        outside: [OutsideHostSpec(name: "internet", addresses: ["192.0.2.10", "2001:db8::10"])])

    static let document = try! Document.parse(json: Data(#"""
        {"version": 1, "host": "hv1",
         "groups": {"open": {"rules": [
            {"protocol": "any", "cidr": "0.0.0.0/0"}, {"protocol": "any", "cidr": "::/0"},
            {"direction": "egress", "protocol": "any", "cidr": "0.0.0.0/0"}, {"direction": "egress", "protocol": "any", "cidr": "::/0"}]}},
         "instances": {
          "web-1": {"host": "hv1", "interface": "tapweb1", "ips": ["10.0.1.11", "fd00::11"], "mac": "02:00:00:00:01:11", "groups": ["open"]}}}
        """#.utf8))

    static let cases: [(IPTablesVariant, IPTTopology)] = [(.legacy, .routed), (.nft, .routed), (.legacy, .bridged), (.nft, .bridged)]

    /// taprogue is no instance's: untouched without guarded prefixes; with `tap` it passes
    /// nothing, either way, established connections included, while web-1 (also `tap…`) works.
    /// Flushing removes every chain, set and ebtables chain again.
    @Test(arguments: cases) func unknownDevicesAreClosed(_ v: IPTablesVariant, _ topology: IPTTopology) throws {
        var spec = Self.spec
        spec.bridged = topology == .bridged
        let topo = try HypervisorTopology(spec)
        defer { topo.destroy() }
        let hv = topo.hypervisor
        let backend = IPTablesBackend(variant: v, topology: topology, netns: hv.name)
        let ir = Compiler.compile(Self.document)
        try backend.converge(to: ir)
        func rogue(_ pass: Bool) -> [(Probe, Bool)] {
            let t = pass ? 1.0 : 0.4
            return [
                (.tcp(from: "rogue", to: "192.0.2.10", port: 80, timeout: t), pass), (.tcp(from: "internet", to: "10.0.7.77", port: 80, timeout: t), pass),
                (.tcp(from: "internet", to: "fd00::77", port: 80, timeout: t), pass), (.tcp(from: "rogue", to: "10.255.0.1", port: 8080, timeout: t), pass),
                (.tcp(from: "hv", to: "10.0.7.77", port: 80, timeout: t), pass), (.tcp(from: "web-1", to: "10.0.7.77", port: 80, timeout: t), pass),
                (.tcp(from: "hv", to: "fd00::77", port: 80, timeout: t), pass),
            ]
        }
        let web: [(Probe, Bool)] = [
            (.tcp(from: "web-1", to: "192.0.2.10", port: 80), true), (.tcp(from: "internet", to: "fd00::11", port: 80), true),
            (.tcp(from: "hv", to: "10.0.1.11", port: 80), true), (.tcp(from: "web-1", to: "10.255.0.1", port: 8080), true),
        ]
        func expect(_ cases: [(Probe, Bool)], sourceLocation: SourceLocation = #_sourceLocation) throws {
            let r = try topo.probe(cases.map(\.0))
            let wrong = zip(r, cases).filter { $0.passed != $1.1 }.map { "\($0.0.probe) \($0.0.passed ? "passed" : "dropped")" }
            #expect(wrong.isEmpty, "\(v) \(topology): \(wrong)", sourceLocation: sourceLocation)
        }
        try expect(rogue(true) + web)
        let early = try topo.openTCPSession(from: "rogue", to: "192.0.2.10", port: 90)
        let inbound = try topo.openTCPSession(from: "internet", to: "10.0.7.77", port: 91)
        #expect(early.exchange() && inbound.exchange())

        backend.guardedOverride = ["tap"]
        let c = try backend.converge(to: ir)
        #expect(!c.isEmpty)
        try expect(rogue(false) + web)
        #expect(!early.exchange(timeout: 0.5) && !inbound.exchange(timeout: 0.5))
        // Re-applying changes nothing: every rule (u32, hl, physdev, ebtables) reads back as written.
        let again = try backend.pending(to: ir)
        #expect(again.isEmpty, "\(again.text)")
        if topology == .bridged {
            let eb = try hv.run(["ebtables-nft-save", "-t", "nat"], check: true).stdout
            #expect(eb.contains("-A PREROUTING -j RAMPART-L2") && eb.contains("-A RAMPART-L2 -i tap+ -j DROP") && eb.contains("-A RAMPART-EBOUT -p IPv4 -o tap+ -j DROP"), "\(eb)")
        }

        try backend.converge(to: nil)
        let left = try hv.run(["iptables-\(v.rawValue)-save"], check: true).stdout + (try hv.run(["ip6tables-\(v.rawValue)-save"], check: true).stdout)
            + (try hv.run(["ebtables-nft-save"], check: true).stdout) + (try hv.run(["ipset", "list", "-n"], check: true).stdout)
        #expect(!left.contains("rp-") && !left.contains("RAMPART"), "\(left)")
        try expect(rogue(true) + web)
    }
}

/// An ipset writer that silently drops some commands (to make the kernel refuse the rules).
final class DroppingWriter: IPSetWriter {
    let inner: ProcessIPSetWriter
    let drop: (String) -> Bool
    var kind: String { "dropping" }
    init(netns: String, drop: @escaping (String) -> Bool) {
        inner = ProcessIPSetWriter(netns: netns)
        self.drop = drop
    }
    func apply(_ lines: [String]) throws { try inner.apply(lines.filter { !drop($0) }) }
}
