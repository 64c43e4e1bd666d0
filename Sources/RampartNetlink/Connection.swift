#if canImport(Glibc)
import Glibc
#endif
import CNetfilter
import RampartSystem

/// What higher layers need from nftables: commit a batch atomically, know the ruleset
/// generation, read a table back. `NFTablesConnection` does it over netlink;
/// `RecordingNFTables` (in RampartTestSupport) does it in memory and records every batch, for
/// tests without root.
public protocol NFTablesClient: AnyObject {
    /// The ruleset generation: it changes on every commit by anyone in the namespace.
    func generation() throws(NetlinkError) -> UInt32
    /// Sends `batch` as one transaction. With `expectedGeneration`, the kernel refuses the
    /// whole batch (`NetlinkError.generationChanged`) if anyone committed since that generation.
    @discardableResult
    func commit(_ batch: Batch, expectedGeneration: UInt32?) throws(NetlinkError) -> CommitResult
    /// Reads one table back, or nil if it does not exist. The snapshot is consistent: taken
    /// within one generation.
    func readTable(family: NFTFamily, name: String) throws(NetlinkError) -> TableSnapshot?
    /// The rules of one chain with their kernel handles, in order; nil when the chain (or its
    /// table) does not exist, when the read was interrupted, or when this client does not offer
    /// it. Callers that edit a chain rule by rule fall back to rewriting it whole on nil.
    func readRules(family: NFTFamily, table: String, chain: String) throws(NetlinkError) -> [NFTRule]?
}

extension NFTablesClient {
    /// Not offered: chains are rewritten whole.
    public func readRules(family: NFTFamily, table: String, chain: String) throws(NetlinkError) -> [NFTRule]? { nil }

    @discardableResult
    public func commit(_ batch: Batch) throws(NetlinkError) -> CommitResult {
        try commit(batch, expectedGeneration: nil)
    }
}

/// A netlink connection to the nftables of one network namespace.
///
/// Not Sendable: give it one owner (an actor in the daemon), since replies are matched to the
/// request that is in flight.
///
/// How replies are handled (each case is tested with a scripted transport, without root):
/// - A reply whose sequence number is not the request's (left over from an abandoned request)
///   is skipped.
/// - `EINTR` from a receive is retried at once: a signal loses nothing.
/// - `ENOBUFS` from a receive means the kernel dropped messages for this socket, which ones
///   unknown. A commit then throws `.outcomeUnknown` (the batch may have committed); a
///   generation request asks again; a read-back reads again. Either way the socket is drained
///   first, so the next request starts on an empty queue.
/// - A commit whose replies hold no `NEWGEN` (the generation the kernel echoes once it
///   committed) and no error throws `.outcomeUnknown`: never a success without the
///   kernel's word.
/// - A read-back whose dump the kernel flags as interrupted (`NLM_F_DUMP_INTR`) or answers with
///   `EINTR`/`ERESTART`, or whose set vanished in between (`ENOENT`), or whose generation moved,
///   reads the whole table again, at most `readAttempts` times.
public final class NFTablesConnection: NFTablesClient {
    private let socket: NetlinkChannel
    public let namespace: NetworkNamespace

    /// Opens a socket in `namespace` (the calling thread's by default).
    public convenience init(namespace: NetworkNamespace = .current) throws(NetlinkError) {
        self.init(transport: try NetlinkSocket.forRequests(in: namespace), namespace: namespace)
    }

    /// A connection over any transport: a scripted one in tests.
    package init(transport: any NetlinkTransport, namespace: NetworkNamespace = .current) {
        self.namespace = namespace
        socket = NetlinkChannel(transport)
    }

    /// Test hook: a tiny receive buffer makes the kernel drop replies (ENOBUFS).
    func shrinkReceiveBufferForTesting(bytes: Int32) throws(NetlinkError) {
        guard let real = socket.transport as? NetlinkSocket else { return }
        try real.setReceiveBufferForTesting(bytes)
    }

    // MARK: generation

    /// How many times a generation request is sent when its reply may have been lost (ENOBUFS).
    static let generationAttempts = 3

