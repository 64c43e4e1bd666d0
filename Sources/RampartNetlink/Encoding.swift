#if canImport(Glibc)
import Glibc
#endif
import CNetfilter

/// Turns a `Batch` into the bytes of one netlink datagram: batch begin, one or more messages per
/// operation, batch end. It also remembers which operation each message belongs to, so an
/// error reply (which names a sequence number) can name the operation that caused it.
struct EncodedBatch: ~Copyable {
    private var buffer: UnsafeMutableRawPointer
    private var capacity: Int
    private(set) var length = 0
    /// Sequence number of the batch-begin message; message k of the datagram has `firstSequence + k`.
    let firstSequence: UInt32
    /// For message k of the datagram, the index of its operation (nil for begin and end).
    private(set) var operationOfMessage: [Int?] = []
    private var nextSetID: UInt32 = 0
    /// Whether element lists (and the echo carrier) are written by libnftnl's objects (one per
    /// set and per element, as before `ElementListWriter`): only for the test that both write
    /// the same bytes, and the benchmark that compares them.
    private let elementsThroughLibnftnl: Bool

    /// The number of messages that carry operations (batch begin, end and the echo carrier excluded).
    var operationMessages: Int { operationOfMessage.compactMap { $0 }.count }

    /// Every message of an operation must fit in what is left of the buffer: element lists
    /// are cut into messages of at most 64 KiB (one attribute has a 16-bit length), and the
    /// iterator writes one element past that before it notices, so keep twice that free.
    private static let headroom = 160 * 1024

    init(_ batch: Batch, firstSequence: UInt32, expectedGeneration: UInt32?, elementsThroughLibnftnl: Bool = false) throws(NetlinkError) {
        self.firstSequence = firstSequence
        self.elementsThroughLibnftnl = elementsThroughLibnftnl
        capacity = max(Self.headroom * 2, batch.operations.count * 256)
        buffer = .allocate(byteCount: capacity, alignment: 16)
        // Every stored property is set from here on, so a throw below destroys `self` and its
        // `deinit` frees the buffer (freeing it here too was a double free: a comment too long
        // for an element crashed the process instead of failing the commit).
        try append(operation: nil) { buf, seq in
            rampart_batch_begin(buf, seq, expectedGeneration != nil, expectedGeneration ?? 0)
        }
        // The first message after batch-begin carries NLM_F_ECHO: the kernel then sends us
        // the new generation (NFT_MSG_NEWGEN) once the transaction commits, a positive
        // confirmation that needs no extra round trip. But the echo also returns every
        // notification that message causes (deleting a table echoes each of its rules and
        // chains; adding 100k elements echoes 100k elements), which would overflow the
        // receive buffer. So the echo rides on a message of its own that causes at most one
        // notification: NEWTABLE of the first operation's table (a no-op when the table
        // exists; if it does not, the batch's own operations decide whether it stays).
        // A batch that starts by adding a table needs no carrier: that message is one.
        let startsWithTable: Bool
        if case .addTable? = batch.operations.first { startsWithTable = true } else { startsWithTable = false }
        if !startsWithTable, let (family, table) = batch.operations.first?.tableIdentity {
            if elementsThroughLibnftnl {
                try append(NFT_MSG_NEWTABLE.rawValue, family, NLM_F_CREATE, echo: true, index: nil,
                           NftnlTable(NFTTable(family: family, name: table)))
            } else {
                // A table with a name and nothing else: its one attribute written directly, as
                // libnftnl writes it (every commit sends this; an `nftnl_table` was a tenth of
                // a plug's encoding).
                try checkName(table, "table")
                let hdr = header(NFT_MSG_NEWTABLE.rawValue, family, NLM_F_CREATE, echo: true)
                try append(operation: nil) { b, s in
                    guard let n = hdr(b, s) else { return nil }
                    mnl_attr_put_strz(n, UInt16(NFTA_TABLE_NAME.rawValue), table)
                    return n
                }
            }
        }
        for (index, op) in batch.operations.enumerated() {
            try encode(op, index: index, echo: index == 0 && startsWithTable)
        }
        try append(operation: nil) { buf, seq in nftnl_batch_end(buf, seq) }
    }

