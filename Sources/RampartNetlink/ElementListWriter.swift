#if canImport(Glibc)
import Glibc
#endif
import CNetfilter

/// Writes set-element messages' payloads (NEWSETELEM, DELSETELEM) straight into the batch with
/// libmnl's attribute functions, in the layout libnftnl writes them (attribute for attribute,
/// byte for byte: `ElementListWriterTests` compares the two).
///
/// Why not libnftnl's objects: they cost an allocated `nftnl_set` per message and an allocated
/// `nftnl_set_elem` per element, each key, value and comment copied into it, then copied again
/// into the message and everything freed — a fifth of a plug's commit (6 messages, ~6 µs of
/// 34 µs at host-5k) and ~15 ms of a host-5k cold apply (~60,000 elements). This writes each
/// element once, from the `NFTSetElement` itself.
struct ElementListWriter {
    private let table: String
    private let set: String
    private let elements: [NFTSetElement]
    /// Whether some element is an interval (its end is a kernel element of its own).
    private let hasRanges: Bool

    /// Checks every name and comment first, so that a bad one throws before anything is written.
    init(table: String, set: String, elements: [NFTSetElement]) throws(NetlinkError) {
        try checkName(table, "table")
        try checkName(set, "set")
        var hasRanges = false
        // Fields read in place: a copy of each element (five references retained and released)
        // was a third of this loop.
        try elements.withUnsafeBufferPointer { (all) throws(NetlinkError) in
            for i in all.indices {
                if case .jump(let chain)? = all[i].verdict { try checkName(chain, "chain") }
                if case .goto(let chain)? = all[i].verdict { try checkName(chain, "chain") }
                if let c = all[i].comment { try UserData.check(comment: c) }
                if all[i].rangeEnd != nil { hasRanges = true }
            }
        }
        self.table = table
        self.set = set
        self.elements = elements
        self.hasRanges = hasRanges
    }

    /// Kernel elements in all (an interval counts two).
    var count: Int { hasRanges ? elements.reduce(0) { $0 + ($1.rangeEnd == nil ? 1 : 2) } : elements.count }

    /// Writes the payload of one message after its header: the set and table names, then the
    /// kernel elements from `start` as long as the element list stays within one attribute's
    /// 16-bit length. Returns the index of the first kernel element left for the next message.
    func write(from start: Int, into nlh: UnsafeMutablePointer<nlmsghdr>) -> Int {
        mnl_attr_put_strz(nlh, UInt16(NFTA_SET_ELEM_LIST_SET.rawValue), set)
        mnl_attr_put_strz(nlh, UInt16(NFTA_SET_ELEM_LIST_TABLE.rawValue), table)
        let list = mnl_attr_nest_start(nlh, UInt16(NFTA_SET_ELEM_LIST_ELEMENTS.rawValue))!
        let listStart = Int(bitPattern: UnsafeRawPointer(list))
        let total = count
        var k = start
        // Kernel element k is element i, or its interval's end (`end`).
        var (i, end) = hasRanges ? position(of: start) : (start, false)
        elements.withUnsafeBufferPointer { all in
            while k < total {
                // Numbered from 1 in each message, as libnftnl numbers them (the kernel ignores it).
                let nest = mnl_attr_nest_start(nlh, UInt16(k - start + 1))!
                if end {
                    put(key: all[i].rangeEnd!, flags: UInt32(NFT_SET_ELEM_INTERVAL_END.rawValue), nlh)
                } else {
                    put(all[i], nlh)
                }
                mnl_attr_nest_end(nlh, nest)
                if Int(bitPattern: UnsafeRawPointer(nest)) + Int(nest.pointee.nla_len) - listStart > Int(UInt16.max) {
                    // This one does not fit: taken back, it starts the next message.
                    nlh.pointee.nlmsg_len -= UInt32(nest.pointee.nla_len)
                    break
                }
                k += 1
                if !end && all[i].rangeEnd != nil { end = true } else { end = false; i += 1 }
            }
        }
        mnl_attr_nest_end(nlh, list)
        return k
    }

    /// (element, is its interval's end) of kernel element `k`.
    private func position(of k: Int) -> (Int, Bool) {
        var seen = 0
        for (i, e) in elements.enumerated() {
            let n = e.rangeEnd == nil ? 1 : 2
            if k < seen + n { return (i, k > seen) }
            seen += n
        }
        return (elements.count, false)
    }

    private func put(key: borrowing [UInt8], flags: UInt32, _ nlh: UnsafeMutablePointer<nlmsghdr>) {
        if flags != 0 { mnl_attr_put_u32(nlh, UInt16(NFTA_SET_ELEM_FLAGS.rawValue), flags.bigEndian) }
        let nest = mnl_attr_nest_start(nlh, UInt16(NFTA_SET_ELEM_KEY.rawValue))!
        key.withUnsafeBytes { mnl_attr_put(nlh, UInt16(NFTA_DATA_VALUE.rawValue), $0.count, $0.baseAddress) }
        mnl_attr_nest_end(nlh, nest)
    }

    private func put(_ e: borrowing NFTSetElement, _ nlh: UnsafeMutablePointer<nlmsghdr>) {
        put(key: e.key, flags: 0, nlh)
        if let v = e.verdict {
            let data = mnl_attr_nest_start(nlh, UInt16(NFTA_SET_ELEM_DATA.rawValue))!
            let verdict = mnl_attr_nest_start(nlh, UInt16(NFTA_DATA_VERDICT.rawValue))!
            mnl_attr_put_u32(nlh, UInt16(NFTA_VERDICT_CODE.rawValue), UInt32(bitPattern: v.code).bigEndian)
            if let chain = v.target { mnl_attr_put_strz(nlh, UInt16(NFTA_VERDICT_CHAIN.rawValue), chain) }
            mnl_attr_nest_end(nlh, verdict)
            mnl_attr_nest_end(nlh, data)
        }
        if let d = e.data {
            let data = mnl_attr_nest_start(nlh, UInt16(NFTA_SET_ELEM_DATA.rawValue))!
            d.withUnsafeBytes { mnl_attr_put(nlh, UInt16(NFTA_DATA_VALUE.rawValue), $0.count, $0.baseAddress) }
            mnl_attr_nest_end(nlh, data)
        }
        if let c = e.comment { putComment(c, nlh) }
    }

    /// The comment as nft's userdata (one TLV: type, length, the bytes and a NUL), written in
    /// place: building it as an array first was two allocations per element.
    private func putComment(_ comment: String, _ nlh: UnsafeMutablePointer<nlmsghdr>) {
        var c = comment
        c.withUTF8 { utf8 in
            let payload = 2 + utf8.count + 1
            let attr = UnsafeMutableRawPointer(mnl_nlmsg_get_payload_tail(nlh)!)
            attr.storeBytes(of: UInt16(4 + payload), as: UInt16.self)
            attr.storeBytes(of: UInt16(NFTA_SET_ELEM_USERDATA.rawValue), toByteOffset: 2, as: UInt16.self)
            let p = attr + 4
            p.storeBytes(of: UserData.elementCommentType, as: UInt8.self)
            p.storeBytes(of: UInt8(utf8.count + 1), toByteOffset: 1, as: UInt8.self)
            if let base = utf8.baseAddress { (p + 2).copyMemory(from: base, byteCount: utf8.count) }
            let padded = (4 + payload + 3) & ~3
            (p + 2 + utf8.count).initializeMemory(as: UInt8.self, repeating: 0, count: padded - 4 - 2 - utf8.count)
            nlh.pointee.nlmsg_len += UInt32(padded)
        }
    }
}