    public func generation() throws(NetlinkError) -> UInt32 {
        var attempt = 1
        while true {
            do {
                return try generationOnce()
            } catch let error {
                // The reply is a unicast like any other: with the receive queue overflowing it
                // may be the one dropped. Asking again is harmless.
                guard case .systemCall(_, let e) = error, e == .ENOBUFS, attempt < Self.generationAttempts else { throw error }
                socket.drain()
                attempt += 1
            }
        }
    }

    private func generationOnce() throws(NetlinkError) -> UInt32 {
        let seq = socket.reserveSequence(1)
        try withScratch(64) { (buf) throws(NetlinkError) in
            let nlh = nftnl_nlmsg_build_hdr(buf.assumingMemoryBound(to: CChar.self),
                                            UInt16(NFT_MSG_GETGEN.rawValue), UInt16(AF_UNSPEC), 0, seq)!
            try socket.send(buf, length: Int(nlh.pointee.nlmsg_len))
        }
        var result: UInt32?
        while result == nil {
            let got = try socket.receive(wait: true) { (nlh) throws(NetlinkError) in
                guard nlh.pointee.nlmsg_seq == seq else { return }
                if nlh.pointee.nlmsg_type == UInt16(NLMSG_ERROR) {
                    var err = rampart_nlerr()
                    _ = rampart_parse_nlerr(nlh, &err)
                    if err.error != 0 { throw .systemCall("NFT_MSG_GETGEN", Errno(err.error)) }
                    return
                }
                result = try Self.parseGeneration(nlh)
            }
            if !got { throw .protocolError("no reply to NFT_MSG_GETGEN") }
        }
        return result!
    }

    static func parseGeneration(_ nlh: UnsafePointer<nlmsghdr>) throws(NetlinkError) -> UInt32 {
        guard let gen = nftnl_gen_alloc() else { throw .protocolError("out of memory") }
        defer { nftnl_gen_free(gen) }
        guard nftnl_gen_nlmsg_parse(nlh, gen) >= 0 else { throw .protocolError("unparsable NEWGEN message") }
        return nftnl_gen_get_u32(gen, UInt16(NFTNL_GEN_ID))
    }

    // MARK: commit

    /// Sends the batch and reads the kernel's answer: `.rejected` naming each refused operation,
    /// `.generationChanged` for a stale `expectedGeneration` (ERESTART on batch-begin), the new
    /// generation on success, and `.outcomeUnknown` when replies were lost (ENOBUFS) or the
    /// kernel's confirmation (NEWGEN) never came.
    @discardableResult
    public func commit(_ batch: Batch, expectedGeneration: UInt32? = nil) throws(NetlinkError) -> CommitResult {
        guard !batch.isEmpty else {
            return CommitResult(generation: try generation(), messages: 0, bytes: 0)
        }
        let encoded = try EncodedBatch(batch, firstSequence: socket.reserveSequence(0), expectedGeneration: expectedGeneration)
        _ = socket.reserveSequence(encoded.messageCount)
        try encoded.withBytes { (p, n) throws(NetlinkError) in try socket.send(p, length: n) }

        // The kernel handles the whole batch inside sendmsg: every reply is queued by now.
        // Only failures reply (no NLM_F_ACK), plus the echoed new generation on success.
        var failures: [OperationFailure] = []
        var newGeneration: UInt32?
        var sawOurReply = false
        let newGenType = rampart_nft_msg_type(UInt16(NFT_MSG_NEWGEN.rawValue))
        func handle(_ nlh: UnsafePointer<nlmsghdr>) throws(NetlinkError) {
            let type = nlh.pointee.nlmsg_type
            if type == UInt16(NLMSG_ERROR) {
                var err = rampart_nlerr()
                guard rampart_parse_nlerr(nlh, &err) else { throw .protocolError("truncated error message") }
                let seq = err.seq
                guard seq &- encoded.firstSequence <= encoded.lastSequence &- encoded.firstSequence else { return }
                sawOurReply = true
                if err.error == 0 { return }
                if seq == encoded.firstSequence, err.error == Glibc.ERESTART, let expectedGeneration {
                    throw .generationChanged(expected: expectedGeneration)
                }
                let index = encoded.operationIndex(forSequence: seq)
                failures.append(OperationFailure(index: index, operation: index.map { batch.operations[$0] },
                                                 errno: Errno(err.error),
                                                 kernelMessage: err.message.map { String(cString: $0) }))
            } else if type == newGenType {
                // Only the echo of our own batch counts: a stale one confirms nothing.
                guard nlh.pointee.nlmsg_seq &- encoded.firstSequence <= encoded.lastSequence &- encoded.firstSequence else { return }
                newGeneration = try Self.parseGeneration(nlh)
                sawOurReply = true
            }
        }
        do {
            while try socket.receive(wait: false, handle) {}
            if newGeneration == nil && failures.isEmpty {
                // Nothing of ours queued yet: wait (up to the receive timeout) rather than guess.
                _ = try socket.receive(wait: true, handle)
                while try socket.receive(wait: false, handle) {}
            }
        } catch let error {
            if case .systemCall(_, let e) = error, e == .ENOBUFS {
                socket.drain()
                throw .outcomeUnknown("replies to the batch were lost (ENOBUFS)")
            }
            throw error
        }
        if !failures.isEmpty { throw .rejected(failures.sorted { ($0.index ?? -1) < ($1.index ?? -1) }) }
        guard let newGeneration else {
            throw .outcomeUnknown(sawOurReply ? "the kernel did not confirm the commit (no NEWGEN)"
                                              : "no reply to the batch within the timeout")
        }
        return CommitResult(generation: newGeneration, messages: encoded.operationMessages, bytes: encoded.length)
    }

