import Foundation
import Testing
import RampartHarness
@testable import RampartNetlink

/// Atomicity, error mapping and the generation guard, against the kernel.
@Suite("Transactions", .tags(.kernel), .rootOnly) struct TransactionTests {
    /// A table with some content, and its snapshot.
    func populated(_ k: KernelFixture) throws -> TableSnapshot {
        try k.nl.commit(Batch([
            .addTable(NFTTable(family: .inet, name: T)),
            .addChain(NFTChain(family: .inet, table: T, name: "fwd", base: NFTBaseChainSpec(hook: .forward, priority: 0))),
            .addChain(NFTChain(family: .inet, table: T, name: "c")),
            .addSet(NFTSetDefinition(family: .inet, table: T, name: "s", keyType: .ipv4Address)),
            .addElements(family: .inet, table: T, set: "s", elements: [NFTSetElement(key: ip4("10.0.0.1"))]),
            .addRule(rule("fwd", NFTMatch.address(.source, ipv6: false, inSet: "s") + [.verdict(.jump("c"))])),
            .addRule(rule("c", NFTMatch.port(protocol: 6, destination: true, 22...22) + [.verdict(.accept)])),
        ]))
        return try #require(try k.nl.readTable(family: .inet, name: T))
    }

    @Test func badOperationInTheMiddleChangesNothingAndIsNamed() throws {
        let k = try KernelFixture()
        let before = try populated(k)
        let text = try k.ns.nft("list", "ruleset").stdout
        let batch = Batch([
            .addChain(NFTChain(family: .inet, table: T, name: "new")),
            .flushChain(family: .inet, table: T, name: "c"),
            .addElements(family: .inet, table: T, set: "s", elements: [NFTSetElement(key: ip4("10.0.0.2"))]),
            .addRule(rule("missing-chain", [.verdict(.accept)], comment: "the bad one")),
            .addRule(rule("c", [.verdict(.drop)])),
        ])
        let error = #expect(throws: NetlinkError.self) { try k.nl.commit(batch) }
        guard case .rejected(let failures) = error else { Issue.record("expected .rejected, got \(String(describing: error))"); return }
        #expect(failures.count == 1)
        #expect(failures.first?.index == 3)
        #expect(failures.first?.errno == .ENOENT)
        #expect(failures.first?.operation == batch.operations[3])
        let message = error!.description
        #expect(message.contains("operation #3 (add rule inet rtest missing-chain (comment \"the bad one\")): ENOENT"), "\(message)")

        let after = try #require(try k.nl.readTable(family: .inet, name: T))
        #expect(after.generation == before.generation)
        var a = after, b = before
        a.generation = 0; b.generation = 0
        #expect(a == b)
        #expect(try k.ns.nft("list", "ruleset").stdout == text)
    }

    @Test func everyFailureOfABatchIsReported() throws {
        let k = try KernelFixture()
        _ = try populated(k)
        let batch = Batch([
            .deleteChain(family: .inet, table: T, name: "nope"),
            .addRule(rule("c", [.verdict(.accept)])),
            .deleteElements(family: .inet, table: T, set: "s", elements: [NFTSetElement(key: ip4("9.9.9.9"))]),
            .deleteSet(family: .inet, table: T, name: "s"),  // still used by a rule
        ])
        let error = #expect(throws: NetlinkError.self) { try k.nl.commit(batch) }
        guard case .rejected(let failures) = error else { Issue.record("expected .rejected"); return }
        #expect(failures.map(\.index) == [0, 2, 3])
        #expect(failures.map(\.errno) == [.ENOENT, .ENOENT, .EBUSY])
    }

    @Test func generationGuardRejectsAfterAConcurrentCommit() throws {
        let k = try KernelFixture()
        _ = try populated(k)
        let seen = try k.nl.generation()
        // Someone else commits: here, nft as another process.
        try k.ns.nft("add", "table", "inet", "someone-else")
        #expect(try k.nl.generation() == seen + 1)
        let guarded = Batch([.addElements(family: .inet, table: T, set: "s", elements: [NFTSetElement(key: ip4("10.0.0.9"))])])
        let error = #expect(throws: NetlinkError.self) { try k.nl.commit(guarded, expectedGeneration: seen) }
        guard case .generationChanged(let expected) = error else { Issue.record("expected .generationChanged, got \(String(describing: error))"); return }
        #expect(expected == seen)
        #expect(try k.nl.readTable(family: .inet, name: T)?.elements["s"] == [NFTSetElement(key: ip4("10.0.0.1"))])
        // With the current generation the same batch goes through, and reports the next one.
        let now = try k.nl.generation()
        let result = try k.nl.commit(guarded, expectedGeneration: now)
        #expect(result.generation == now + 1)
        #expect(try k.nl.generation() == now + 1)
        #expect(Set(try k.nl.readTable(family: .inet, name: T)?.elements["s"] ?? []).count == 2)
    }

    @Test func commitReportsTheNewGeneration() throws {
        let k = try KernelFixture()
        let g = try k.nl.generation()
        let r = try k.nl.commit(Batch([.addTable(NFTTable(family: .inet, name: T))]))
        #expect(r.generation == g + 1)
        #expect(r.messages == 1)
        #expect(r.bytes > 0)
    }

    /// When the kernel's replies overflow the socket's receive queue, they are lost: the batch
    /// may or may not have committed. That must surface as "outcome unknown", never as a plain
    /// success or failure.
    @Test func lostRepliesAreOutcomeUnknown() throws {
        let k = try KernelFixture()
        try k.nl.commit(Batch([.addTable(NFTTable(family: .inet, name: T))]))
        try k.nl.shrinkReceiveBufferForTesting(bytes: 4096)
        // Every one of these fails (no such chain), and every failure replies.
        let batch = Batch((0..<3000).map { _ in .addRule(rule("missing", [.verdict(.accept)])) })
        let error = #expect(throws: NetlinkError.self) { try k.nl.commit(batch) }
        guard case .outcomeUnknown = error else { Issue.record("expected .outcomeUnknown, got \(String(describing: error))"); return }
    }

    @Test func unknownNamespaceIsATypedError() throws {
        let error = #expect(throws: NetlinkError.self) { try NFTablesConnection(namespace: .named("rampart-no-such-ns-\(getpid())")) }
        guard case .noSuchNamespace = error else { Issue.record("expected .noSuchNamespace"); return }
    }

    /// Tests never touch the machine's own namespace: the thread returns to it after opening a
    /// socket elsewhere, and its ruleset is the same after work in other namespaces.
    @Test func ownNamespaceIsUntouched() throws {
        let link = { () -> String in (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/thread-self/ns/net")) ?? "?" }
        let before = link()
        #expect(before.hasPrefix("net:["))
        let rulesetBefore = try runCommand(["nft", "list", "ruleset"], check: true).stdout
        let k = try KernelFixture()
        #expect(link() == before)
        _ = try populated(k)
        let host = try NFTablesConnection()
        #expect(try host.readTable(family: .inet, name: T) == nil)
        #expect(try runCommand(["nft", "list", "ruleset"], check: true).stdout == rulesetBefore)
    }
}
