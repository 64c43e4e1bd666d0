import Foundation
import Testing
import RampartCore

/// The public validators (`Validate`, `RuleFields`, `Rule.parseList`) and the one JSON writer,
/// as a controller, the store or the CLI uses them: without building a document.
@Suite struct ValidatorTests {
    func lines(_ issues: [ValidationIssue]) -> [String] { issues.sorted().map(\.description) }

    func lines<T>(_ r: Result<T, ValidationIssue>) -> [String] {
        if case .failure(let i) = r { return [i.description] }
        return []
    }

    @Test func idsAndHosts() {
        #expect(Validate.id("web-1.a_b:c", at: "groups.web-1.a_b:c") == [])
        #expect(lines(Validate.id("bad id", at: "groups.x")) == [#"groups.x: "bad id" is not a valid id (1-64 characters of A-Z a-z 0-9 . _ : -)"#])
        #expect(Validate.id(String(repeating: "a", count: 64), at: "") == [])
        #expect(Validate.id(String(repeating: "a", count: 65), at: "").count == 1)
        #expect(lines(Validate.id("", at: "")).count == 1)
        #expect(lines(Validate.host("", at: "host")) == ["host: must not be empty"])
        #expect(lines(Validate.host("h/1", at: "instances.a.host")) == [#"instances.a.host: "h/1" is not a valid host (1-64 characters of A-Z a-z 0-9 . _ : -)"#])
    }