    deinit { buffer.deallocate() }

    func withBytes<T>(_ body: (UnsafeRawPointer, Int) throws(NetlinkError) -> T) throws(NetlinkError) -> T {
        try body(UnsafeRawPointer(buffer), length)
    }

    /// Index of the operation a reply's sequence number refers to.
    func operationIndex(forSequence seq: UInt32) -> Int? {
        let k = Int(seq &- firstSequence)
        guard k >= 0, k < operationOfMessage.count else { return nil }
        return operationOfMessage[k]
    }

    /// Every message of the datagram, batch begin and end included.
    var messageCount: Int { operationOfMessage.count }

    var lastSequence: UInt32 { firstSequence &+ UInt32(operationOfMessage.count) &- 1 }

    // MARK: building

    private mutating func ensureHeadroom() {
        guard capacity - length < Self.headroom else { return }
        let newCapacity = max(capacity * 2, length + Self.headroom * 2)
        let newBuffer = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        newBuffer.copyMemory(from: buffer, byteCount: length)
        buffer.deallocate()
        buffer = newBuffer
        capacity = newCapacity
    }

    /// Appends one message built by `build` at the end of the buffer.
    private mutating func append(operation: Int?, _ build: (UnsafeMutablePointer<CChar>, UInt32) throws(NetlinkError) -> UnsafeMutablePointer<nlmsghdr>?) throws(NetlinkError) {
        ensureHeadroom()
        let seq = firstSequence &+ UInt32(operationOfMessage.count)
        let start = (buffer + length).assumingMemoryBound(to: CChar.self)
        guard let nlh = try build(start, seq) else { throw .protocolError("libnftnl could not build a message") }
        let len = Int(nlh.pointee.nlmsg_len)
        guard len <= capacity - length else { fatalError("netlink message overran the batch buffer") }
        length += Int(rampart_nlmsg_align(UInt32(len)))
        operationOfMessage.append(operation)
    }

    private mutating func header(_ type: UInt32, _ family: NFTFamily, _ flags: Int32, echo: Bool) -> (UnsafeMutablePointer<CChar>, UInt32) -> UnsafeMutablePointer<nlmsghdr>? {
        let f = UInt16(flags | (echo ? NLM_F_ECHO : 0))
        return { buf, seq in nftnl_nlmsg_build_hdr(buf, UInt16(type), UInt16(family.rawValue), f, seq) }
    }

    /// Appends one message carrying `object`'s payload.
    private mutating func append(_ type: UInt32, _ family: NFTFamily, _ flags: Int32, echo: Bool, index: Int?,
                                 _ object: some NftnlPayload) throws(NetlinkError) {
        let hdr = header(type, family, flags, echo: echo)
        try append(operation: index) { b, s in
            let n = hdr(b, s)
            if let n { object.buildPayload(n) }
            return n
        }
    }

