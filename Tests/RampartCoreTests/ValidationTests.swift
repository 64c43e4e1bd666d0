import Foundation
import Testing
@testable import RampartCore

/// Builds a document around the given group/instance JSON fragments and returns the error lines.
func errors(_ json: String) -> [String] {
    do {
        _ = try Document.parse(json: json)
        return []
    } catch {
        return error.issues.map(\.description)
    }
}

/// A valid base document: one group, one local instance; tests splice a fragment into it.
func doc(groups: String = #""web": {"rules": []}"#, instances: String = #""web-1": {"host": "hv1", "interface": "tap1", "ips": ["10.0.0.1"], "groups": ["web"]}"#) -> String {
    #"{"version": 1, "host": "hv1", "groups": {\#(groups)}, "instances": {\#(instances)}}"#
}

func rule(_ body: String) -> String { doc(groups: #""web": {"rules": [{"protocol": "tcp", "cidr": "0.0.0.0/0"}, \#(body)]}"#) }

@Suite struct ValidationTests {
    @Test func exampleIsValid() throws {
        let d = try Document.parse(json: Data(contentsOf: twoTierURL))
        #expect(d.host == "hv1")
        #expect(d.groups.count == 3)
        #expect(d.instances["web-1"]?.mac == MACAddress("02:00:00:00:01:11"))
        #expect(d.groups["web"]?.rules[3].remote == .group("admin"))
        try d.validate()
    }

    @Test func baseDocumentIsValid() {
        #expect(errors(doc()) == [])
    }

    @Test func syntax() {
        #expect(errors("{").first?.hasPrefix("not valid JSON at byte") == true)
        #expect(errors("[]") == ["expected an object, got an array"])
    }

    @Test func topLevel() {
        #expect(errors(#"{"version": 1, "host": "hv1", "groups": {}}"#) == ["instances: missing required key"])
        #expect(errors(#"{"version": 2, "host": "hv1", "groups": {}, "instances": {}}"#) == ["version: 2 is not supported; expected 1"])
        #expect(errors(#"{"version": "1", "host": "hv1", "groups": {}, "instances": {}}"#) == ["version: expected the number 1, got a string"])
        #expect(errors(#"{"version": 1.0, "host": "hv1", "groups": {}, "instances": {}}"#) == ["version: 1.0 is not supported; expected 1"])
        #expect(errors(#"{"version": 1, "host": "", "groups": {}, "instances": {}}"#) == ["host: must not be empty"])
        #expect(errors(#"{"version": 1, "host": "hv1", "groups": {}, "instances": {}, "extra": 1}"#) == ["extra: unknown key"])
        #expect(errors(#"{"version": 1, "host": "hv1", "host": "hv2", "groups": {}, "instances": {}}"#) == ["host: duplicate key"])
        #expect(errors(#"{"version": 1, "host": 5, "groups": [], "instances": {}}"#) == ["groups: expected an object, got an array", "host: expected a string, got a number"])
    }

    @Test func ids() {
        #expect(errors(doc(groups: #""web": {"rules": []}, "bad id": {"rules": []}"#))
            == [#"groups.bad id: "bad id" is not a valid id (1-64 characters of A-Z a-z 0-9 . _ : -)"#])
        let long = String(repeating: "a", count: 65)
        #expect(errors(doc(groups: #""web": {"rules": []}, "\#(long)": {"rules": []}"#)).count == 1)
        let max = String(repeating: "a", count: 64)
        #expect(errors(doc(groups: #""web": {"rules": []}, "\#(max)": {"rules": []}, "a.b_c:d-1": {"rules": []}"#)) == [])
    }

    @Test func groupKeys() {
        #expect(errors(doc(groups: #""web": {}"#)) == ["groups.web.rules: missing required key"])
        #expect(errors(doc(groups: #""web": {"rules": [], "descr": "x"}"#)) == ["groups.web.descr: unknown key"])
        #expect(errors(doc(groups: #""web": {"rules": {}}"#)) == ["groups.web.rules: expected an array, got an object"])
        let d = String(repeating: "x", count: 256)
        #expect(errors(doc(groups: #""web": {"rules": [], "description": "\#(d)"}"#)) == ["groups.web.description: 256 characters long; at most 255"])
    }

    @Test func ruleKeys() {
        #expect(errors(rule(#"{"prot": "tcp", "cidr": "0.0.0.0/0"}"#)) == ["groups.web.rules[1].prot: unknown key", "groups.web.rules[1].protocol: missing required key"])
        #expect(errors(rule(#"{"protocol": "tcp"}"#)) == ["groups.web.rules[1]: needs one of cidr or group"])
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": "10.0.0.0/8", "group": "web"}"#)) == ["groups.web.rules[1]: cidr and group are mutually exclusive"])
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": "0.0.0.0/0", "direction": "in"}"#)) == [#"groups.web.rules[1].direction: "in" is not "ingress" or "egress""#])
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": "0.0.0.0/0", "id": 3}"#)) == ["groups.web.rules[1].id: expected a string, got a number"])
    }

    @Test func protocols() {
        #expect(errors(rule(#"{"protocol": 0, "cidr": "0.0.0.0/0"}"#)) == [#"groups.web.rules[1].protocol: 0 is ambiguous; write "any""#])
        #expect(errors(rule(#"{"protocol": 256, "cidr": "0.0.0.0/0"}"#)) == ["groups.web.rules[1].protocol: 256 is out of range 0-255"])
        #expect(errors(rule(#"{"protocol": "tcpp", "cidr": "0.0.0.0/0"}"#)) == [#"groups.web.rules[1].protocol: "tcpp" is not one of tcp, udp, sctp, icmp, icmpv6, any, or a number 1-255"#])
        #expect(errors(rule(#"{"protocol": true, "cidr": "0.0.0.0/0"}"#)) == ["groups.web.rules[1].protocol: expected a string or an integer, got a boolean"])
        #expect(errors(rule(#"{"protocol": 47, "cidr": "0.0.0.0/0"}"#)) == [])
    }

    @Test func ports() {
        #expect(errors(rule(#"{"protocol": "tcp", "ports": "70000", "cidr": "0.0.0.0/0"}"#)) == ["groups.web.rules[1].ports: 70000 is out of range 1-65535"])
        #expect(errors(rule(#"{"protocol": "tcp", "ports": "0", "cidr": "0.0.0.0/0"}"#)) == ["groups.web.rules[1].ports: 0 is out of range 1-65535"])
        #expect(errors(rule(#"{"protocol": "tcp", "ports": "90-80", "cidr": "0.0.0.0/0"}"#)) == [#"groups.web.rules[1].ports: "90-80": 90 is greater than 80"#])
        #expect(errors(rule(#"{"protocol": "tcp", "ports": "http", "cidr": "0.0.0.0/0"}"#)) == [#"groups.web.rules[1].ports: "http" is not "N" or "N-M""#])
        #expect(errors(rule(#"{"protocol": "tcp", "ports": "+80", "cidr": "0.0.0.0/0"}"#)) == [#"groups.web.rules[1].ports: "+80" is not "N" or "N-M""#])
        #expect(errors(rule(#"{"protocol": "tcp", "ports": 80, "cidr": "0.0.0.0/0"}"#)) == ["groups.web.rules[1].ports: expected a string, got a number"])
        #expect(errors(rule(#"{"protocol": "icmp", "ports": "80", "cidr": "0.0.0.0/0"}"#)) == ["groups.web.rules[1].ports: not allowed with protocol icmp (only tcp, udp, sctp)"])
        #expect(errors(rule(#"{"protocol": "any", "ports": "80", "cidr": "0.0.0.0/0"}"#)) == ["groups.web.rules[1].ports: not allowed with protocol any (only tcp, udp, sctp)"])
        #expect(errors(rule(#"{"protocol": 17, "ports": "53", "cidr": "0.0.0.0/0"}"#)) == [])
        #expect(errors(rule(#"{"protocol": "sctp", "ports": "1-65535", "cidr": "0.0.0.0/0"}"#)) == [])
    }

    @Test func icmp() {
        #expect(errors(rule(#"{"protocol": "tcp", "icmp_type": 8, "cidr": "0.0.0.0/0"}"#)) == ["groups.web.rules[1].icmp_type: not allowed with protocol tcp (only icmp, icmpv6)"])
        #expect(errors(rule(#"{"protocol": "icmp", "icmp_code": 0, "cidr": "0.0.0.0/0"}"#)) == ["groups.web.rules[1].icmp_code: only allowed together with icmp_type"])
        #expect(errors(rule(#"{"protocol": "icmp", "icmp_type": 256, "cidr": "0.0.0.0/0"}"#)) == ["groups.web.rules[1].icmp_type: 256 is out of range 0-255"])
        #expect(errors(rule(#"{"protocol": "icmp", "icmp_type": 8.5, "cidr": "0.0.0.0/0"}"#)) == ["groups.web.rules[1].icmp_type: expected an integer, got 8.5"])
        #expect(errors(rule(#"{"protocol": "icmp", "cidr": "::/0"}"#)) == ["groups.web.rules[1].protocol: icmp cannot match the IPv6 remote ::/0"])
        #expect(errors(rule(#"{"protocol": "icmpv6", "cidr": "10.0.0.0/8"}"#)) == ["groups.web.rules[1].protocol: icmpv6 cannot match the IPv4 remote 10.0.0.0/8"])
        #expect(errors(rule(#"{"protocol": "icmp", "group": "web", "ethertype": "ipv6"}"#)) == ["groups.web.rules[1].protocol: icmp cannot match with ethertype ipv6"])
        #expect(errors(rule(#"{"protocol": "icmpv6", "icmp_type": 128, "icmp_code": 0, "group": "web"}"#)) == [])
    }

    @Test func remotes() {
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": "10.0.0.1/8"}"#)) == ["groups.web.rules[1].cidr: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8"])
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": "fd00::1/64"}"#)) == ["groups.web.rules[1].cidr: fd00::1/64 has host bits set; did you mean fd00::/64"])
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": "10.0.0.0/33"}"#)) == [#"groups.web.rules[1].cidr: "10.0.0.0/33": prefix length 33 is out of range 0-32"#])
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": "10.0.0/8"}"#)) == [#"groups.web.rules[1].cidr: "10.0.0/8" is not an IPv4 or IPv6 prefix"#])
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": "10.0.0.0/"}"#)) == [#"groups.web.rules[1].cidr: "10.0.0.0/" has an invalid prefix length"#])
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": "10.0.0.0/8", "ethertype": "ipv6"}"#)) == ["groups.web.rules[1].ethertype: ipv6 contradicts cidr 10.0.0.0/8"])
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": "10.0.0.0/8", "ethertype": "arp"}"#)) == [#"groups.web.rules[1].ethertype: "arp" is not "ipv4" or "ipv6""#])
        #expect(errors(rule(#"{"protocol": "tcp", "group": "admin"}"#)) == [#"groups.web.rules[1].group: unknown group "admin""#])
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": "10.1.2.3"}"#)) == [])
        #expect(errors(rule(#"{"protocol": "tcp", "group": "web", "ethertype": "ipv4"}"#)) == [])
    }

    @Test func instances() {
        func inst(_ body: String) -> [String] { errors(doc(instances: #""web-1": \#(body)"#)) }
        #expect(inst(#"{"host": "hv1", "interface": "tap1", "ips": ["10.0.0.1"]}"#) == ["instances.web-1.groups: missing required key"])
        #expect(inst(#"{"host": "hv1", "interface": "tap1", "ips": [], "groups": []}"#) == ["instances.web-1.ips: needs at least one address"])
        #expect(inst(#"{"host": "hv1", "interface": "tap1", "ips": ["10.0.0.300"], "groups": []}"#) == [#"instances.web-1.ips[0]: "10.0.0.300" is not an IPv4 or IPv6 address"#])
        #expect(inst(#"{"host": "hv1", "interface": "tap1", "ips": ["10.0.0.1/32"], "groups": []}"#) == [#"instances.web-1.ips[0]: "10.0.0.1/32" is not an IPv4 or IPv6 address"#])
        #expect(inst(#"{"host": "hv1", "ips": ["10.0.0.1"], "groups": []}"#) == ["instances.web-1.interface: missing; required for an instance on this host (hv1)"])
        #expect(inst(#"{"host": "hv2", "ips": ["10.0.0.1"], "groups": []}"#) == [])
        #expect(inst(#"{"host": "hv1", "interface": "tap1", "ips": ["10.0.0.1"], "groups": ["nope"]}"#) == [#"instances.web-1.groups[0]: unknown group "nope""#])
        #expect(inst(#"{"host": "hv1", "interface": "tap1", "ips": ["10.0.0.1"], "groups": [], "mac": "02:00:00:00:01"}"#) == [#"instances.web-1.mac: "02:00:00:00:01" is not a MAC address like aa:bb:cc:dd:ee:ff"#])
        #expect(inst(#"{"host": "hv1", "interface": "tap1", "ips": ["10.0.0.1"], "groups": [], "vlan": 3}"#) == ["instances.web-1.vlan: unknown key"])
    }

    @Test func interfaceNames() {
        func iface(_ name: String) -> [String] {
            errors(doc(instances: #""web-1": {"host": "hv1", "interface": "\#(name)", "ips": ["10.0.0.1"], "groups": []}"#))
        }
        #expect(iface("tap/1") == [#"instances.web-1.interface: "tap/1" is not a valid interface name: contains '/'"#])
        #expect(iface("tap:1") == [#"instances.web-1.interface: "tap:1" is not a valid interface name: contains ':'"#])
        #expect(iface("tap 1") == [#"instances.web-1.interface: "tap 1" is not a valid interface name: contains white space"#])
        #expect(iface("") == [#"instances.web-1.interface: "" is not a valid interface name: empty"#])
        #expect(iface("..") == [#"instances.web-1.interface: ".." is not a valid interface name: reserved"#])
        #expect(iface(".") == [#"instances.web-1.interface: "." is not a valid interface name: reserved"#])
        #expect(iface("0123456789abcdef") == [#"instances.web-1.interface: "0123456789abcdef" is not a valid interface name: 16 bytes long; at most 15"#])
        #expect(iface(#"tap\"x"#) == [#"instances.web-1.interface: "tap\"x" is not a valid interface name: contains a quote or backslash"#])
        #expect(iface(#"tap\u0001"#) == [#"instances.web-1.interface: "tap\u0001" is not a valid interface name: contains a control character"#])
        #expect(iface("tapé") == [#"instances.web-1.interface: "tapé" is not a valid interface name: contains a non-ASCII character"#])
        #expect(iface("0123456789abcde") == [])
        #expect(iface("veth-a.b_c") == [])
    }

    @Test func uniquenessOnThisHost() {
        let two = #""a": {"host": "hv1", "interface": "tap1", "ips": ["10.0.0.1"], "groups": []}, "b": {"host": "hv1", "interface": "tap1", "ips": ["10.0.0.1"], "groups": []}"#
        #expect(errors(doc(instances: two)) == [#"instances.b.interface: "tap1" is already used by instance a"#, "instances.b.ips[0]: 10.0.0.1 is already used by instance a"])
        // Elsewhere, the same address is not this host's problem.
        let remote = #""a": {"host": "hv1", "interface": "tap1", "ips": ["10.0.0.1"], "groups": []}, "b": {"host": "hv2", "interface": "tap1", "ips": ["10.0.0.1"], "groups": []}"#
        #expect(errors(doc(instances: remote)) == [])
    }

    @Test func severalErrorsAtOnceSortedByPath() {
        let json = doc(groups: #""web": {"rules": [{"protocol": "tcp", "ports": "70000", "cidr": "10.0.0.1/8"}, {"prot": 1}]}"#,
                       instances: #""z": {"host": "hv1", "ips": ["x"], "groups": ["nope"]}"#)
        #expect(errors(json) == [
            "groups.web.rules[0].cidr: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8",
            "groups.web.rules[0].ports: 70000 is out of range 1-65535",
            "groups.web.rules[1]: needs one of cidr or group",
            "groups.web.rules[1].prot: unknown key",
            "groups.web.rules[1].protocol: missing required key",
            #"instances.z.groups[0]: unknown group "nope""#,
            "instances.z.interface: missing; required for an instance on this host (hv1)",
            #"instances.z.ips[0]: "x" is not an IPv4 or IPv6 address"#,
        ])
        do {
            _ = try Document.parse(json: json)
            Issue.record("accepted an invalid document")
        } catch {
            #expect(error.description.hasPrefix("invalid document (8 errors):\n  groups.web.rules[0].cidr"))
        }
    }

    @Test func typedValidationMatchesParser() {
        var d = Document(host: "hv1", groups: ["web": Group(rules: [Rule(proto: .number(0), ports: 0...5, remote: .group("x"))])],
                         instances: ["a": Instance(host: "hv1", groups: ["web"], ips: [])])
        #expect(d.issues().map(\.description) == [
            #"groups.web.rules[0].group: unknown group "x""#,
            "groups.web.rules[0].ports: 0 is out of range 1-65535",
            #"groups.web.rules[0].ports: not allowed with protocol 0 (only tcp, udp, sctp)"#,
            #"groups.web.rules[0].protocol: 0 is ambiguous; write "any""#,
            "instances.a.interface: missing; required for an instance on this host (hv1)",
            "instances.a.ips: needs at least one address",
        ])
        d.groups["web"]!.rules = []
        d.instances["a"] = Instance(host: "hv1", groups: ["web"], ips: [IPAddress("10.0.0.1")!], interface: "tap0")
        #expect(d.issues() == [])
    }

    @Test func typesAndShapes() {
        func inst(_ body: String) -> [String] { errors(doc(instances: #""web-1": \#(body)"#)) }
        #expect(inst(#"{"interface": "tap1", "ips": ["10.0.0.1"], "groups": []}"#) == ["instances.web-1.host: missing required key"])
        #expect(inst(#"{"host": ["hv1"], "ips": ["10.0.0.1"], "groups": []}"#) == ["instances.web-1.host: expected a string, got an array"])
        #expect(inst(#"{"host": "hv2", "ips": "10.0.0.1", "groups": "web"}"#) == ["instances.web-1.groups: expected an array, got a string", "instances.web-1.ips: expected an array, got a string"])
        #expect(inst(#"{"host": "hv2", "ips": [1], "groups": [null]}"#) == ["instances.web-1.groups[0]: expected a string, got null", "instances.web-1.ips[0]: expected a string, got a number"])
        #expect(inst(#"{"host": "hv1", "interface": 7, "ips": ["10.0.0.1"], "groups": []}"#) == ["instances.web-1.interface: expected a string, got a number"])
        #expect(inst(#"{"host": "hv2", "interface": "a/b", "ips": ["10.0.0.1"], "groups": []}"#) == [#"instances.web-1.interface: "a/b" is not a valid interface name: contains '/'"#])
        #expect(inst(#""web""#) == ["instances.web-1: expected an object, got a string"])
        #expect(errors(doc(instances: #""web 1": {"host": "hv2", "ips": ["10.0.0.1"], "groups": []}"#)) == [#"instances.web 1: "web 1" is not a valid id (1-64 characters of A-Z a-z 0-9 . _ : -)"#])
        #expect(errors(doc(groups: #""web": {"rules": []}, "web": {"rules": []}"#)) == ["groups.web: duplicate key"])
        #expect(errors(doc(groups: #""web": {"rules": [], "description": 5}"#)) == ["groups.web.description: expected a string, got a number"])
        #expect(errors(doc(groups: #""web": {"rules": ["tcp"]}"#)) == ["groups.web.rules[0]: expected an object, got a string"])
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": 10}"#)) == ["groups.web.rules[1].cidr: expected a string, got a number"])
        #expect(errors(rule(#"{"protocol": "tcp", "group": "bad id"}"#)) == [#"groups.web.rules[1].group: "bad id" is not a valid id (1-64 characters of A-Z a-z 0-9 . _ : -)"#])
        #expect(errors(rule(#"{"protocol": "icmp", "icmp_type": 3, "icmp_code": -1, "cidr": "0.0.0.0/0"}"#)) == ["groups.web.rules[1].icmp_code: -1 is out of range 0-255"])
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": "0.0.0.0/0", "ethertype": "ipv4", "direction": "egress", "id": "x"}"#)) == [])
        #expect(errors(rule(#"{"protocol": 99999999999999999999999, "cidr": "0.0.0.0/0"}"#)) == ["groups.web.rules[1].protocol: 99999999999999999999999 is out of range 0-255"])
    }

    @Test func parsedValues() throws {
        let d = try Document.parse(json: rule(#"{"id": "r", "direction": "egress", "protocol": "udp", "ports": "53-54", "cidr": "fd00::/8"}"#))
        let r = d.groups["web"]!.rules[1]
        #expect(r == Rule(id: "r", direction: .egress, proto: .udp, ports: 53...54, remote: .cidr(.v6(IPv6Prefix(address: IPv6Address("fd00::")!, length: 8)))))
        #expect(d.groups["web"]!.rules[0].direction == .ingress)
        #expect(IPv6Address("FD00:0:0::1")!.description == "fd00::1")
        #expect(IPv4Address("010.0.0.1") == nil)
        #expect(MACAddress("02:AB:cd:00:00:01")!.description == "02:ab:cd:00:00:01")
    }
}

/// The contract's "Values that are never an instance's" and the optional `guarded_prefixes`:
/// each rejected with its JSON path, by the parser and by `Document.validate()` alike (typed
/// values built by a controller go through the same rules).
@Suite struct InstanceValueTests {
    func instance(ips: String = #"["10.0.0.1"]"#, interface: String = "tap1", host: String = "hv1") -> String {
        doc(instances: #""web-1": {"host": "\#(host)", "interface": "\#(interface)", "ips": \#(ips), "groups": ["web"]}"#)
    }

    @Test(arguments: [
        ("0.0.0.0", "the unspecified address"), ("255.255.255.255", "the broadcast address"),
        ("127.0.0.1", "a loopback address (127.0.0.0/8)"), ("127.255.0.9", "a loopback address (127.0.0.0/8)"),
        ("224.0.0.1", "a multicast address (224.0.0.0/4)"), ("239.1.2.3", "a multicast address (224.0.0.0/4)"),
        ("169.254.1.1", "a link-local address (169.254.0.0/16)"), ("::", "the unspecified address"),
        ("::1", "the loopback address"), ("ff02::1", "a multicast address (ff00::/8)"),
        ("fe80::1", "a link-local address (fe80::/10)"), ("febf::1", "a link-local address (fe80::/10)"),
        ("::ffff:10.0.0.1", "an IPv4-mapped address (::ffff:0:0/96)"),
    ])
    func neverAnInstancesAddress(_ address: String, _ kind: String) throws {
        let canonical = IPAddress(address)!.description
        let want = "instances.web-1.ips[1]: \(canonical) is \(kind), never an instance's own"
        #expect(errors(instance(ips: #"["10.0.0.1", "\#(address)"]"#)) == [want])
        var d = try Document.parse(json: doc())
        d.instances["web-1"]!.ips.append(IPAddress(address)!)
        #expect(d.issues().map(\.description) == [want])
    }

    @Test func ordinaryAddressesStayValid() {
        for a in ["10.0.0.2", "100.64.0.1", "192.0.2.1", "223.255.255.254", "fd00::1", "2001:db8::1", "fec0::1", "::2", "::ffff:0:a00:1"] {
            #expect(errors(instance(ips: #"["\#(a)"]"#)) == [], "\(a)")
        }
    }

    @Test func interfacesThatAreWildcardsOrLoopback() {
        #expect(errors(instance(interface: "tap+")) == [#"instances.web-1.interface: "tap+" is not a valid interface name: contains '+' (a wildcard to iptables and nft)"#])
        #expect(errors(instance(interface: "+")).count == 1)
        #expect(errors(instance(interface: "tap*")) == [#"instances.web-1.interface: "tap*" is not a valid interface name: contains '*' (a wildcard to iptables and nft)"#])
        #expect(errors(instance(interface: "lo")) == [#"instances.web-1.interface: "lo" is not a valid interface name: the loopback device is never an instance's"#])
        #expect(errors(instance(interface: "lo0")) == [])
    }

    @Test func hostsAreIDs() {
        #expect(errors(instance(host: "hv 2")) == [#"instances.web-1.host: "hv 2" is not a valid host (1-64 characters of A-Z a-z 0-9 . _ : -)"#])
        #expect(errors(#"{"version": 1, "host": "hv/1", "groups": {}, "instances": {}}"#)
            == [#"host: "hv/1" is not a valid host (1-64 characters of A-Z a-z 0-9 . _ : -)"#])
        #expect(Document(host: "h\u{0}").issues().map(\.path) == ["host"])
    }

    @Test func guardedPrefixes() throws {
        func top(_ prefixes: String) -> String {
            #"{"version": 1, "host": "hv1", "guarded_prefixes": \#(prefixes), "groups": {}, "instances": {}}"#
        }
        let d = try Document.parse(json: top(#"["tap", "vnet"]"#))
        #expect(d.guardedPrefixes == ["tap", "vnet"])
        #expect(try Document.parse(json: d.jsonText()) == d)
        #expect(errors(top("[]")) == [])
        #expect(errors(top(#""tap""#)) == ["guarded_prefixes: expected an array, got a string"])
        #expect(errors(top(#"["tap", 5]"#)) == ["guarded_prefixes[1]: expected a string, got a number"])
        #expect(errors(top(#"["tap+"]"#)) == [#"guarded_prefixes[0]: "tap+" is not a valid interface-name prefix: contains '+' (a wildcard to iptables and nft)"#])
        #expect(errors(top(#"[""]"#)) == [#"guarded_prefixes[0]: "" is not a valid interface-name prefix: empty"#])
        #expect(errors(top(#"["0123456789abcdef"]"#)).count == 1)
        #expect(errors(top(#"["l"]"#)) == [#"guarded_prefixes[0]: "l" would guard the loopback device lo"#])
        #expect(errors(top(#"["lo"]"#)).count == 1)
        #expect(Document(host: "hv1", guardedPrefixes: ["ok", "t*"]).issues().map(\.path) == ["guarded_prefixes[1]"])
    }

    /// Lengths are counted in Unicode scalar values: 255 combining sequences of two scalars
    /// are 510 scalars, too long, although they are 255 characters to Swift.
    @Test func descriptionLengthInScalars() {
        let combining = String(repeating: "e\u{301}", count: 200)
        #expect(errors(doc(groups: #""web": {"description": "\#(combining)", "rules": []}"#))
            == ["groups.web.description: 400 characters long; at most 255"])
        #expect(errors(doc(groups: #""web": {"description": "\#(String(repeating: "é", count: 255))", "rules": []}"#)) == [])
    }
}
