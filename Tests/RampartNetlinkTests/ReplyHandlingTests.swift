import CNetfilter
import Foundation
import Testing
import RampartTestSupport
@testable import RampartNetlink

/// How `NFTablesConnection` handles the kernel's replies, against a scripted kernel: no socket,
/// no namespace, no root. Each test names the regression it catches.
@Suite("Reply handling (scripted kernel, no root)") struct ReplyHandlingTests {
    /// A small table as the kernel would hold it: a base chain jumping to a chain, a set.
    static let content: TableSnapshot = {
        var s = TableSnapshot(table: NFTTable(family: .inet, name: T))
        s.chains = [NFTChain(family: .inet, table: T, name: "fwd", base: NFTBaseChainSpec(hook: .forward, priority: 0)),
                    NFTChain(family: .inet, table: T, name: "c")]
        var r1 = rule("fwd", NFTMatch.address(.source, ipv6: false, inSet: "s") + [.verdict(.jump("c"))], comment: "to c")
        r1.handle = 1
        var r2 = rule("c", NFTMatch.port(protocol: 6, destination: true, 22...22) + [.verdict(.accept)])
        r2.handle = 2
        s.rules = ["fwd": [r1], "c": [r2]]
        s.sets = [NFTSetDefinition(family: .inet, table: T, name: "s", keyType: .ipv4Address)]
        s.elements = ["s": [NFTSetElement(key: ip4("10.0.0.1")), NFTSetElement(key: ip4("10.0.0.2"))]]
        return s
    }()

    static func expected(_ s: TableSnapshot, generation: UInt32) -> TableSnapshot {
        var s = s
        s.generation = generation
        return s
    }

    /// The same snapshot with elements in a canonical order (a set has none).
    static func normalized(_ s: TableSnapshot?) -> TableSnapshot? {
        guard var s else { return nil }
        for (k, v) in s.elements { s.elements[k] = v.sorted { $0.key.lexicographicallyPrecedes($1.key) } }
        return s
    }

    // MARK: read-back

    /// Catches: framing, matching or decoding of dump replies broken (the baseline the other
    /// read-back tests vary).
    @Test func readTableDecodesWhatTheKernelSent() throws {
        let k = ScriptedKernel(table: Self.content)
        let t = try k.nft.readTable(family: .inet, name: T)
        #expect(Self.normalized(t) == Self.expected(Self.content, generation: 100))
        #expect(k.count(NFT_MSG_GETGEN) == 2 && k.count(NFT_MSG_GETRULE) == 1)
        #expect(k.transport.queued.isEmpty)
    }

    /// Catches: `readRules` returning another chain's rules or losing the handles an edit of the
    /// chain deletes and inserts by.
    @Test func readRulesReturnsThatChainsRulesWithHandles() throws {
        let k = ScriptedKernel(table: Self.content)
        let rules = try #require(try k.nft.readRules(family: .inet, table: T, chain: "c"))
        #expect(rules == Self.content.rules["c"]!)
        #expect(rules.map(\.handle) == [2])
        #expect(k.count(NFT_MSG_GETRULE) == 1 && k.transport.queued.isEmpty)
    }

    /// Catches: a chain (or table) that is gone, an interrupted dump or lost replies thrown, or
    /// trusted: each is nil, and the caller rewrites the chain whole.
    @Test(arguments: ["absent", "interrupted", "lost"]) func readRulesThatCannotBeTrustedIsNil(_ what: String) throws {
        let k = ScriptedKernel(table: Self.content)
        k.fault = { msg, _, seq, normal in
            guard msg == NFT_MSG_GETRULE.rawValue else { return nil }
            switch what {
            case "absent": return [NetlinkReply.datagram([NetlinkReply.error(seq: seq, errno: ENOENT)])]
            case "interrupted":
                return ScriptedKernel.dump([ScriptedKernel.object(NFT_MSG_NEWRULE, seq: seq, family: .inet, try! NftnlRule(Self.content.rules["c"]![0]))],
                                           seq: seq, doneFlags: UInt16(NLM_F_DUMP_INTR))
            default: return [.failure(.ENOBUFS)] + normal
            }
        }
        #expect(try k.nft.readRules(family: .inet, table: T, chain: "c") == nil)
        #expect(k.transport.queued.isEmpty)
    }

    /// Catches: an absent table reported as an error, or as present.
    @Test func absentTableIsNil() throws {
        let k = ScriptedKernel(table: nil)
        #expect(try k.nft.readTable(family: .inet, name: T) == nil)
    }

    /// Catches: NLM_F_DUMP_INTR ignored (a possibly torn dump trusted) or thrown instead of read
    /// again (the bug found here: `readTable` retried only when the generation moved and threw
    /// on an interrupted dump).
    @Test func interruptedDumpIsReadAgain() throws {
        let k = ScriptedKernel(table: Self.content)
        k.fault = { msg, n, seq, normal in
            guard msg == NFT_MSG_GETRULE.rawValue, n == 1 else { return nil }
            let rules = Self.content.chains.flatMap { Self.content.rules[$0.name]! }
            return ScriptedKernel.dump([ScriptedKernel.object(NFT_MSG_NEWRULE, seq: seq, family: .inet, try! NftnlRule(rules[0]))],
                                       seq: seq, doneFlags: UInt16(NLM_F_DUMP_INTR))
        }
        let t = try k.nft.readTable(family: .inet, name: T)
        #expect(k.count(NFT_MSG_GETRULE) == 2)
        #expect(Self.normalized(t) == Self.expected(Self.content, generation: 100))
    }

    /// Catches: a dump answered EINTR or ERESTART (the kernel asking to start over) thrown
    /// instead of read again.
    @Test(arguments: [EINTR, ERESTART]) func dumpAnsweredWithARestartIsReadAgain(errno: Int32) throws {
        let k = ScriptedKernel(table: Self.content)
        k.fault = { msg, n, seq, _ in
            msg == NFT_MSG_GETCHAIN.rawValue && n == 1 ? [NetlinkReply.datagram([NetlinkReply.error(seq: seq, errno: errno)])] : nil
        }
        let t = try k.nft.readTable(family: .inet, name: T)
        #expect(k.count(NFT_MSG_GETCHAIN) == 2)
        #expect(Self.normalized(t) == Self.expected(Self.content, generation: 100))
    }

    /// Catches: EINTR from the receive itself (a signal) treated as a failure, or the request
    /// sent again (nothing was lost: the same reply is read on).
    @Test func interruptedReceiveIsRetriedInPlace() throws {
        let k = ScriptedKernel(table: Self.content)
        k.fault = { msg, n, _, normal in msg == NFT_MSG_GETCHAIN.rawValue && n == 1 ? [.failure(.EINTR)] + normal : nil }
        let t = try k.nft.readTable(family: .inet, name: T)
        #expect(k.count(NFT_MSG_GETCHAIN) == 1)
        #expect(Self.normalized(t) == Self.expected(Self.content, generation: 100))
    }

    /// Catches: ENOBUFS during a read-back (messages dropped, which unknown) thrown, or trusted.
    /// The documented behaviour: drain the socket, read the table again.
    @Test func lostRepliesDuringADumpReadAgain() throws {
        let k = ScriptedKernel(table: Self.content)
        k.fault = { msg, n, _, normal in msg == NFT_MSG_GETSET.rawValue && n == 1 ? [.failure(.ENOBUFS)] + normal : nil }
        let t = try k.nft.readTable(family: .inet, name: T)
        #expect(k.count(NFT_MSG_GETSET) == 2)
        #expect(Self.normalized(t) == Self.expected(Self.content, generation: 100))
        #expect(k.transport.queued.isEmpty)
    }

    /// Catches: a set deleted by someone between the set dump and its element dump (ENOENT)
    /// failing the read (the second bug found here) instead of reading the new state.
    @Test func setDeletedWhileReadIsReadAgain() throws {
        let k = ScriptedKernel(table: Self.content)
        var changed = Self.content
        changed.rules["fwd"] = []
        changed.sets = []
        changed.elements = [:]
        k.fault = { msg, n, seq, _ in
            guard msg == NFT_MSG_GETSETELEM.rawValue, n == 1 else { return nil }
            k.table = changed
            k.generation += 1
            return [NetlinkReply.datagram([NetlinkReply.error(seq: seq, errno: ENOENT)])]
        }
        let t = try k.nft.readTable(family: .inet, name: T)
        #expect(t == Self.expected(changed, generation: 101))
    }

    /// Catches: a torn snapshot (chains of one generation, rules of the next) returned when
    /// someone commits in the middle of a read; the generation re-read at the end is what
    /// detects it, and the snapshot carries the generation it was read at.
    @Test func commitDuringAReadIsNeverTorn() throws {
        let k = ScriptedKernel(table: Self.content)
        var changed = Self.content
        changed.chains.append(NFTChain(family: .inet, table: T, name: "d"))
        var r3 = rule("d", [.verdict(.drop)])
        r3.handle = 3
        changed.rules["d"] = [r3]
        k.willAnswer = { msg, n in
            // After the chain dump, before the rule dump: the new chain's rule shows up
            // without its chain.
            if msg == NFT_MSG_GETRULE.rawValue, n == 1 {
                k.table = changed
                k.generation += 1
            }
        }
        let t = try #require(try k.nft.readTable(family: .inet, name: T))
        #expect(Self.normalized(t) == Self.expected(changed, generation: 101))
        #expect(k.count(NFT_MSG_GETCHAIN) == 2)
    }

    /// Catches: an unbounded retry (a table changed on every read must fail, typed, after
    /// `readAttempts` full reads), or a snapshot returned although it never held still.
    @Test func retryIsBounded() throws {
        let k = ScriptedKernel(table: Self.content)
        k.willAnswer = { msg, _ in
            if msg == NFT_MSG_GETRULE.rawValue { k.generation += 1 }
        }
        let error = #expect(throws: NetlinkError.self) { try k.nft.readTable(family: .inet, name: T) }
        guard case .protocolError(let why) = error else { Issue.record("expected .protocolError, got \(String(describing: error))"); return }
        #expect(why.contains("kept changing"))
        #expect(k.count(NFT_MSG_GETRULE) == NFTablesConnection.readAttempts)
    }

    // MARK: generation

    /// Catches: a stale NEWGEN (another request's) taken for the answer.
    @Test func generationIgnoresOtherSequences() throws {
        let k = ScriptedKernel()
        k.transport.enqueue([NetlinkReply.datagram([NetlinkReply.newGeneration(999, seq: 1), NetlinkReply.error(seq: 2, errno: ENOENT)])])
        #expect(try k.nft.generation() == 100)
    }

    /// Catches: ENOBUFS on a generation request failing it (the reply may be the one dropped:
    /// the documented behaviour is to ask again).
    @Test func generationAsksAgainAfterLostReplies() throws {
        let k = ScriptedKernel()
        k.fault = { msg, n, _, _ in msg == NFT_MSG_GETGEN.rawValue && n == 1 ? [.failure(.ENOBUFS)] : nil }
        #expect(try k.nft.generation() == 100)
        #expect(k.count(NFT_MSG_GETGEN) == 2)
    }

    // MARK: commit

    static let batch = Batch([
        .addTable(NFTTable(family: .inet, name: T)),
        .addChain(NFTChain(family: .inet, table: T, name: "c")),
        .addRule(rule("missing", [.verdict(.accept)], comment: "the bad one")),
        .addRule(rule("c", [.verdict(.drop)])),
    ])

    /// Catches: the NEWGEN echo not read as the commit's generation.
    @Test func commitReturnsTheEchoedGeneration() throws {
        let k = ScriptedKernel()
        let r = try k.nft.commit(Self.batch)
        #expect(r.generation == 101)
        #expect(r.messages == 4)
        #expect(k.transport.sent.last?.messages.count == 6)  // begin, 4 operations, end
    }

    /// Catches: a commit taken as done without the kernel's confirmation. Documented: no
    /// NEWGEN and no error is `.outcomeUnknown`, whether nothing came or only acks.
    @Test func commitWithoutNEWGENIsOutcomeUnknown() throws {
        for answer in [{ (_: NetlinkRequest) -> [Event] in [] },
                       { (r: NetlinkRequest) -> [Event] in [NetlinkReply.datagram([NetlinkReply.ack(seq: r.messages[1].seq)])] }] {
            let k = ScriptedKernel()
            k.commit = answer
            let error = #expect(throws: NetlinkError.self) { try k.nft.commit(Self.batch) }
            guard case .outcomeUnknown = error else { Issue.record("expected .outcomeUnknown, got \(String(describing: error))"); continue }
        }
    }

    /// Catches: an error for one message of a batch mapped to the wrong operation (the sequence
    /// number arithmetic, the echo carrier that shifts it), or losing the errno or the kernel's
    /// text.
    @Test func failedMessageNamesItsOperation() throws {
        let k = ScriptedKernel()
        k.commit = { r in
            // Message 0 is batch begin: operation 2 is message 3.
            [NetlinkReply.datagram([NetlinkReply.error(seq: r.messages[3].seq, errno: ENOENT, type: r.messages[3].type,
                                                       message: "No such chain")])]
        }
        let error = #expect(throws: NetlinkError.self) { try k.nft.commit(Self.batch) }
        guard case .rejected(let failures) = error else { Issue.record("expected .rejected, got \(String(describing: error))"); return }
        #expect(failures == [OperationFailure.refused(Self.batch.operations[2], at: 2, errno: .ENOENT, kernelMessage: "No such chain")])
        #expect(error!.description.contains("operation #2 (add rule inet rtest missing (comment \"the bad one\")): ENOENT"))

        // A batch that does not start with a table gets an echo carrier (NEWTABLE) as message 1.
        let shifted = Batch([.addChain(NFTChain(family: .inet, table: T, name: "c")), .addRule(rule("missing", [.verdict(.accept)]))])
        k.commit = { r in [NetlinkReply.datagram([NetlinkReply.error(seq: r.messages[3].seq, errno: ENOENT)])] }
        let e2 = #expect(throws: NetlinkError.self) { try k.nft.commit(shifted) }
        guard case .rejected(let f2) = e2 else { Issue.record("expected .rejected"); return }
        #expect(f2.map(\.index) == [1])
    }

    /// Catches: ERESTART on batch-begin of a guarded batch not mapped to `.generationChanged`.
    @Test func staleGuardIsGenerationChanged() throws {
        let k = ScriptedKernel()
        k.commit = { r in [NetlinkReply.datagram([NetlinkReply.error(seq: r.messages[0].seq, errno: ERESTART)])] }
        let error = #expect(throws: NetlinkError.self) { try k.nft.commit(Self.batch, expectedGeneration: 42) }
        guard case .generationChanged(let expected) = error else { Issue.record("expected .generationChanged, got \(String(describing: error))"); return }
        #expect(expected == 42)
    }

    /// Catches: ENOBUFS on a commit reported as success or failure (it is unknown whether the
    /// batch committed), or the socket left full of the batch's replies for the next request.
    @Test func lostCommitRepliesAreOutcomeUnknownAndDrained() throws {
        let k = ScriptedKernel()
        k.commit = { r in
            [.failure(.ENOBUFS), NetlinkReply.datagram([NetlinkReply.error(seq: r.messages[2].seq, errno: ENOENT)]),
             NetlinkReply.datagram([NetlinkReply.error(seq: r.messages[3].seq, errno: ENOENT)])]
        }
        let error = #expect(throws: NetlinkError.self) { try k.nft.commit(Self.batch) }
        guard case .outcomeUnknown = error else { Issue.record("expected .outcomeUnknown, got \(String(describing: error))"); return }
        #expect(k.transport.queued.isEmpty)
        #expect(try k.nft.generation() == 100)
    }

    /// Catches: replies to an earlier request (other sequence numbers) taken for this batch's:
    /// a stale error would reject it, a stale NEWGEN would confirm it.
    @Test func commitIgnoresRepliesToOtherRequests() throws {
        let k = ScriptedKernel()
        k.transport.enqueue([NetlinkReply.datagram([NetlinkReply.error(seq: 7, errno: ENOENT), NetlinkReply.newGeneration(555, seq: 8)])])
        let r = try k.nft.commit(Self.batch)
        #expect(r.generation == 101)
    }
}