    private mutating func encode(_ op: BatchOperation, index: Int, echo: Bool) throws(NetlinkError) {
        switch op {
        case .addTable(let t):
            try append(NFT_MSG_NEWTABLE.rawValue, t.family, NLM_F_CREATE, echo: echo, index: index, NftnlTable(t))
        case .deleteTable(let family, let name):
            try append(NFT_MSG_DELTABLE.rawValue, family, 0, echo: echo, index: index, NftnlTable(NFTTable(family: family, name: name)))
        case .addChain(let c):
            try append(NFT_MSG_NEWCHAIN.rawValue, c.family, NLM_F_CREATE, echo: echo, index: index, NftnlChain(c))
        case .deleteChain(let family, let table, let name):
            try append(NFT_MSG_DELCHAIN.rawValue, family, 0, echo: echo, index: index,
                       NftnlChain(NFTChain(family: family, table: table, name: name)))
        case .flushChain(let family, let table, let chain):
            // DELRULE with a chain and no handle removes every rule of that chain.
            try append(NFT_MSG_DELRULE.rawValue, family, 0, echo: echo, index: index,
                       NftnlRule(NFTRule(family: family, table: table, chain: chain, expressions: [])))
        case .addRule(let r):
            try append(NFT_MSG_NEWRULE.rawValue, r.family, NLM_F_CREATE | NLM_F_APPEND, echo: echo, index: index, NftnlRule(r))
        case .insertRule(let r, let before):
            // NEWRULE with a position and without NLM_F_APPEND goes before that rule.
            let obj = try NftnlRule(r)
            nftnl_rule_set_u64(obj.pointer, UInt16(NFTNL_RULE_POSITION.rawValue), before)
            try append(NFT_MSG_NEWRULE.rawValue, r.family, NLM_F_CREATE, echo: echo, index: index, obj)
        case .deleteRule(let family, let table, let chain, let handle):
            let obj = try NftnlRule(NFTRule(family: family, table: table, chain: chain, expressions: []))
            nftnl_rule_set_u64(obj.pointer, UInt16(NFTNL_RULE_HANDLE.rawValue), handle)
            try append(NFT_MSG_DELRULE.rawValue, family, 0, echo: echo, index: index, obj)
        case .addSet(let d):
            let obj = try NftnlSet(d)
            // The kernel requires a batch-local set id on creation (it lets later messages of the
            // same batch refer to an anonymous set); named sets are also found by name.
            nextSetID += 1
            nftnl_set_set_u32(obj.pointer, UInt16(NFTNL_SET_ID.rawValue), nextSetID)
            try append(NFT_MSG_NEWSET.rawValue, d.family, NLM_F_CREATE, echo: echo, index: index, obj)
        case .deleteSet(let family, let table, let name):
            try append(NFT_MSG_DELSET.rawValue, family, 0, echo: echo, index: index, NftnlSet(family: family, table: table, name: name))
        case .flushSet(let family, let table, let name):
            // DELSETELEM without an element list flushes the set.
            try append(NFT_MSG_DELSETELEM.rawValue, family, 0, echo: echo, index: index,
                       NftnlSetElements(try NftnlSet(family: family, table: table, name: name)))
        case .addElements(let family, let table, let set, let elements):
            try encodeElements(NFT_MSG_NEWSETELEM.rawValue, NLM_F_CREATE, family, table, set, elements, index: index, echo: echo)
        case .deleteElements(let family, let table, let set, let elements):
            try encodeElements(NFT_MSG_DELSETELEM.rawValue, 0, family, table, set, elements, index: index, echo: echo)
        }
    }

    /// Element lists (`ElementListWriter`, or libnftnl's objects when `elementsThroughLibnftnl`).
    private mutating func encodeElements(_ type: UInt32, _ flags: Int32, _ family: NFTFamily, _ table: String, _ set: String,
                                         _ elements: [NFTSetElement], index: Int, echo: Bool) throws(NetlinkError) {
        guard !elements.isEmpty else { return }
        guard !elementsThroughLibnftnl else {
            return try encodeElementsThroughLibnftnl(type, flags, family, table, set, elements, index: index, echo: echo)
        }
        let writer = try ElementListWriter(table: table, set: set, elements: elements)
        let total = writer.count
        var next = 0
        var first = true
        while next < total {
            let hdr = header(type, family, flags, echo: echo && first)
            let before = next
            try append(operation: index) { b, s in
                guard let n = hdr(b, s) else { return nil }
                next = writer.write(from: next, into: n)
                return n
            }
            // An element that fits in no message would loop here forever (none of Rampart's
            // can: keys, values and comments are bounded far below 64 KiB).
            guard next > before else { throw .protocolError("set \(set): an element larger than one netlink attribute") }
            first = false
        }
    }

    /// Element lists are one netlink attribute with a 16-bit length: libnftnl's iterator fills
    /// one message up to that limit and says whether elements remain for the next.
    private mutating func encodeElementsThroughLibnftnl(_ type: UInt32, _ flags: Int32, _ family: NFTFamily, _ table: String, _ set: String,
                                                        _ elements: [NFTSetElement], index: Int, echo: Bool) throws(NetlinkError) {
        let obj = try NftnlSet(family: family, table: table, name: set)
        for e in elements { try obj.addElement(e) }
        guard let iter = nftnl_set_elems_iter_create(obj.pointer) else { throw .protocolError("out of memory") }
        defer { nftnl_set_elems_iter_destroy(iter) }
        var more = true
        var first = true
        while more {
            let hdr = header(type, family, flags, echo: echo && first)
            try append(operation: index) { b, s in
                guard let n = hdr(b, s) else { return nil }
                more = nftnl_set_elems_nlmsg_build_payload_iter(n, iter) == 1
                return n
            }
            first = false
        }
    }
}

