import Foundation
import Testing
import RampartCore
import RampartHarness
@testable import RampartNFTables
import RampartNetlink
import RampartTestSupport

/// The example document of the spec.
let exampleDocument: Document = {
    let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/examples/two-tier.json")
    return try! Document.parse(json: Data(contentsOf: url.standardizedFileURL))
}()

/// The backend against the in-memory fake: exact batches, no root needed.
@Suite("Backend with the recording fake") struct BackendFakeTests {
    @Test func applyThenReapplyCommitsNothing() throws {
        let fake = RecordingNFTables()
        let backend = NFTablesBackend(client: fake)
        let desired = Compiler.compile(exampleDocument)
        let change = try backend.converge(to: desired)
        #expect(!change.isEmpty && change.plan?.isEmpty == false)
        #expect(change.generation != nil && change.previous == nil)
        #expect(fake.committed.count == 1)
        // A fresh backend (a new CLI process) reads the table back and finds nothing to do.
        let again = NFTablesBackend(client: fake)
        let change2 = try again.converge(to: desired)
        #expect(change2.isEmpty && change2.plan?.isEmpty == true)
        #expect(fake.committed.count == 1)
    }

    @Test func membershipChangeSendsOnlyElements() throws {
        let fake = RecordingNFTables()
        let backend = NFTablesBackend(client: fake)
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        var bastion = exampleDocument.instances["bastion"]!
        bastion.ips.append(IPAddress("10.0.9.6")!)
        let plan = try engine.membersChanged(group: "admin", added: ["bastion": bastion])
        try backend.commit(plan, result: engine.planned)
        let batch = try #require(fake.committed.last)
        // One element of `members4`: the group's tag, then the address; commented with the group.
        let tag = Array("admin".utf8) + [UInt8](repeating: 0, count: 11)
        #expect(batch.operations == [.addElements(family: .inet, table: "rampart", set: "members4",
                                                  elements: [NFTSetElement(key: tag + [10, 0, 9, 6], comment: "admin")])])
    }

    @Test func driftIsRepaired() throws {
        let fake = RecordingNFTables()
        let backend = NFTablesBackend(client: fake)
        let desired = Compiler.compile(exampleDocument)
        try backend.converge(to: desired)
        fake.mutateTable(family: .inet, name: "rampart") { t in
            t.rules["gin-web"]!.removeLast()                                      // a rule deleted
            t.elements["members4"]!.append(NFTSetElement(key: Array("web".utf8) + [UInt8](repeating: 0, count: 13) + [1, 2, 3, 4],
                                                         comment: "web"))  // an element added to web's members
            t.chains.append(NFTChain(family: .inet, table: "rampart", name: "intruder"))
            t.rules["intruder"] = []
        }
        let plan = try #require(try backend.converge(to: desired).plan)
        #expect(plan.summary.chainsRewritten == 1)
        #expect(plan.summary.chainsDeleted == 1)
        #expect(plan.summary.elementsRemoved == 1)
        #expect(try NFTablesBackend(client: fake).converge(to: desired).isEmpty)
    }

    @Test func commitIsGuardedByTheMirrorsGeneration() throws {
        let fake = RecordingNFTables()
        let backend = NFTablesBackend(client: fake)
        var engine = Engine(host: "hv1")
        try backend.commit(try engine.apply(document: exampleDocument), result: engine.planned)
        fake.bumpGeneration()  // someone else committed
        var bastion = exampleDocument.instances["bastion"]!
        bastion.ips.append(IPAddress("10.0.9.7")!)
        let plan = try engine.membersChanged(group: "admin", added: ["bastion": bastion])
        let error = #expect(throws: NetlinkError.self) { try backend.commit(plan, result: engine.planned) }
        guard case .generationChanged = error else { Issue.record("expected generationChanged"); return }
        // Converging reads back and succeeds.
        let again = try #require(try backend.converge(to: engine.planned).plan)
        #expect(again.summary.elementsAdded == 1)
    }
}