    @Test func interfacesAndGuardedPrefixes() {
        #expect(Validate.interface("tapweb1", at: "i") == [])
        #expect(lines(Validate.interface("lo", at: "instances.a.interface"))
            == [#"instances.a.interface: "lo" is not a valid interface name: the loopback device is never an instance's"#])
        #expect(lines(Validate.interface("tap+", at: "x")) == [#"x: "tap+" is not a valid interface name: contains '+' (a wildcard to iptables and nft)"#])
        #expect(lines(Validate.interface("a-very-long-name", at: "x")) == [#"x: "a-very-long-name" is not a valid interface name: 16 bytes long; at most 15"#])
        #expect(Validate.guardedPrefix("tap", at: "guarded_prefixes[0]") == [])
        #expect(lines(Validate.guardedPrefix("l", at: "guarded_prefixes[1]")) == [#"guarded_prefixes[1]: "l" would guard the loopback device lo"#])
        #expect(lines(Validate.guardedPrefix("", at: "g")) == [#"g: "" is not a valid interface-name prefix: empty"#])
    }

    @Test func instanceAddressesAndMACs() {
        #expect(lines(Validate.parseInstanceAddress("10.0.0.1", at: "ips[0]")) == [])
        #expect(lines(Validate.parseInstanceAddress("fd00::1", at: "ips[0]")) == [])
        #expect(lines(Validate.parseInstanceAddress("nope", at: "ips[0]")) == [#"ips[0]: "nope" is not an IPv4 or IPv6 address"#])
        #expect(lines(Validate.parseInstanceAddress("127.0.0.2", at: "ips[1]")) == ["ips[1]: 127.0.0.2 is a loopback address (127.0.0.0/8), never an instance's own"])
        #expect(lines(Validate.instanceAddress(IPAddress("fe80::1")!, at: "a")) == ["a: fe80::1 is a link-local address (fe80::/10), never an instance's own"])
        #expect(lines(Validate.instanceAddress(IPAddress("::ffff:10.0.0.1")!, at: "a")).count == 1)
        #expect(lines(Validate.parseMAC("02:00:00:00:01:11", at: "mac")) == [])
        #expect(lines(Validate.parseMAC("02:00:00:00:01", at: "mac")) == [#"mac: "02:00:00:00:01" is not a MAC address like aa:bb:cc:dd:ee:ff"#])
    }

    /// The MAC parser reads bytes: exactly six pairs of ASCII hex digits (either case) joined
    /// by colons, nothing before or after.
    @Test func macAddressesParseExactly() {
        #expect(MACAddress("02:aB:Cd:eF:00:9f")?.raw == 0x02ab_cdef_009f)
        #expect(MACAddress("ff:ff:ff:ff:ff:ff")?.raw == 0xffff_ffff_ffff)
        #expect(MACAddress("02:00:00:00:01:11")?.description == "02:00:00:00:01:11")
        for bad in ["", "02:00:00:00:01", "02:00:00:00:01:1", "02:00:00:00:01:111", "02:00:00:00:01:11:", ":02:00:00:00:01:11",
                    "02-00-00-00-01-11", "0200.0000.0111", "02:00:00:00:01:1g", "2:00:00:00:01:111", "02::00:00:00:01:11",
                    "02:00:00:00:01:1\u{0}", "０2:00:00:00:01:11", "02:00:00:00:01:1\u{301}", " 02:00:00:00:01:11"] {
            #expect(MACAddress(bad) == nil, "\(bad.debugDescription)")
        }
    }

    @Test func instancesAtAnyPath() {
        let ok = Instance(host: "hv1", groups: ["web"], ips: [IPAddress("10.0.0.1")!], interface: "tap1")
        #expect(Validate.instance(ok, id: "web-1", at: "instances.web-1", thisHost: "hv1") == [])
        let bad = Instance(host: "hv1", groups: ["web", "nope"], ips: [], interface: nil)
        #expect(lines(Validate.instance(bad, id: "bad id", at: "", thisHost: "hv1") { $0 == "web" }) == [
            #""bad id" is not a valid id (1-64 characters of A-Z a-z 0-9 . _ : -)"#,
            #"groups[1]: unknown group "nope""#,
            "interface: missing; required for an instance on this host (hv1)",
            "ips: needs at least one address",
        ])
        // No host is this one: no interface is required.
        #expect(lines(Validate.instance(bad, id: "x", at: "instances.x", thisHost: nil)) == ["instances.x.ips: needs at least one address"])
    }

    @Test func rulesCrossFieldAndRanges() {
        let icmpPorts = Rule(proto: .icmp, ports: 80...80, remote: .cidr(.v4(IPv4Prefix(address: IPv4Address(raw: 0), length: 0))))
        #expect(lines(Validate.rule(icmpPorts, at: "groups.web.rules[0]")) == ["groups.web.rules[0].ports: not allowed with protocol icmp (only tcp, udp, sctp)"])
        #expect(lines(Validate.rule(Rule(proto: .tcp, ports: 0...5, remote: .group("web")), at: "r")) == ["r.ports: 0 is out of range 1-65535"])
        #expect(lines(Validate.rule(Rule(proto: .number(0), remote: .group("web")), at: "r")) == [#"r.protocol: 0 is ambiguous; write "any""#])
        #expect(lines(Validate.rule(Rule(proto: .tcp, remote: .group("db")), at: "r") { $0 == "web" }) == [#"r.group: unknown group "db""#])
        #expect(Validate.rule(Rule(proto: .tcp, remote: .group("db")), at: "r") == [])
        #expect(lines(Validate.rule(Rule(proto: .icmpv6, remote: .group("db"), ethertype: .ipv4), at: "")) == ["protocol: icmpv6 cannot match with ethertype ipv4"])
    }

    @Test func ruleFieldsGiveTheTypedRule() throws {
        let r = try RuleFields(id: "http", protocol: "tcp", ports: "80-81", cidr: "10.0.0.0/8").rule().get()
        #expect(r == Rule(id: "http", proto: .tcp, ports: 80...81, remote: .cidr(.v4(IPv4Prefix(address: IPv4Address("10.0.0.0")!, length: 8)))))
        #expect(try RuleFields(direction: "egress", protocol: "47", group: "gre").rule().get()
            == Rule(direction: .egress, proto: .number(47), remote: .group("gre")))
        #expect(try RuleFields(protocol: "icmp", icmpType: 8, icmpCode: 0, group: "web").rule().get()
            == Rule(proto: .icmp, icmpType: 8, icmpCode: 0, remote: .group("web")))
        // A rule given as fields is the rule the same JSON gives.
        let json = #"{"id":"x","direction":"egress","protocol":"udp","ports":"53","cidr":"fd00::/8","ethertype":"ipv6"}"#
        let parsed = try Rule.parseList(json: "[" + json + "]", at: "rules", groupExists: { _ in true })
        #expect(parsed == [try RuleFields(id: "x", direction: "egress", protocol: "udp", ports: "53", cidr: "fd00::/8", ethertype: "ipv6").rule().get()])
    }

    @Test func ruleFieldsReportEveryIssueWithItsField() {
        func issues(_ f: RuleFields, at path: String = "") -> [String] {
            if case .failure(let e) = f.rule(at: path) { return e.issues.map(\.description) }
            return []
        }
        #expect(issues(RuleFields(direction: "up", protocol: "icmp", ports: "80", cidr: "10.0.0.1/8")) == [
            "cidr: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8",
            #"direction: "up" is not "ingress" or "egress""#,
            "ports: not allowed with protocol icmp (only tcp, udp, sctp)",
        ])
        #expect(issues(RuleFields(cidr: "0.0.0.0/0"), at: "groups.web.rules[2]") == ["groups.web.rules[2].protocol: missing required key"])
        #expect(issues(RuleFields(protocol: "0", group: "g")) == [#"protocol: 0 is ambiguous; write "any""#])
        #expect(issues(RuleFields(protocol: "256", group: "g")) == ["protocol: 256 is out of range 0-255"])
        #expect(issues(RuleFields(protocol: "99999999999999999999999", group: "g")) == ["protocol: 99999999999999999999999 is out of range 0-255"])
        #expect(issues(RuleFields(protocol: "+6", group: "g")) == [#"protocol: "+6" is not one of tcp, udp, sctp, icmp, icmpv6, any, or a number 1-255"#])
        #expect(issues(RuleFields(protocol: "tcp", ports: "0-5", group: "g")) == ["ports: 0 is out of range 1-65535"])
        #expect(issues(RuleFields(protocol: "icmp", icmpType: 300, icmpCode: -1, group: "g")) == ["icmp_code: -1 is out of range 0-255", "icmp_type: 300 is out of range 0-255"])
        #expect(issues(RuleFields(protocol: "icmp", icmpCode: 0, group: "g")) == ["icmp_code: only allowed together with icmp_type"])
        #expect(issues(RuleFields(protocol: "tcp")) == ["needs one of cidr or group"])
        #expect(issues(RuleFields(protocol: "tcp", cidr: "0.0.0.0/0", group: "g")) == ["cidr and group are mutually exclusive"])
        #expect(issues(RuleFields(protocol: "tcp", group: "bad id")) == [#"group: "bad id" is not a valid id (1-64 characters of A-Z a-z 0-9 . _ : -)"#])
        #expect(issues(RuleFields(protocol: "tcp", cidr: "::/0", ethertype: "ipv4")) == ["ethertype: ipv4 contradicts cidr ::/0"])
        #expect(issues(RuleFields(protocol: "tcp", cidr: "::/0", ethertype: "ip")) == [#"ethertype: "ip" is not "ipv4" or "ipv6""#])
    }

    @Test func rulesArraysParseWithoutADocument() throws {
        let rules = try Rule.parseList(json: #"[{"protocol":"tcp","ports":"22","group":"admin"},{"protocol":"any","cidr":"::/0"}]"#,
                                       at: "groups.web.rules", groupExists: { $0 == "admin" })
        #expect(rules.count == 2 && rules[0].remote == .group("admin"))
        #expect(try Rule.parseList(json: "[]", at: "r", groupExists: { _ in false }) == [])
        func issues(_ json: String) -> [String] {
            do { _ = try Rule.parseList(json: json, at: "groups.web.rules", groupExists: { $0 == "admin" }); return [] } catch { return error.issues.map(\.description) }
        }
        #expect(issues(#"[{"protocol":"tcp","group":"db"},{"protocol":"tcp","ports":"99999","cidr":"0.0.0.0/0"}]"#) == [
            #"groups.web.rules[0].group: unknown group "db""#,
            "groups.web.rules[1].ports: 99999 is out of range 1-65535",
        ])
        #expect(issues("{}") == ["groups.web.rules: expected an array, got an object"])
        #expect(issues("[").first?.hasPrefix("groups.web.rules: not valid JSON at byte") == true)
        #expect(issues(#"[{"protocol":"tcp","cidr":"0.0.0.0/0","extra":1}]"#) == ["groups.web.rules[0].extra: unknown key"])
    }
}