extension Batch {
    /// The length of the datagram this batch is sent as, encoded and thrown away (no socket):
    /// for benchmarks of the encoding alone. `elementsThroughLibnftnl`: element lists written
    /// as before `ElementListWriter` (libnftnl objects), to compare the two.
    public func encodedLength(elementsThroughLibnftnl: Bool = false) throws(NetlinkError) -> Int {
        try EncodedBatch(self, firstSequence: 1, expectedGeneration: nil, elementsThroughLibnftnl: elementsThroughLibnftnl).length
    }
}

// MARK: - libnftnl objects with one owner each

/// A libnftnl object that can write itself as the payload of a netlink message.
protocol NftnlPayload {
    func buildPayload(_ nlh: UnsafeMutablePointer<nlmsghdr>)
}

extension NftnlTable: NftnlPayload {
    func buildPayload(_ nlh: UnsafeMutablePointer<nlmsghdr>) { nftnl_table_nlmsg_build_payload(nlh, pointer) }
}

extension NftnlChain: NftnlPayload {
    func buildPayload(_ nlh: UnsafeMutablePointer<nlmsghdr>) { nftnl_chain_nlmsg_build_payload(nlh, pointer) }
}

extension NftnlRule: NftnlPayload {
    func buildPayload(_ nlh: UnsafeMutablePointer<nlmsghdr>) { nftnl_rule_nlmsg_build_payload(nlh, pointer) }
}

extension NftnlSet: NftnlPayload {
    func buildPayload(_ nlh: UnsafeMutablePointer<nlmsghdr>) { nftnl_set_nlmsg_build_payload(nlh, pointer) }
}

/// A set's element list (empty: the whole set, i.e. a flush) as a message payload.
struct NftnlSetElements: NftnlPayload {
    let set: NftnlSet
    init(_ set: NftnlSet) { self.set = set }
    func buildPayload(_ nlh: UnsafeMutablePointer<nlmsghdr>) { nftnl_set_elems_nlmsg_build_payload(nlh, set.pointer) }
}

/// Owns a `struct nftnl_table`.
final class NftnlTable {
    let pointer: OpaquePointer
    init(_ t: NFTTable) throws(NetlinkError) {
        guard let p = nftnl_table_alloc() else { throw .protocolError("out of memory") }
        pointer = p
        nftnl_table_set_u32(p, UInt16(NFTNL_TABLE_FAMILY.rawValue), UInt32(t.family.rawValue))
        try checkName(t.name, "table")
        nftnl_table_set_str(p, UInt16(NFTNL_TABLE_NAME.rawValue), t.name)
        if t.flags != 0 { nftnl_table_set_u32(p, UInt16(NFTNL_TABLE_FLAGS.rawValue), t.flags) }
        try setUserData(comment: t.comment, tag: t.tag) { _ = nftnl_table_set_data(p, UInt16(NFTNL_TABLE_USERDATA.rawValue), $0, $1) }
    }
    deinit { nftnl_table_free(pointer) }
}

/// Encodes a comment and a tag as nft's userdata TLVs and hands the bytes to `set` (an object's
/// `…_set_data`, which copies them); nothing when both are nil.
func setUserData(comment: String?, tag: [UInt8]?, _ set: (UnsafeRawPointer?, UInt32) -> Void) throws(NetlinkError) {
    let udata = try UserData.encode(comment: comment, tag: tag)
    if !udata.isEmpty { udata.withUnsafeBytes { set($0.baseAddress, UInt32($0.count)) } }
}

