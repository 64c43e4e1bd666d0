#if canImport(Glibc)
import Glibc
#endif
import CNetfilter
import RampartSystem

/// What higher layers need from nftables: commit a batch atomically, know the ruleset
/// generation, read a table back. `NFTablesConnection` does it over netlink;
/// `RecordingNFTables` does it in memory and records every batch, for tests without root.
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
}

extension NFTablesClient {
    @discardableResult
    public func commit(_ batch: Batch) throws(NetlinkError) -> CommitResult {
        try commit(batch, expectedGeneration: nil)
    }
}

/// A netlink connection to the nftables of one network namespace.
///
/// Not Sendable: give it one owner (an actor in the daemon), since replies are matched to the
/// request that is in flight.
public final class NFTablesConnection: NFTablesClient {
    private let socket: NetlinkSocket
    public let namespace: NetworkNamespace

    /// Opens a socket in `namespace` (the calling thread's by default).
    public init(namespace: NetworkNamespace = .current) throws(NetlinkError) {
        self.namespace = namespace
        socket = try NetlinkSocket(namespace: namespace)
        // Requests that wait for a reply (generation, dumps) never block for ever.
        try socket.setReceiveTimeout(seconds: 10)
    }

    /// Test hook: a tiny receive buffer makes the kernel drop replies (ENOBUFS).
    func shrinkReceiveBufferForTesting(bytes: Int32) throws(NetlinkError) {
        try socket.setReceiveBufferForTesting(bytes)
    }

    // MARK: generation

