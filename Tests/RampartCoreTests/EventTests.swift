import Testing
@testable import RampartCore

@Suite struct EventTests {
    func engine() throws -> Engine {
        var e = Engine(host: "hv1")
        _ = try e.apply(document: try twoTier())
        return e
    }

    func checked(_ e: Engine, _ before: RulesetIR?, _ p: Plan) throws {
        #expect(try apply(p, to: before) == Compiler.compile(e.document))
    }

    @Test func membershipChangeIsOnlyElementDeltas() throws {
        var e = try engine()
        let before = e.planned
        let p = try e.membersChanged(group: "admin", added: ["bastion-2": Instance(host: "hv3", groups: ["admin"], ips: [IPAddress("10.0.9.6")!])])
        #expect(p.ops == [.addElements("m4-admin", [.ipv4(IPv4Address("10.0.9.6")!)])])
        try checked(e, before, p)
        let p2 = try e.membersChanged(group: "admin", removed: ["bastion"])
        #expect(p2.ops == [.removeElements("m4-admin", [.ipv4(IPv4Address("10.0.9.5")!)]),
                           .removeElements("m6-admin", [.ipv6(IPv6Address("fd00::95")!)])])
        // bastion was in no other group and lives elsewhere: it leaves the document.
        #expect(e.document.instances["bastion"] == nil)
        // Full-list form: same members again is an empty Plan.
        let members = e.document.instances.filter { $0.value.groups.contains("admin") }
        #expect(try e.membersChanged(group: "admin", members: members).isEmpty)
    }

    /// `replacedChains` holds, for every chain a series of events rewrote, deleted or created,
    /// its version before the first of them (nil: absent then): what the daemon's conntrack cut
    /// compares with, instead of a copy of the whole planned IR. Checked against the IR held
    /// before the series, over events that touch the same chains twice.
    @Test func replacedChainsAreThePreImagesOfASeries() throws {
        var e = try engine()
        let start = e.planned!
        e.recordReplacedChains()
        var touched = Set<String>()
        func note(_ p: Plan) {
            for op in p.ops {
                switch op {
                case .rewriteChain(let n, _), .deleteChain(let n): touched.insert(n)
                case .createChain(let h): touched.insert(h.name)
                default: break
                }
            }
        }
        var rules = e.document.groups["db"]!.rules
        rules.removeAll { $0.remote == .group("admin") }
        note(try e.rulesChanged(group: "db", rules: rules))
        note(try e.rulesChanged(group: "db", rules: []))
        note(try e.instancePlugged(id: "db-9", instance: Instance(host: "hv1", groups: ["db"], ips: [IPAddress("10.0.2.99")!], interface: "tapd9")))
        note(try e.instanceUnplugged(id: "db-9"))
        let replaced = e.takeReplacedChains()
        #expect(!touched.isEmpty)
        #expect(Set(replaced.keys) == touched)
        for (name, old) in replaced { #expect(old == start.chains[name], "\(name)") }
        #expect(e.replacedChains == nil, "taking stops the recording")
        _ = try e.rulesChanged(group: "db", rules: rules)
        #expect(e.replacedChains == nil)
    }

    @Test func sharedAddressLeavesOnlyWithItsLastMember() throws {
        var e = try engine()
        let twin = Instance(host: "hv2", groups: ["admin"], ips: [IPAddress("10.0.9.5")!])
        #expect(try e.membersChanged(group: "admin", added: ["twin": twin]).isEmpty)
        #expect(try e.membersChanged(group: "admin", removed: ["bastion"]).ops == [.removeElements("m6-admin", [.ipv6(IPv6Address("fd00::95")!)])])
        #expect(try e.membersChanged(group: "admin", removed: ["twin"]).ops == [.removeElements("m4-admin", [.ipv4(IPv4Address("10.0.9.5")!)])])
    }

    @Test func rulesChangeRewritesOneGroupAndItsSets() throws {
        var e = try engine()
        let before = e.planned
        var rules = e.document.groups["db"]!.rules
        rules.removeAll { $0.remote == .group("admin") }
        let p = try e.rulesChanged(group: "db", rules: rules)
        // web still references admin, so admin's sets stay.
        #expect(p.ops.count == 1)
        guard case .rewriteChain("gin-db", let r) = p.ops[0] else { Issue.record("\(p.ops)"); return }
        #expect(r.count == 2)
        try checked(e, before, p)
        var web = e.document.groups["web"]!.rules
        web.removeAll { $0.remote == .group("admin") }
        let before2 = e.planned
        let p2 = try e.rulesChanged(group: "web", rules: web)
        #expect(p2.summary.chainsRewritten == 1)
        #expect(p2.ops.suffix(2) == [.deleteSet("m4-admin"), .deleteSet("m6-admin")])
        try checked(e, before2, p2)
        // A rules change of a group with no member here changes nothing in the kernel.
        #expect(try e.rulesChanged(group: "admin", rules: []).isEmpty)
    }

    @Test func plugAndUnplug() throws {
        var e = try engine()
        let before = e.planned
        let inst = Instance(host: "hv1", groups: ["admin"], ips: [IPAddress("10.0.3.1")!], interface: "tapadm")
        let p = try e.instancePlugged(id: "adm-1", instance: inst)
        let s = p.summary
        #expect(s.chainsCreated == 4) // in-, out-, gin-admin, gout-admin
        #expect(s.mapElementsAdded == 2)
        #expect(p.ops.contains(.addElements("inst-ifaces", [.ifname("tapadm")])))
        #expect(p.ops.contains(.addElements("m4-admin", [.ipv4(IPv4Address("10.0.3.1")!)])))
        #expect(p.ops.contains(.addElements("inst-src4", [.ifaceIPv4("tapadm", IPv4Address("10.0.3.1")!)])))
        try checked(e, before, p)
        let before2 = e.planned
        let u = try e.instanceUnplugged(id: "adm-1")
        #expect(u.summary.chainsDeleted == 4)
        #expect(u.ops.contains(.removeElements("inst-src4", [.ifaceIPv4("tapadm", IPv4Address("10.0.3.1")!)])))
        try checked(e, before2, u)
        #expect(e.planned == before)
    }

    @Test func eventsAreValidated() throws {
        var e = try engine()
        #expect(throws: DocumentError([ValidationIssue(path: "instances.x.interface", reason: #""tapweb1" is already used by instance web-1"#)])) {
            try e.instancePlugged(id: "x", instance: Instance(host: "hv1", ips: [IPAddress("10.7.7.7")!], interface: "tapweb1"))
        }
        #expect(throws: DocumentError([ValidationIssue(path: "instances.x.ips[0]", reason: "10.0.1.11 is already used by instance web-1")])) {
            try e.instancePlugged(id: "x", instance: Instance(host: "hv1", ips: [IPAddress("10.0.1.11")!], interface: "tapx"))
        }
        #expect(throws: DocumentError([ValidationIssue(path: "groups.web.rules[0].ports", reason: "not allowed with protocol icmp (only tcp, udp, sctp)")])) {
            try e.rulesChanged(group: "web", rules: [Rule(proto: .icmp, ports: 1...2, remote: .group("web"))])
        }
        #expect(throws: DocumentError([ValidationIssue(path: "instances.x.groups", reason: "does not contain admin")])) {
            try e.membersChanged(group: "admin", added: ["x": Instance(host: "hv2", ips: [IPAddress("10.7.7.7")!])])
        }
        #expect(throws: DocumentError([ValidationIssue(path: "instances.web-2.groups[0]", reason: #"unknown group "nope""#)])) {
            try e.instanceGroupsChanged(id: "web-2", groups: ["nope"])
        }
        var other = Engine(host: "hv9")
        #expect(throws: DocumentError([ValidationIssue(path: "host", reason: #""hv1" is not this host (hv9)"#)])) { try other.apply(document: try twoTier()) }
        var fresh = Engine(host: "hv1")
        #expect(throws: DocumentError.self) { try fresh.instanceUnplugged(id: "a") }
    }

    @Test func groupsChangedAndFlush() throws {
        var e = try engine()
        let before = e.planned
        let p = try e.instanceGroupsChanged(id: "web-2", groups: ["web", "db"])
        #expect(p.ops.count == 2)
        #expect(p.summary.chainsRewritten == 2) // in-web-2 and out-web-2; db's chains already exist
        #expect(p.ops.contains(.addElements("m4-web", [])) == false)
        try checked(e, before, p)
        #expect(e.flush().ops == [.deleteTable])
        #expect(e.planned == nil)
    }
}