/// Owns a `struct nftnl_chain`.
final class NftnlChain {
    let pointer: OpaquePointer
    init(_ c: NFTChain) throws(NetlinkError) {
        guard let p = nftnl_chain_alloc() else { throw .protocolError("out of memory") }
        pointer = p
        try checkName(c.table, "table")
        try checkName(c.name, "chain")
        nftnl_chain_set_u32(p, UInt16(NFTNL_CHAIN_FAMILY.rawValue), UInt32(c.family.rawValue))
        nftnl_chain_set_str(p, UInt16(NFTNL_CHAIN_TABLE.rawValue), c.table)
        nftnl_chain_set_str(p, UInt16(NFTNL_CHAIN_NAME.rawValue), c.name)
        if let base = c.base {
            nftnl_chain_set_str(p, UInt16(NFTNL_CHAIN_TYPE.rawValue), base.type)
            nftnl_chain_set_u32(p, UInt16(NFTNL_CHAIN_HOOKNUM.rawValue), base.hook.rawValue)
            nftnl_chain_set_s32(p, UInt16(NFTNL_CHAIN_PRIO.rawValue), base.priority)
            nftnl_chain_set_u32(p, UInt16(NFTNL_CHAIN_POLICY.rawValue), base.policy.rawValue)
        }
        try setUserData(comment: c.comment, tag: c.tag) { _ = nftnl_chain_set_data(p, UInt16(NFTNL_CHAIN_USERDATA.rawValue), $0, $1) }
    }
    deinit { nftnl_chain_free(pointer) }
}

/// Owns a `struct nftnl_rule` and its expressions.
final class NftnlRule {
    let pointer: OpaquePointer
    init(_ r: NFTRule) throws(NetlinkError) {
        guard let p = nftnl_rule_alloc() else { throw .protocolError("out of memory") }
        pointer = p
        try checkName(r.table, "table")
        try checkName(r.chain, "chain")
        nftnl_rule_set_u32(p, UInt16(NFTNL_RULE_FAMILY.rawValue), UInt32(r.family.rawValue))
        nftnl_rule_set_str(p, UInt16(NFTNL_RULE_TABLE.rawValue), r.table)
        nftnl_rule_set_str(p, UInt16(NFTNL_RULE_CHAIN.rawValue), r.chain)
        for e in r.expressions {
            // nftnl_rule_add_expr takes ownership of the expression.
            nftnl_rule_add_expr(p, try makeExpression(e))
        }
        try setUserData(comment: r.comment, tag: r.tag) { _ = nftnl_rule_set_data(p, UInt16(NFTNL_RULE_USERDATA.rawValue), $0, $1) }
    }
    deinit { nftnl_rule_free(pointer) }
}

/// Owns a `struct nftnl_set` (and the elements added to it).
final class NftnlSet {
    let pointer: OpaquePointer
    let definition: NFTSetDefinition?

    init(family: NFTFamily, table: String, name: String) throws(NetlinkError) {
        guard let p = nftnl_set_alloc() else { throw .protocolError("out of memory") }
        pointer = p
        definition = nil
        try checkName(table, "table")
        try checkName(name, "set")
        nftnl_set_set_u32(p, UInt16(NFTNL_SET_FAMILY.rawValue), UInt32(family.rawValue))
        nftnl_set_set_str(p, UInt16(NFTNL_SET_TABLE.rawValue), table)
        nftnl_set_set_str(p, UInt16(NFTNL_SET_NAME.rawValue), name)
    }