    // MARK: read-back

    /// How many times `readTable` reads the table before it gives up on getting a consistent
    /// snapshot (every attempt is a full read: a table changed by someone this often is better
    /// reported than chased).
    static let readAttempts = 8

    /// A read that either finished or found that the kernel's state moved underneath it.
    private enum Read<Value> {
        case value(Value)
        /// Why the parts read may not fit together: read again.
        case interrupted(String)

        var interruption: String? {
            if case .interrupted(let why) = self { why } else { nil }
        }
    }

    public func readTable(family: NFTFamily, name: String) throws(NetlinkError) -> TableSnapshot? {
        // A dump spans several datagrams and several requests; if anyone commits meanwhile the
        // parts may not fit together, so read again until the generation held still from
        // before the first request to after the last, and no dump was interrupted.
        var why = ""
        for _ in 0..<Self.readAttempts {
            let before = try generation()
            let read = try readTableOnce(family: family, name: name)
            guard case .value(let result) = read else {
                why = read.interruption ?? ""
                continue
            }
            let after = try generation()
            guard before == after else {
                why = "the generation moved from \(before) to \(after)"
                continue
            }
            guard var snapshot = result else { return nil }
            snapshot.generation = after
            return snapshot
        }
        throw .protocolError("table \(family) \(name) kept changing while being read (\(Self.readAttempts) attempts; last: \(why))")
    }

