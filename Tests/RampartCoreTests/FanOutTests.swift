import PropertyBased
import Testing
import RampartCore
import RampartCoreTestSupport

@Suite struct FanOutTests {
    @Test func twoTierFanOut() {
        var c = CloudIndex()
        c.setReferences(of: "web", to: ["admin"])
        c.setReferences(of: "db", to: ["web", "admin"])
        c.setReferences(of: "admin", to: [])
        c.setInstance("web-1", host: "hv1", groups: ["web"])
        c.setInstance("db-1", host: "hv2", groups: ["db"])
        c.setInstance("bastion", host: "hv3", groups: ["admin"])
        // Members of admin matter to hosts running web or db members.
        #expect(Set(c.hostsForMembersRefresh("admin")) == ["hv1", "hv2"])
        #expect(Set(c.hostsForMembersRefresh("web")) == ["hv2"])
        #expect(c.hostsForMembersRefresh("db") == [])
        #expect(c.hostsForRulesRefresh("admin") == ["hv3"])
        #expect(Set(c.referrers(of: "admin")) == ["web", "db"])
        #expect(c.members(of: "web") == ["web-1"])
        #expect(c.instances(onHost: "hv2") == ["db-1"])
        c.setReferences(of: "db", to: [])
        #expect(c.hostsForMembersRefresh("admin") == ["hv1"])
        c.removeInstance("web-1")
        #expect(c.hostsForMembersRefresh("admin") == [])
        #expect(c.hostsForRulesRefresh("unknown") == [])
    }

    @Test func randomEditsMatchAScan() async {
        await propertyCheck(count: 60, input: Gen.uint64(in: 0...UInt64.max)) { (seed: UInt64) in
            var rng = SeededRNG(seed: seed)
            var c = CloudIndex()
            // Few groups make big ones (past the 16 entries where lists grow a position index).
            let groups = (0..<Int.random(in: 2...12, using: &rng)).map { "g\($0)" }
            let hosts = (0..<40).map { "h\($0)" }  // > 16 hosts per group exercises the position index
            for _ in 0..<600 {
                switch Int.random(in: 0..<10, using: &rng) {
                case 0..<2:
                    let refs = (0..<Int.random(in: 0...3, using: &rng)).map { _ in groups.randomElement(using: &rng)! }
                    c.setReferences(of: groups.randomElement(using: &rng)!, to: refs)
                case 2:
                    c.removeInstance("i\(Int.random(in: 0..<90, using: &rng))")
                default:
                    let gs = (0..<Int.random(in: 0...3, using: &rng)).map { _ in groups.randomElement(using: &rng)! }
                    c.setInstance("i\(Int.random(in: 0..<90, using: &rng))", host: hosts.randomElement(using: &rng)!, groups: gs)
                }
            }
            for g in groups {
                let m = c.hostsForMembersRefresh(g), r = c.hostsForRulesRefresh(g)
                #expect(Set(m) == c.scanHostsForMembersRefresh(g), "seed \(seed) group \(g)")
                #expect(Set(r) == c.scanHostsForRulesRefresh(g), "seed \(seed) group \(g)")
                #expect(m.count == Set(m).count && r.count == Set(r).count)
            }
            // The other indexes, against what the edits left.
            for h in hosts {
                #expect(Set(c.instances(onHost: h)) == c.scanInstances(onHost: h), "seed \(seed) host \(h)")
            }
            for g in groups {
                #expect(Set(c.members(of: g)) == c.scanMembers(of: g), "seed \(seed) group \(g)")
                #expect(Set(c.referrers(of: g)) == c.scanReferrers(of: g), "seed \(seed) group \(g)")
            }
        }
    }
}