    convenience init(_ d: NFTSetDefinition) throws(NetlinkError) {
        try self.init(family: d.family, table: d.table, name: d.name)
        nftnl_set_set_u32(pointer, UInt16(NFTNL_SET_FLAGS.rawValue), d.kernelFlags)
        nftnl_set_set_u32(pointer, UInt16(NFTNL_SET_KEY_TYPE.rawValue), d.keyType.rawValue)
        nftnl_set_set_u32(pointer, UInt16(NFTNL_SET_KEY_LEN.rawValue), d.keyLength)
        if let size = d.size { nftnl_set_set_u32(pointer, UInt16(NFTNL_SET_DESC_SIZE.rawValue), size) }
        if d.isVerdictMap {
            nftnl_set_set_u32(pointer, UInt16(NFTNL_SET_DATA_TYPE.rawValue), NFT_DATA_VERDICT.rawValue)
            nftnl_set_set_u32(pointer, UInt16(NFTNL_SET_DATA_LEN.rawValue), 0)
        } else if let data = d.dataType {
            guard d.dataLength > 0 else { throw .protocolError("set \(d.name): map data without a length") }
            nftnl_set_set_u32(pointer, UInt16(NFTNL_SET_DATA_TYPE.rawValue), data.rawValue)
            nftnl_set_set_u32(pointer, UInt16(NFTNL_SET_DATA_LEN.rawValue), d.dataLength)
        }
        // nft needs the key's byte order to print elements (an ifname is a string, in host
        // order; without this nft prints every name as "").
        var order = UserData()
        if let typeof = d.keyType.nftTypeofUserData {
            order.bytes = typeof
        } else {
            order.put(UserData.setKeyByteOrderType, withUnsafeBytes(of: d.keyType.nftByteOrder) { Array($0) })
        }
        if let data = d.dataType {
            order.put(UserData.setDataByteOrderType, withUnsafeBytes(of: data.nftByteOrder) { Array($0) })
        }
        let udata = try UserData.encode(comment: d.comment, commentType: UserData.setCommentType, tag: d.tag, prefix: order)
        udata.withUnsafeBytes { _ = nftnl_set_set_data(pointer, UInt16(NFTNL_SET_USERDATA.rawValue), $0.baseAddress, UInt32($0.count)) }
    }

    /// Adds one element (two for a bounded interval: its start and its exclusive end).
    func addElement(_ e: NFTSetElement) throws(NetlinkError) {
        try add(key: e.key, flags: 0, verdict: e.verdict, data: e.data, comment: e.comment)
        if let end = e.rangeEnd {
            try add(key: end, flags: UInt32(NFT_SET_ELEM_INTERVAL_END.rawValue), verdict: nil, data: nil, comment: nil)
        }
    }