    private func readTableOnce(family: NFTFamily, name: String) throws(NetlinkError) -> Read<TableSnapshot?> {
        var table: NFTTable?
        let tableRead: Read<Int>
        do {
            tableRead = try request(NFT_MSG_GETTABLE.rawValue, family: family, dump: false, payload: { (nlh) throws(NetlinkError) in
                let t = try NftnlTable(NFTTable(family: family, name: name))
                nftnl_table_nlmsg_build_payload(nlh, t.pointer)
            }) { (nlh) throws(NetlinkError) in table = try Decode.table(nlh) }
        } catch let error {
            if case .systemCall(_, let e) = error, e == .ENOENT { return .value(nil) }
            throw error
        }
        if let why = tableRead.interruption { return .interrupted(why) }
        guard let table else { return .value(nil) }
        var snapshot = TableSnapshot(table: table)
        let chains = try request(NFT_MSG_GETCHAIN.rawValue, family: family, dump: true, payload: { (nlh) throws(NetlinkError) in
            let c = try NftnlChain(NFTChain(family: family, table: name, name: "x"))
            nftnl_chain_unset(c.pointer, UInt16(NFTNL_CHAIN_NAME.rawValue))
            nftnl_chain_nlmsg_build_payload(nlh, c.pointer)
        }, each: { (nlh) throws(NetlinkError) in
            let c = try Decode.chain(nlh)
            if c.table == name { snapshot.chains.append(c) }
        })
        if let why = chains.interruption { return .interrupted(why) }
        for c in snapshot.chains { snapshot.rules[c.name] = [] }
        let rules = try request(NFT_MSG_GETRULE.rawValue, family: family, dump: true, payload: { (nlh) throws(NetlinkError) in
            let r = try NftnlRule(NFTRule(family: family, table: name, chain: "x", expressions: []))
            nftnl_rule_unset(r.pointer, UInt16(NFTNL_RULE_CHAIN.rawValue))
            nftnl_rule_nlmsg_build_payload(nlh, r.pointer)
        }, each: { (nlh) throws(NetlinkError) in
            let r = try Decode.rule(nlh)
            if r.table == name { snapshot.rules[r.chain, default: []].append(r) }
        })
        if let why = rules.interruption { return .interrupted(why) }
        let sets = try request(NFT_MSG_GETSET.rawValue, family: family, dump: true, payload: { (nlh) throws(NetlinkError) in
            let s = try NftnlSet(family: family, table: name, name: "x")
            nftnl_set_unset(s.pointer, UInt16(NFTNL_SET_NAME.rawValue))
            nftnl_set_nlmsg_build_payload(nlh, s.pointer)
        }, each: { (nlh) throws(NetlinkError) in
            let s = try Decode.set(nlh)
            if s.table == name { snapshot.sets.append(s) }
        })
        if let why = sets.interruption { return .interrupted(why) }
        for s in snapshot.sets {
            switch try readElements(family: family, table: name, set: s) {
            case .value(let elements): snapshot.elements[s.name] = elements
            case .interrupted(let why): return .interrupted(why)
            }
        }
        return .value(snapshot)
    }

    public func readRules(family: NFTFamily, table: String, chain: String) throws(NetlinkError) -> [NFTRule]? {
        var rules: [NFTRule] = []
        let read: Read<Int>
        do {
            // A rule dump naming a chain walks only that chain (the kernel finds it by name).
            read = try request(NFT_MSG_GETRULE.rawValue, family: family, dump: true, payload: { (nlh) throws(NetlinkError) in
                let r = try NftnlRule(NFTRule(family: family, table: table, chain: chain, expressions: []))
                nftnl_rule_nlmsg_build_payload(nlh, r.pointer)
            }, each: { (nlh) throws(NetlinkError) in
                let r = try Decode.rule(nlh)
                if r.table == table && r.chain == chain { rules.append(r) }
            })
        } catch let error {
            if case .systemCall(_, let e) = error, e == .ENOENT { return nil }
            throw error
        }
        if read.interruption != nil { return nil }
        return rules
    }

    /// Reads a set's elements. A dump larger than one datagram restarts the kernel's walk of the
    /// set for every datagram; a hash set that is resizing meanwhile (it does so in the
    /// background after growing) can then skip or repeat elements without flagging the dump as
    /// interrupted. Such a dump is trusted only once a second one agrees with it.
    private func readElements(family: NFTFamily, table: String, set s: NFTSetDefinition) throws(NetlinkError) -> Read<[NFTSetElement]> {
        func once() throws(NetlinkError) -> Read<(elements: [NFTSetElement], datagrams: Int)> {
            var raw: [Decode.RawElement] = []
            let read: Read<Int>
            do {
                read = try request(NFT_MSG_GETSETELEM.rawValue, family: family, dump: true, payload: { (nlh) throws(NetlinkError) in
                    let obj = try NftnlSet(family: family, table: table, name: s.name)
                    nftnl_set_elems_nlmsg_build_payload(nlh, obj.pointer)
                }) { (nlh) throws(NetlinkError) in try Decode.elements(nlh, into: &raw) }
            } catch let error {
                // The set was listed a moment ago: someone deleted it since.
                if case .systemCall(_, let e) = error, e == .ENOENT { return .interrupted("set \(s.name) vanished while being read") }
                throw error
            }
            switch read {
            case .interrupted(let why): return .interrupted(why)
            case .value(let datagrams):
                let elements = s.isInterval ? Decode.intervals(raw) : raw.map { NFTSetElement(key: $0.key, verdict: $0.verdict, data: $0.data, comment: $0.comment) }
                return .value((elements, datagrams))
            }
        }
        var elements: [NFTSetElement], datagrams: Int
        switch try once() {
        case .value(let v): (elements, datagrams) = v
        case .interrupted(let why): return .interrupted(why)
        }
        var attempts = 0
        while datagrams > 1 {
            let again: (elements: [NFTSetElement], datagrams: Int)
            switch try once() {
            case .value(let v): again = v
            case .interrupted(let why): return .interrupted(why)
            }
            if again.elements.count == elements.count && Set(again.elements) == Set(elements) { break }
            attempts += 1
            if attempts > 20 { throw .protocolError("elements of set \(s.name) kept changing while being read") }
            (elements, datagrams) = again
        }
        return .value(elements)
    }