/// Everything Rampart writes as JSON goes through `RampartJSON`: one spelling.
@Suite struct JSONWriterTests {
    @Test func documentsAreWrittenWithSortedKeysAndUnescapedSlashes() throws {
        var d = Document(host: "hv1", guardedPrefixes: ["tap"])
        d.groups["web"] = Group(description: "front \"door\"\n", rules: [
            Rule(id: "http", proto: .tcp, ports: 80...80, remote: .cidr(.v4(IPv4Prefix(address: IPv4Address("10.0.0.0")!, length: 8)))),
            Rule(direction: .egress, proto: .number(47), icmpType: nil, remote: .group("web"), ethertype: .ipv6),
        ])
        d.instances["web-1"] = Instance(host: "hv1", groups: ["web"], ips: [IPAddress("10.0.0.1")!, IPAddress("fd00::1")!],
                                        interface: "tap1", mac: MACAddress("02:00:00:00:01:11"))
        #expect(d.jsonText() == """
            {"groups":{"web":{"description":"front \\"door\\"\\n","rules":[{"cidr":"10.0.0.0/8","direction":"ingress","id":"http","ports":"80","protocol":"tcp"},\
            {"direction":"egress","ethertype":"ipv6","group":"web","protocol":47}]}},"guarded_prefixes":["tap"],"host":"hv1",\
            "instances":{"web-1":{"groups":["web"],"host":"hv1","interface":"tap1","ips":["10.0.0.1","fd00::1"],"mac":"02:00:00:00:01:11"}},"version":1}
            """)
        #expect(try Document.parse(json: d.jsonText()) == d)
        #expect(Rule.jsonText(d.groups["web"]!.rules) == "[" + d.groups["web"]!.rules.map { $0.jsonText() }.joined(separator: ",") + "]")
        #expect(try RampartJSON.text(d) == d.jsonText())
    }

    @Test func stringsEscapeQuotesBackslashesAndControls() {
        #expect(jsonString("a\"b\\c\n\u{1}é/") == #""a\"b\\c\n\u0001é/""#)
        #expect(jsonString("") == #""""#)
    }
}