    private func add(key: [UInt8], flags: UInt32, verdict: NFTVerdict?, data: [UInt8]?, comment: String?) throws(NetlinkError) {
        // Checked before allocating, so that nothing leaks on a bad comment.
        let udata = try comment.map { c throws(NetlinkError) in try UserData.encode(comment: c, commentType: UserData.elementCommentType, tag: nil) }
        guard let el = nftnl_set_elem_alloc() else { throw .protocolError("out of memory") }
        key.withUnsafeBytes { _ = nftnl_set_elem_set(el, UInt16(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32($0.count)) }
        if flags != 0 { nftnl_set_elem_set_u32(el, UInt16(NFTNL_SET_ELEM_FLAGS), flags) }
        if let data { data.withUnsafeBytes { _ = nftnl_set_elem_set(el, UInt16(NFTNL_SET_ELEM_DATA), $0.baseAddress, UInt32($0.count)) } }
        if let udata { udata.withUnsafeBytes { _ = nftnl_set_elem_set(el, UInt16(NFTNL_SET_ELEM_USERDATA), $0.baseAddress, UInt32($0.count)) } }
        if let verdict {
            nftnl_set_elem_set_u32(el, UInt16(NFTNL_SET_ELEM_VERDICT), UInt32(bitPattern: verdict.code))
            if let chain = verdict.target {
                do { try checkName(chain, "chain") } catch { nftnl_set_elem_free(el); throw error }
                nftnl_set_elem_set_str(el, UInt16(NFTNL_SET_ELEM_CHAIN), chain)
            }
        }
        // nftnl_set_elem_add takes ownership of the element.
        nftnl_set_elem_add(pointer, el)
    }

    deinit { nftnl_set_free(pointer) }
}

/// Kernel object names are 1-255 bytes without NUL (NFT_NAME_MAXLEN is 256 with the NUL).
func checkName(_ name: String, _ kind: String) throws(NetlinkError) {
    let n = name.utf8.count
    guard n > 0, n < 256, !name.utf8.contains(0) else {
        throw .protocolError("invalid \(kind) name \"\(name.prefix(40))\": must be 1-255 bytes without NUL")
    }
}

/// Builds a libnftnl expression; the caller (a rule) takes ownership.
private func makeExpression(_ e: NFTExpr) throws(NetlinkError) -> OpaquePointer {
    if case .foreign(let name) = e { throw .protocolError("cannot write foreign expression \(name)") }
    guard let x = nftnl_expr_alloc(e.kind) else { throw .protocolError("libnftnl lacks expression \(e.kind)") }
    func u32(_ attr: Int, _ v: UInt32) { nftnl_expr_set_u32(x, UInt16(attr), v) }
    func data(_ attr: Int, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { _ = nftnl_expr_set(x, UInt16(attr), $0.baseAddress, UInt32($0.count)) }
    }
    switch e {
    case .foreign:
        break  // rejected above
    case .meta(let key, let dreg):
        u32(NFTNL_EXPR_META_KEY, key.rawValue); u32(NFTNL_EXPR_META_DREG, dreg.rawValue)
    case .cmp(let sreg, let op, let bytes):
        u32(NFTNL_EXPR_CMP_SREG, sreg.rawValue); u32(NFTNL_EXPR_CMP_OP, op.rawValue); data(NFTNL_EXPR_CMP_DATA, bytes)
    case .payload(let base, let offset, let length, let dreg):
        u32(NFTNL_EXPR_PAYLOAD_BASE, base.rawValue); u32(NFTNL_EXPR_PAYLOAD_OFFSET, offset)
        u32(NFTNL_EXPR_PAYLOAD_LEN, length); u32(NFTNL_EXPR_PAYLOAD_DREG, dreg.rawValue)
    case .bitwise(let sreg, let dreg, let mask, let xor):
        u32(NFTNL_EXPR_BITWISE_SREG, sreg.rawValue); u32(NFTNL_EXPR_BITWISE_DREG, dreg.rawValue)
        u32(NFTNL_EXPR_BITWISE_LEN, UInt32(mask.count))
        data(NFTNL_EXPR_BITWISE_MASK, mask); data(NFTNL_EXPR_BITWISE_XOR, xor)
    case .range(let sreg, let op, let from, let to):
        u32(NFTNL_EXPR_RANGE_SREG, sreg.rawValue); u32(NFTNL_EXPR_RANGE_OP, op.rawValue)
        data(NFTNL_EXPR_RANGE_FROM_DATA, from); data(NFTNL_EXPR_RANGE_TO_DATA, to)
    case .lookup(let set, let sreg, let dreg, let inverted):
        do { try checkName(set, "set") } catch { nftnl_expr_free(x); throw error }
        nftnl_expr_set_str(x, UInt16(NFTNL_EXPR_LOOKUP_SET), set)
        u32(NFTNL_EXPR_LOOKUP_SREG, sreg.rawValue)
        if let dreg { u32(NFTNL_EXPR_LOOKUP_DREG, dreg.rawValue) }
        if inverted { u32(NFTNL_EXPR_LOOKUP_FLAGS, UInt32(NFT_LOOKUP_F_INV.rawValue)) }
    case .ct(let key, let dreg):
        u32(NFTNL_EXPR_CT_KEY, key.rawValue); u32(NFTNL_EXPR_CT_DREG, dreg.rawValue)
    case .ctTuple(let key, let reply, let dreg):
        u32(NFTNL_EXPR_CT_KEY, key.rawValue); u32(NFTNL_EXPR_CT_DREG, dreg.rawValue)
        nftnl_expr_set_u8(x, UInt16(NFTNL_EXPR_CT_DIR), reply ? 1 : 0)
    case .counter(let packets, let bytes):
        nftnl_expr_set_u64(x, UInt16(NFTNL_EXPR_CTR_PACKETS), packets)
        nftnl_expr_set_u64(x, UInt16(NFTNL_EXPR_CTR_BYTES), bytes)
    case .immediate(let dreg, let bytes):
        u32(NFTNL_EXPR_IMM_DREG, dreg.rawValue); data(NFTNL_EXPR_IMM_DATA, bytes)
    case .verdict(let v):
        u32(NFTNL_EXPR_IMM_DREG, NFTRegister.verdict.rawValue)
        u32(NFTNL_EXPR_IMM_VERDICT, UInt32(bitPattern: v.code))
        if let chain = v.target {
            do { try checkName(chain, "chain") } catch { nftnl_expr_free(x); throw error }
            nftnl_expr_set_str(x, UInt16(NFTNL_EXPR_IMM_CHAIN), chain)
        }
    }
    return x
}