    /// Sends one GET request and calls `each` for every object in the reply (one object, or
    /// a whole dump until NLMSG_DONE). `.interrupted` when the objects may not fit together:
    /// the kernel flagged the dump (NLM_F_DUMP_INTR) or answered EINTR/ERESTART, or replies
    /// were lost (ENOBUFS; the socket is drained). Returns the number of datagrams received.
    private func request(_ type: UInt32, family: NFTFamily, dump: Bool,
                         payload: (UnsafeMutablePointer<nlmsghdr>) throws(NetlinkError) -> Void,
                         each: (UnsafePointer<nlmsghdr>) throws(NetlinkError) -> Void) throws(NetlinkError) -> Read<Int> {
        let seq = socket.reserveSequence(1)
        try withScratch(4096) { (buf) throws(NetlinkError) in
            let flags = UInt16(dump ? NLM_F_DUMP : NLM_F_ACK)
            let nlh = nftnl_nlmsg_build_hdr(buf.assumingMemoryBound(to: CChar.self), UInt16(type),
                                            UInt16(family.rawValue), flags, seq)!
            try payload(nlh)
            try socket.send(buf, length: Int(nlh.pointee.nlmsg_len))
        }
        var done = false
        var interrupted: String?
        var datagrams = 0
        while !done {
            datagrams += 1
            let got: Bool
            do {
                got = try socket.receive(wait: true) { (nlh) throws(NetlinkError) in
                    guard nlh.pointee.nlmsg_seq == seq else { return }  // a stale reply to an earlier request
                    if nlh.pointee.nlmsg_flags & UInt16(NLM_F_DUMP_INTR) != 0 {
                        interrupted = "the kernel flagged dump \(type) as interrupted (NLM_F_DUMP_INTR)"
                    }
                    switch Int32(nlh.pointee.nlmsg_type) {
                    case NLMSG_DONE:
                        done = true
                    case NLMSG_ERROR:
                        var err = rampart_nlerr()
                        _ = rampart_parse_nlerr(nlh, &err)
                        done = true  // an error ends the request; 0 is the ack of a non-dump request
                        switch err.error {
                        case 0: break
                        case Glibc.EINTR, Glibc.ERESTART:
                            interrupted = "request \(type) answered \(Errno(err.error))"
                        default:
                            throw .systemCall("netlink request \(type)", Errno(err.error))
                        }
                    default:
                        try each(nlh)
                    }
                }
            } catch let error {
                if case .systemCall(_, let e) = error, e == .ENOBUFS {
                    socket.drain()
                    return .interrupted("replies to request \(type) were lost (ENOBUFS)")
                }
                throw error
            }
            if !got { throw .protocolError("no reply to netlink request \(type)") }
        }
        if let interrupted { return .interrupted(interrupted) }
        return .value(datagrams)
    }
}

/// Zeroed scratch memory for building one request message (the standard library's
/// `withUnsafe...` helpers rethrow untyped errors, which typed throws cannot pass through).
func withScratch<T>(_ size: Int, _ body: (UnsafeMutableRawPointer) throws(NetlinkError) -> T) throws(NetlinkError) -> T {
    let p = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
    p.initializeMemory(as: UInt8.self, repeating: 0, count: size)
    defer { p.deallocate() }
    return try body(p)
}
