import Foundation
import RampartCore
import RampartStore
import RampartCoreTestSupport
import RampartHarness
import Testing

func tempStore() throws -> SQLiteStore {
    try SQLiteStore(path: tempStorePath())
}

/// The two stores every verb test runs on: the same SQL (`SQLStore`) on SQLite and on a real
/// PostgreSQL (a fresh database on the process's throwaway cluster; root only: the cluster runs
/// as the `postgres` account).
enum StoreKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case sqlite, postgres
    var testDescription: String { rawValue }

    static var available: [StoreKind] { getuid() == 0 ? allCases : [.sqlite] }

    func make() throws -> SQLStore {
        switch self {
        case .sqlite: try tempStore()
        case .postgres: try PostgresStore(url: SharedPostgres.freshDatabase("store"), migrate: true)
        }
    }
}

extension Array where Element == Delivery {
    /// The deliveries without their change-log positions (SQLite has none).
    var plain: [Delivery] { map { Delivery(host: $0.host, refresh: $0.refresh) } }
}

func ip(_ s: String) -> IPAddress { IPAddress(s)! }

func rule(_ json: String, _ group: String, refs: [String] = []) throws -> Rule {
    try RulesCodec.parseRule(json, group: group, references: refs)
}

/// web (hv1: web-1, web-2; hv2: web-3) allows tcp 80 from anywhere and 22 from admin;
/// db (hv1: db-1) allows 5432 from web; admin (hv2: bastion, hv3: bastion-3).
func populate(_ st: SQLStore) throws {
    for g in ["web", "db", "admin", "unused"] { _ = try st.createGroup(g, description: nil) }
    _ = try st.authorize(group: "web", rule: try rule(#"{"id":"http","protocol":"tcp","ports":"80","cidr":"0.0.0.0/0"}"#, "web"))
    _ = try st.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"22","group":"admin"}"#, "web", refs: ["admin"]))
    _ = try st.authorize(group: "db", rule: try rule(#"{"protocol":"tcp","ports":"5432","group":"web"}"#, "db", refs: ["web"]))
    _ = try st.addInstance("web-1", Instance(host: "hv1", groups: ["web"], ips: [ip("10.0.1.11")], interface: "tapweb1"))
    _ = try st.addInstance("web-2", Instance(host: "hv1", groups: ["web"], ips: [ip("10.0.1.12"), ip("fd00::12")], interface: "tapweb2"))
    _ = try st.addInstance("web-3", Instance(host: "hv2", groups: ["web"], ips: [ip("10.0.1.13")], interface: "tapweb3"))
    _ = try st.addInstance("db-1", Instance(host: "hv1", groups: ["db"], ips: [ip("10.0.2.21")], interface: "tapdb1",
                                            mac: MACAddress("02:00:00:00:02:21")))
    _ = try st.addInstance("bastion", Instance(host: "hv2", groups: ["admin"], ips: [ip("10.0.9.5")], interface: "tapb"))
    _ = try st.addInstance("bastion-3", Instance(host: "hv3", groups: ["admin", "unused"], ips: [ip("10.0.9.6")], interface: "tapb3"))
}

@Suite("Store (SQLite and PostgreSQL): documents, verbs, fan-out", .scratchDirectory) struct StoreTests {
    @Test(arguments: StoreKind.available) func documentForHostFollowsTheSpec(_ kind: StoreKind) throws {
        let st = try kind.make()
        try populate(st)
        let doc = try st.document(forHost: "hv1")
        try doc.validate()
        #expect(Set(doc.groups.keys) == ["web", "db", "admin"])
        #expect(doc.groups["web"]!.rules.count == 2)
        #expect(doc.groups["admin"]!.rules.isEmpty)  // referenced only
        #expect(Set(doc.instances.keys) == ["web-1", "web-2", "db-1", "web-3", "bastion", "bastion-3"])
        #expect(doc.instances["db-1"]!.mac == MACAddress("02:00:00:00:02:21"))
        #expect(doc.instances["web-3"]! == Instance(host: "hv2", groups: ["web"], ips: [ip("10.0.1.13")]))
        // groups not in the document are left out of the records of instances elsewhere
        #expect(doc.instances["bastion-3"]!.groups == ["admin"])
        // a host with nothing
        #expect(try st.document(forHost: "nowhere").instances.isEmpty)
        // hv2: web and admin are local; web references admin
        let d2 = try st.document(forHost: "hv2")
        try d2.validate()
        #expect(Set(d2.instances.keys) == ["web-3", "bastion", "bastion-3"])
    }

    @Test(arguments: StoreKind.available) func verbsReturnTheFanOut(_ kind: StoreKind) throws {
        let st = try kind.make()
        try populate(st)
        #expect(try st.hostsForRulesRefresh("web") == ["hv1", "hv2"])
        #expect(try st.hostsForMembersRefresh("admin") == ["hv1", "hv2"])  // members of web reference admin
        #expect(try st.hostsForMembersRefresh("web") == ["hv1"])  // db references web
        // a new admin member: hosts of web members get members(admin); hv4 gets the instance
        let d = try st.addInstance("bastion-4", Instance(host: "hv4", groups: ["admin"], ips: [ip("10.0.9.7")], interface: "tapb4"))
        #expect(d.plain == [Delivery(host: "hv1", refresh: .members("admin")), Delivery(host: "hv2", refresh: .members("admin")),
                      Delivery(host: "hv4", refresh: .instance("bastion-4"))])
        // a rule change of db: the hosts of db's members
        let r = try st.authorize(group: "db", rule: try rule(#"{"protocol":"icmp","cidr":"10.0.0.0/8"}"#, "db"))
        #expect(r.plain == [Delivery(host: "hv1", refresh: .rules("db"))])
        // set-groups: web-3 leaves web for db: members(web) and members(db) to their referrers
        let s = try st.setGroups(instance: "web-3", groups: ["db"])
        #expect(s.plain.contains(Delivery(host: "hv1", refresh: .members("web"))))
        #expect(s.plain.contains(Delivery(host: "hv2", refresh: .instance("web-3"))))
        // remove
        let rm = try st.removeInstance("bastion")
        #expect(rm.plain.contains(Delivery(host: "hv2", refresh: .instance("bastion"))))
        #expect(rm.plain.contains(Delivery(host: "hv1", refresh: .members("admin"))))
        #expect(try st.instance("bastion") == nil)
        // revoke by id
        let rv = try st.revoke(group: "web", rule: nil, id: "http")
        #expect(rv.plain == [Delivery(host: "hv1", refresh: .rules("web"))])
        #expect(try st.group("web")!.rules.count == 1)
    }

    @Test(arguments: StoreKind.available) func refusedChangesChangeNothing(_ kind: StoreKind) throws {
        let st = try kind.make()
        try populate(st)
        let before = try st.document(forHost: "hv1")
        // same interface twice on a host
        #expect(throws: StoreError.self) {
            try st.addInstance("dup", Instance(host: "hv1", groups: [], ips: [ip("10.0.5.5")], interface: "tapweb1"))
        }
        // same address twice on a host
        #expect(throws: StoreError.self) {
            try st.addInstance("dup", Instance(host: "hv1", groups: [], ips: [ip("10.0.1.11")], interface: "tapdup"))
        }
        // unknown group
        #expect(throws: StoreError.self) {
            try st.addInstance("x", Instance(host: "hv1", groups: ["nope"], ips: [ip("10.0.5.6")], interface: "tapx"))
        }
        #expect(throws: StoreError.self) { try st.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","group":"nope"}"#, "web", refs: ["nope"])) }
        // group in use, group referenced
        #expect(throws: StoreError.self) { try st.deleteGroup("web") }
        #expect(throws: StoreError.self) { try st.deleteGroup("admin") }
        // duplicate rule
        #expect(throws: StoreError.self) { try st.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"80","cidr":"0.0.0.0/0"}"#, "web")) }
        // invalid ids
        #expect(throws: StoreError.self) { try st.createGroup("bad group", description: nil) }
        #expect(try st.document(forHost: "hv1") == before)
        #expect(try st.instance("x") == nil && st.instance("dup") == nil)
        // an unused group can go
        _ = try st.setGroups(instance: "bastion-3", groups: ["admin"])
        #expect(try st.deleteGroup("unused") == [])
        #expect(try st.group("unused") == nil)
    }

    @Test func invalidRulesAreRejectedWithTheirPath() throws {
        #expect(throws: StoreError.self) { try rule(#"{"protocol":"tcp","ports":"70000","cidr":"0.0.0.0/0"}"#, "web") }
        #expect(throws: StoreError.self) { try rule(#"{"protocol":"icmp","ports":"80","cidr":"0.0.0.0/0"}"#, "web") }
        do {
            _ = try rule(#"{"protocol":"tcp","cidr":"10.0.0.1/8"}"#, "web")
            Issue.record("accepted host bits")
        } catch {
            #expect("\(error)".contains("10.0.0.0/8"))
        }
    }

    @Test(arguments: StoreKind.available) func importThenExportGivesTheDocumentBack(_ kind: StoreKind) throws {
        let st = try kind.make()
        let text = """
            {"version":1,"host":"hv1","groups":{
              "web":{"description":"front","rules":[{"id":"http","protocol":"tcp","ports":"80","cidr":"0.0.0.0/0"},
                                                    {"protocol":"tcp","ports":"22","group":"admin"}]},
              "admin":{"rules":[]}},
             "instances":{
              "web-1":{"host":"hv1","interface":"tapweb1","ips":["10.0.1.11","fd00::11"],"mac":"02:00:00:00:01:11","groups":["web"]},
              "lonely":{"host":"hv1","interface":"taplone","ips":["10.0.3.31"],"groups":[]},
              "bastion":{"host":"hv2","interface":"tapb","ips":["10.0.9.5"],"groups":["admin"]}}}
            """
        let doc = try Document.parse(json: text)
        let d = try st.importDocument(doc)
        #expect(d.plain.contains(Delivery(host: "hv1", refresh: .host)))
        var expected = doc
        expected.instances["bastion"]!.interface = nil
        #expect(try st.document(forHost: "hv1") == expected)
        // importing again changes nothing
        _ = try st.importDocument(doc)
        #expect(try st.document(forHost: "hv1") == expected)
        // rules survive the JSON round trip exactly
        #expect(try st.group("web") == doc.groups["web"])
    }

    @Test(arguments: StoreKind.available) func fanOutAgreesWithTheCloudIndex(_ kind: StoreKind) throws {
        let st = try kind.make()
        var index = CloudIndex()
        var rng = SystemRandomNumberGenerator()
        let groups = (0..<12).map { "g\($0)" }
        for g in groups { _ = try st.createGroup(g, description: nil) }
        for g in groups {
            let refs = Array(Set((0..<2).map { _ in groups.randomElement(using: &rng)! }))
            for r in refs { _ = try st.authorize(group: g, rule: try rule(#"{"protocol":"tcp","group":"\#(r)"}"#, g, refs: [r])) }
            index.setReferences(of: g, to: refs)
        }
        for i in 0..<40 {
            let host = "hv\(i % 5)"
            let gs = Array(Set((0..<Int.random(in: 0...3, using: &rng)).map { _ in groups.randomElement(using: &rng)! }))
            _ = try st.addInstance("i\(i)", Instance(host: host, groups: gs, ips: [ip("10.1.0.\(i + 1)")], interface: "tap\(i)"))
            index.setInstance("i\(i)", host: host, groups: gs)
        }
        for g in groups {
            #expect(Set(try st.hostsForMembersRefresh(g)) == Set(index.hostsForMembersRefresh(g)), "members \(g)")
            #expect(Set(try st.hostsForRulesRefresh(g)) == Set(index.hostsForRulesRefresh(g)), "rules \(g)")
        }
    }
}