    public func generation() throws(NetlinkError) -> UInt32 {
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
                newGeneration = try Self.parseGeneration(nlh)
                sawOurReply = true
            }
        }
        do {
            while try socket.receive(wait: false, handle) {}
            if newGeneration == nil && failures.isEmpty {
                // Nothing queued yet: wait briefly rather than guess.
                _ = try socket.receive(wait: true, handle)
                while try socket.receive(wait: false, handle) {}
            }
        } catch let error {
            if case .systemCall(_, let e) = error, e == .ENOBUFS {
                throw .outcomeUnknown("replies to the batch were lost (ENOBUFS)")
            }
            if case .systemCall(_, let e) = error, e == .EAGAIN, !sawOurReply {
                throw .outcomeUnknown("no reply to the batch within the timeout")
            }
            throw error
        }
        if !failures.isEmpty { throw .rejected(failures.sorted { ($0.index ?? -1) < ($1.index ?? -1) }) }
        guard let newGeneration else { throw .outcomeUnknown("the kernel did not confirm the commit") }
        return CommitResult(generation: newGeneration, messages: encoded.operationMessages, bytes: encoded.length)
    }

    // MARK: read-back

    public func readTable(family: NFTFamily, name: String) throws(NetlinkError) -> TableSnapshot? {
        // A dump spans several datagrams and several requests; if anyone commits meanwhile the
        // parts may not fit together, so read again until the generation held still.
        for _ in 0..<8 {
            let before = try generation()
            guard var snapshot = try readTableOnce(family: family, name: name) else { return nil }
            let after = try generation()
            if before == after {
                snapshot.generation = after
                return snapshot
            }
        }
        throw .protocolError("table \(family) \(name) kept changing while being read")
    }

    private func readTableOnce(family: NFTFamily, name: String) throws(NetlinkError) -> TableSnapshot? {
        var table: NFTTable?
        do {
            _ = try request(NFT_MSG_GETTABLE.rawValue, family: family, dump: false, payload: { (nlh) throws(NetlinkError) in
                let t = try NftnlTable(NFTTable(family: family, name: name))
                nftnl_table_nlmsg_build_payload(nlh, t.pointer)
            }) { (nlh) throws(NetlinkError) in table = try Decode.table(nlh) }
        } catch let error {
            if case .systemCall(_, let e) = error, e == .ENOENT { return nil }
            throw error
        }
        guard let table else { return nil }
        var snapshot = TableSnapshot(table: table)
        _ = try request(NFT_MSG_GETCHAIN.rawValue, family: family, dump: true, payload: { (nlh) throws(NetlinkError) in
            let c = try NftnlChain(NFTChain(family: family, table: name, name: "x"))
            nftnl_chain_unset(c.pointer, UInt16(NFTNL_CHAIN_NAME.rawValue))
            nftnl_chain_nlmsg_build_payload(nlh, c.pointer)
        }) { (nlh) throws(NetlinkError) in
            let c = try Decode.chain(nlh)
            if c.table == name { snapshot.chains.append(c) }
        }
        for c in snapshot.chains { snapshot.rules[c.name] = [] }
        _ = try request(NFT_MSG_GETRULE.rawValue, family: family, dump: true, payload: { (nlh) throws(NetlinkError) in
            let r = try NftnlRule(NFTRule(family: family, table: name, chain: "x", expressions: []))
            nftnl_rule_unset(r.pointer, UInt16(NFTNL_RULE_CHAIN.rawValue))
            nftnl_rule_nlmsg_build_payload(nlh, r.pointer)
        }) { (nlh) throws(NetlinkError) in
            let r = try Decode.rule(nlh)
            if r.table == name { snapshot.rules[r.chain, default: []].append(r) }
        }
        _ = try request(NFT_MSG_GETSET.rawValue, family: family, dump: true, payload: { (nlh) throws(NetlinkError) in
            let s = try NftnlSet(family: family, table: name, name: "x")
            nftnl_set_unset(s.pointer, UInt16(NFTNL_SET_NAME.rawValue))
            nftnl_set_nlmsg_build_payload(nlh, s.pointer)
        }) { (nlh) throws(NetlinkError) in
            let s = try Decode.set(nlh)
            if s.table == name { snapshot.sets.append(s) }
        }
        for s in snapshot.sets {
            snapshot.elements[s.name] = try readElements(family: family, table: name, set: s)
        }
        return snapshot
    }

    /// Reads a set's elements. A dump larger than one datagram restarts the kernel's walk of the
    /// set for every datagram; a hash set that is resizing meanwhile (it does so in the
    /// background after growing) can then skip or repeat elements without flagging the dump as
    /// interrupted. Such a dump is trusted only once a second one agrees with it.
    private func readElements(family: NFTFamily, table: String, set s: NFTSetDefinition) throws(NetlinkError) -> [NFTSetElement] {
        func once() throws(NetlinkError) -> (elements: [NFTSetElement], datagrams: Int) {
            var raw: [(key: [UInt8], isEnd: Bool, verdict: NFTVerdict?)] = []
            let datagrams = try request(NFT_MSG_GETSETELEM.rawValue, family: family, dump: true, payload: { (nlh) throws(NetlinkError) in
                let obj = try NftnlSet(family: family, table: table, name: s.name)
                nftnl_set_elems_nlmsg_build_payload(nlh, obj.pointer)
            }) { (nlh) throws(NetlinkError) in try Decode.elements(nlh, into: &raw) }
            let elements = s.isInterval ? Decode.intervals(raw) : raw.map { NFTSetElement(key: $0.key, verdict: $0.verdict) }
            return (elements, datagrams)
        }
        var (elements, datagrams) = try once()
        var attempts = 0
        while datagrams > 1 {
            let again = try once()
            if again.elements.count == elements.count && Set(again.elements) == Set(elements) { break }
            attempts += 1
            if attempts > 20 { throw .protocolError("elements of set \(s.name) kept changing while being read") }
            (elements, datagrams) = again
        }
        return elements
    }

    /// Sends one GET request and calls `each` for every object in the reply (one object, or
    /// a whole dump until NLMSG_DONE). A dump interrupted by a concurrent change is an error
    /// the caller retries.
    private func request(_ type: UInt32, family: NFTFamily, dump: Bool,
                         payload: (UnsafeMutablePointer<nlmsghdr>) throws(NetlinkError) -> Void,
                         each: (UnsafePointer<nlmsghdr>) throws(NetlinkError) -> Void) throws(NetlinkError) -> Int {
        let seq = socket.reserveSequence(1)
        try withScratch(4096) { (buf) throws(NetlinkError) in
            let flags = UInt16(dump ? NLM_F_DUMP : NLM_F_ACK)
            let nlh = nftnl_nlmsg_build_hdr(buf.assumingMemoryBound(to: CChar.self), UInt16(type),
                                            UInt16(family.rawValue), flags, seq)!
            try payload(nlh)
            try socket.send(buf, length: Int(nlh.pointee.nlmsg_len))
        }
        var done = false
        var interrupted = false
        var datagrams = 0
        while !done {
            datagrams += 1
            let got = try socket.receive(wait: true) { (nlh) throws(NetlinkError) in
                guard nlh.pointee.nlmsg_seq == seq else { return }  // a stale reply to an earlier request
                if nlh.pointee.nlmsg_flags & UInt16(NLM_F_DUMP_INTR) != 0 { interrupted = true }
                switch Int32(nlh.pointee.nlmsg_type) {
                case NLMSG_DONE:
                    done = true
                case NLMSG_ERROR:
                    var err = rampart_nlerr()
                    _ = rampart_parse_nlerr(nlh, &err)
                    if err.error != 0 { throw .systemCall("netlink request \(type)", Errno(err.error)) }
                    done = true  // the ack of a non-dump request
                default:
                    try each(nlh)
                }
            }
            if !got { throw .protocolError("no reply to netlink request \(type)") }
        }
        if interrupted { throw .protocolError("dump interrupted by a concurrent change") }
        return datagrams
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
