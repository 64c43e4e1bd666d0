import Testing
import RampartCore

/// Which groups and members a host needs (shared by the store's per-host documents and the
/// daemon's refresh handling).
@Suite struct HostProjectionTests {
    static let ssh = Rule(proto: .tcp, ports: 22...22, remote: .group("admin"))
    static let pg = Rule(proto: .tcp, ports: 5432...5432, remote: .group("web"))
    static let groups: [String: Group] = [
        "web": Group(rules: [ssh]),
        "db": Group(rules: [pg]),
        "admin": Group(rules: [Rule(proto: .tcp, ports: 22...22, remote: .group("ops"))]),
    ]

    @Test func localAndReferencedGroups() {
        let local = [Instance(host: "hv1", groups: ["web"], ips: [IPAddress("10.0.1.1")!], interface: "tapw"),
                     Instance(host: "hv1", groups: ["web", "db"], ips: [IPAddress("10.0.1.2")!], interface: "tapd")]
        let localGroups = HostProjection.localGroups(of: local)
        #expect(localGroups == ["web", "db"])
        #expect(HostProjection.referencedGroups(by: localGroups.compactMap { Self.groups[$0] }) == ["admin", "web"])
        #expect(HostProjection.localGroups(of: [Instance]()).isEmpty)
    }

    @Test func instancesElsewhereAreProjected() throws {
        let mac = try #require(MACAddress("02:00:00:00:00:01"))
        let far = Instance(host: "hv2", groups: ["admin", "secret"], ips: [IPAddress("10.0.9.5")!], interface: "tapb", mac: mac)
        let p = HostProjection.project(far, onto: "hv1", groups: ["admin": Group()])
        #expect(p == Instance(host: "hv2", groups: ["admin"], ips: [IPAddress("10.0.9.5")!]))
        let mine = Instance(host: "hv1", groups: ["secret"], ips: [IPAddress("10.0.1.1")!], interface: "tapw", mac: mac)
        #expect(HostProjection.project(mine, onto: "hv1", groups: [:]) == mine)
    }

    @Test func theDocumentListsReferencedGroupsWithoutRules() {
        let web1 = Instance(host: "hv1", groups: ["web"], ips: [IPAddress("10.0.1.1")!], interface: "tapw")
        let bastion = Instance(host: "hv2", groups: ["admin", "other"], ips: [IPAddress("10.0.9.5")!], interface: "tapb")
        let doc = HostProjection.document(host: "hv1", local: ["web-1": web1], localGroups: ["web": Self.groups["web"]!],
                                          referenced: ["admin"], remote: ["bastion": bastion], guardedPrefixes: ["tap"])
        #expect(doc.groups == ["web": Self.groups["web"]!, "admin": Group()])
        #expect(doc.instances["web-1"] == web1)
        #expect(doc.instances["bastion"] == Instance(host: "hv2", groups: ["admin"], ips: [IPAddress("10.0.9.5")!]))
        #expect(doc.guardedPrefixes == ["tap"])
        #expect(doc.issues().isEmpty)
    }
}
