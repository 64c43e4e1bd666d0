#if canImport(Glibc)
import Glibc
#endif
import CNetfilter

/// Parsing of the kernel's netlink messages back into Rampart's values.
enum Decode {
    static func string(_ p: UnsafePointer<CChar>?) -> String { p.map { String(cString: $0) } ?? "" }

    static func bytes(_ p: UnsafeRawPointer?, _ len: UInt32) -> [UInt8] {
        guard let p, len > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: Int(len)))
    }

    static func table(_ nlh: UnsafePointer<nlmsghdr>) throws(NetlinkError) -> NFTTable {
        guard let t = nftnl_table_alloc() else { throw .protocolError("out of memory") }
        defer { nftnl_table_free(t) }
        guard nftnl_table_nlmsg_parse(nlh, t) >= 0 else { throw .protocolError("unparsable table message") }
        var len: UInt32 = 0
        let ud = UserData.decode(bytes(nftnl_table_get_data(t, UInt16(NFTNL_TABLE_USERDATA.rawValue), &len), len))
        return NFTTable(family: NFTFamily(rawValue: UInt8(nftnl_table_get_u32(t, UInt16(NFTNL_TABLE_FAMILY.rawValue)))) ?? .inet,
                     name: string(nftnl_table_get_str(t, UInt16(NFTNL_TABLE_NAME.rawValue))),
                     flags: nftnl_table_get_u32(t, UInt16(NFTNL_TABLE_FLAGS.rawValue)),
                     comment: ud.comment, tag: ud.tag)
    }

    static func chain(_ nlh: UnsafePointer<nlmsghdr>) throws(NetlinkError) -> NFTChain {
        guard let c = nftnl_chain_alloc() else { throw .protocolError("out of memory") }
        defer { nftnl_chain_free(c) }
        guard nftnl_chain_nlmsg_parse(nlh, c) >= 0 else { throw .protocolError("unparsable chain message") }
        func attr(_ a: nftnl_chain_attr) -> UInt16 { UInt16(a.rawValue) }
        var base: NFTBaseChainSpec?
        if nftnl_chain_is_set(c, attr(NFTNL_CHAIN_HOOKNUM)) {
            base = NFTBaseChainSpec(type: string(nftnl_chain_get_str(c, attr(NFTNL_CHAIN_TYPE))),
                                 hook: NFTHook(rawValue: nftnl_chain_get_u32(c, attr(NFTNL_CHAIN_HOOKNUM))) ?? .prerouting,
                                 priority: nftnl_chain_get_s32(c, attr(NFTNL_CHAIN_PRIO)),
                                 policy: NFTChainPolicy(rawValue: nftnl_chain_get_u32(c, attr(NFTNL_CHAIN_POLICY))) ?? .accept)
        }
        var len: UInt32 = 0
        let ud = UserData.decode(bytes(nftnl_chain_get_data(c, attr(NFTNL_CHAIN_USERDATA), &len), len))
        return NFTChain(family: NFTFamily(rawValue: UInt8(nftnl_chain_get_u32(c, attr(NFTNL_CHAIN_FAMILY)))) ?? .inet,
                     table: string(nftnl_chain_get_str(c, attr(NFTNL_CHAIN_TABLE))),
                     name: string(nftnl_chain_get_str(c, attr(NFTNL_CHAIN_NAME))),
                     base: base, comment: ud.comment, tag: ud.tag)
    }

    static func rule(_ nlh: UnsafePointer<nlmsghdr>) throws(NetlinkError) -> NFTRule {
        guard let r = nftnl_rule_alloc() else { throw .protocolError("out of memory") }
        defer { nftnl_rule_free(r) }
        guard nftnl_rule_nlmsg_parse(nlh, r) >= 0 else { throw .protocolError("unparsable rule message") }
        func attr(_ a: nftnl_rule_attr) -> UInt16 { UInt16(a.rawValue) }
        var expressions: [NFTExpr] = []
        if let iter = nftnl_expr_iter_create(r) {
            defer { nftnl_expr_iter_destroy(iter) }
            while let x = nftnl_expr_iter_next(iter) {
                expressions.append(expression(x))
            }
        }
        var len: UInt32 = 0
        let ud = nftnl_rule_get_data(r, attr(NFTNL_RULE_USERDATA), &len)
        let (comment, tag) = UserData.decode(bytes(ud, len))
        return NFTRule(family: NFTFamily(rawValue: UInt8(nftnl_rule_get_u32(r, attr(NFTNL_RULE_FAMILY)))) ?? .inet,
                    table: string(nftnl_rule_get_str(r, attr(NFTNL_RULE_TABLE))),
                    chain: string(nftnl_rule_get_str(r, attr(NFTNL_RULE_CHAIN))),
                    expressions: expressions, comment: comment, tag: tag,
                    handle: nftnl_rule_get_u64(r, attr(NFTNL_RULE_HANDLE)))
    }

    /// An expression Rampart does not model (written by someone else) reads back as
    /// `.foreign(name)`: it never equals anything Rampart wants, so drift gets repaired.
    static func expression(_ x: OpaquePointer) -> NFTExpr {
        let name = string(nftnl_expr_get_str(x, UInt16(NFTNL_EXPR_NAME)))
        func u32(_ a: Int) -> UInt32 { nftnl_expr_get_u32(x, UInt16(a)) }
        func has(_ a: Int) -> Bool { nftnl_expr_is_set(x, UInt16(a)) }
        func data(_ a: Int) -> [UInt8] {
            var len: UInt32 = 0
            let p = nftnl_expr_get(x, UInt16(a), &len)
            return bytes(p, len)
        }
        func reg(_ a: Int) -> NFTRegister? { NFTRegister(rawValue: u32(a)) }
        switch name {
        case "meta":
            if has(NFTNL_EXPR_META_DREG), let key = NFTMetaKey(rawValue: u32(NFTNL_EXPR_META_KEY)), let d = reg(NFTNL_EXPR_META_DREG) {
                return .meta(key: key, dreg: d)
            }
        case "cmp":
            if let s = reg(NFTNL_EXPR_CMP_SREG), let op = NFTCmpOp(rawValue: u32(NFTNL_EXPR_CMP_OP)) {
                return .cmp(sreg: s, op: op, data: data(NFTNL_EXPR_CMP_DATA))
            }
        case "payload":
            if has(NFTNL_EXPR_PAYLOAD_DREG), let base = NFTPayloadBase(rawValue: u32(NFTNL_EXPR_PAYLOAD_BASE)), let d = reg(NFTNL_EXPR_PAYLOAD_DREG) {
                return .payload(base: base, offset: u32(NFTNL_EXPR_PAYLOAD_OFFSET), length: u32(NFTNL_EXPR_PAYLOAD_LEN), dreg: d)
            }
        case "bitwise":
            // Only the boolean form (mask/xor); shifts read back as foreign.
            if (!has(NFTNL_EXPR_BITWISE_OP) || u32(NFTNL_EXPR_BITWISE_OP) == 0),
               let s = reg(NFTNL_EXPR_BITWISE_SREG), let d = reg(NFTNL_EXPR_BITWISE_DREG) {
                return .bitwise(sreg: s, dreg: d, mask: data(NFTNL_EXPR_BITWISE_MASK), xor: data(NFTNL_EXPR_BITWISE_XOR))
            }
        case "range":
            if let s = reg(NFTNL_EXPR_RANGE_SREG), let op = NFTCmpOp(rawValue: u32(NFTNL_EXPR_RANGE_OP)) {
                return .range(sreg: s, op: op, from: data(NFTNL_EXPR_RANGE_FROM_DATA), to: data(NFTNL_EXPR_RANGE_TO_DATA))
            }
        case "lookup":
            if let s = reg(NFTNL_EXPR_LOOKUP_SREG) {
                let dreg = has(NFTNL_EXPR_LOOKUP_DREG) ? reg(NFTNL_EXPR_LOOKUP_DREG) : nil
                let flags = has(NFTNL_EXPR_LOOKUP_FLAGS) ? u32(NFTNL_EXPR_LOOKUP_FLAGS) : 0
                return .lookup(set: string(nftnl_expr_get_str(x, UInt16(NFTNL_EXPR_LOOKUP_SET))), sreg: s, dreg: dreg,
                               inverted: flags & UInt32(NFT_LOOKUP_F_INV.rawValue) != 0)
            }
        case "ct":
            if has(NFTNL_EXPR_CT_DREG), !has(NFTNL_EXPR_CT_DIR), let key = NFTCtKey(rawValue: u32(NFTNL_EXPR_CT_KEY)), let d = reg(NFTNL_EXPR_CT_DREG) {
                return .ct(key: key, dreg: d)
            }
            if has(NFTNL_EXPR_CT_DREG), has(NFTNL_EXPR_CT_DIR), let key = NFTCtKey(rawValue: u32(NFTNL_EXPR_CT_KEY)), let d = reg(NFTNL_EXPR_CT_DREG) {
                let dir = nftnl_expr_get_u8(x, UInt16(NFTNL_EXPR_CT_DIR))
                if dir <= 1 { return .ctTuple(key: key, reply: dir == 1, dreg: d) }
            }
        case "counter":
            return .counter(packets: nftnl_expr_get_u64(x, UInt16(NFTNL_EXPR_CTR_PACKETS)), bytes: nftnl_expr_get_u64(x, UInt16(NFTNL_EXPR_CTR_BYTES)))
        case "immediate":
            if u32(NFTNL_EXPR_IMM_DREG) == NFTRegister.verdict.rawValue {
                let chain = has(NFTNL_EXPR_IMM_CHAIN) ? string(nftnl_expr_get_str(x, UInt16(NFTNL_EXPR_IMM_CHAIN))) : nil
                if let v = NFTVerdict(code: Int32(bitPattern: u32(NFTNL_EXPR_IMM_VERDICT)), chain: chain) { return .verdict(v) }
            } else if let d = reg(NFTNL_EXPR_IMM_DREG), has(NFTNL_EXPR_IMM_DATA) {
                return .immediate(dreg: d, data: data(NFTNL_EXPR_IMM_DATA))
            }
        default:
            break
        }
        return .foreign(name)
    }

    static func set(_ nlh: UnsafePointer<nlmsghdr>) throws(NetlinkError) -> NFTSetDefinition {
        guard let s = nftnl_set_alloc() else { throw .protocolError("out of memory") }
        defer { nftnl_set_free(s) }
        guard nftnl_set_nlmsg_parse(nlh, s) >= 0 else { throw .protocolError("unparsable set message") }
        func attr(_ a: nftnl_set_attr) -> UInt16 { UInt16(a.rawValue) }
        let flags = nftnl_set_get_u32(s, attr(NFTNL_SET_FLAGS))
        let keyType = nftnl_set_get_u32(s, attr(NFTNL_SET_KEY_TYPE))
        var len: UInt32 = 0
        let ud = UserData.decode(bytes(nftnl_set_get_data(s, attr(NFTNL_SET_USERDATA), &len), len), commentType: UserData.setCommentType)
        let name = string(nftnl_set_get_str(s, attr(NFTNL_SET_NAME)))
        var definition = NFTSetDefinition(family: NFTFamily(rawValue: UInt8(nftnl_set_get_u32(s, attr(NFTNL_SET_FAMILY)))) ?? .inet,
                             table: string(nftnl_set_get_str(s, attr(NFTNL_SET_TABLE))),
                             name: name, keyType: NFTSetKeyType(rawValue: keyType),
                             isInterval: flags & 0x4 != 0, isVerdictMap: flags & 0x8 != 0,
                             comment: ud.comment, tag: ud.tag)
        definition.keyLength = nftnl_set_get_u32(s, attr(NFTNL_SET_KEY_LEN))
        if flags & 0x8 != 0, nftnl_set_is_set(s, attr(NFTNL_SET_DATA_TYPE)) {
            let data = nftnl_set_get_u32(s, attr(NFTNL_SET_DATA_TYPE))
            if data != NFT_DATA_VERDICT.rawValue {
                definition.dataType = NFTSetKeyType(rawValue: data)
                definition.dataLength = nftnl_set_get_u32(s, attr(NFTNL_SET_DATA_LEN))
                definition.isVerdictMap = false
            }
        }
        definition.isAnonymous = flags & 0x1 != 0
        if nftnl_set_is_set(s, attr(NFTNL_SET_DESC_SIZE)) {
            let size = nftnl_set_get_u32(s, attr(NFTNL_SET_DESC_SIZE))
            definition.size = size == 0 ? nil : size
        }
        return definition
    }

    /// Elements of one NEWSETELEM message, as (key, interval-end flag, verdict).
    static func elements(_ nlh: UnsafePointer<nlmsghdr>, into out: inout [RawElement]) throws(NetlinkError) {
        guard let s = nftnl_set_alloc() else { throw .protocolError("out of memory") }
        defer { nftnl_set_free(s) }
        guard nftnl_set_elems_nlmsg_parse(nlh, s) >= 0 else { throw .protocolError("unparsable set element message") }
        guard let iter = nftnl_set_elems_iter_create(s) else { return }
        defer { nftnl_set_elems_iter_destroy(iter) }
        while let e = nftnl_set_elems_iter_next(iter) {
            var len: UInt32 = 0
            let key = bytes(nftnl_set_elem_get(e, UInt16(NFTNL_SET_ELEM_KEY), &len), len)
            let flags = nftnl_set_elem_is_set(e, UInt16(NFTNL_SET_ELEM_FLAGS)) ? nftnl_set_elem_get_u32(e, UInt16(NFTNL_SET_ELEM_FLAGS)) : 0
            var verdict: NFTVerdict?
            if nftnl_set_elem_is_set(e, UInt16(NFTNL_SET_ELEM_VERDICT)) {
                let chain = nftnl_set_elem_is_set(e, UInt16(NFTNL_SET_ELEM_CHAIN)) ? string(nftnl_set_elem_get_str(e, UInt16(NFTNL_SET_ELEM_CHAIN))) : nil
                verdict = NFTVerdict(code: Int32(bitPattern: nftnl_set_elem_get_u32(e, UInt16(NFTNL_SET_ELEM_VERDICT))), chain: chain)
            }
            var data: [UInt8]?
            if nftnl_set_elem_is_set(e, UInt16(NFTNL_SET_ELEM_DATA)) {
                var n: UInt32 = 0
                data = bytes(nftnl_set_elem_get(e, UInt16(NFTNL_SET_ELEM_DATA), &n), n)
            }
            var comment: String?
            if nftnl_set_elem_is_set(e, UInt16(NFTNL_SET_ELEM_USERDATA)) {
                var n: UInt32 = 0
                comment = UserData.decode(bytes(nftnl_set_elem_get(e, UInt16(NFTNL_SET_ELEM_USERDATA), &n), n),
                                          commentType: UserData.elementCommentType).comment
            }
            out.append(RawElement(key: key, isEnd: flags & UInt32(NFT_SET_ELEM_INTERVAL_END.rawValue) != 0, verdict: verdict,
                                  data: data, comment: comment))
        }
    }

    /// Pairs interval starts with their ends: sorted by key, an end element right after a
    /// start closes it; a start with no end runs to the end of the key space.
    /// One element as a NEWSETELEM message carries it.
    struct RawElement {
        var key: [UInt8]
        var isEnd: Bool
        var verdict: NFTVerdict?
        var data: [UInt8]?
        var comment: String?
    }

    static func intervals(_ raw: [RawElement]) -> [NFTSetElement] {
        let sorted = raw.sorted { $0.key.lexicographicallyPrecedes($1.key) }
        var out: [NFTSetElement] = []
        var i = 0
        while i < sorted.count {
            let e = sorted[i]
            if e.isEnd { i += 1; continue }   // an end without a start (nft's leading 0 end)
            if i + 1 < sorted.count, sorted[i + 1].isEnd {
                out.append(NFTSetElement(key: e.key, rangeEnd: sorted[i + 1].key, verdict: e.verdict))
                i += 2
            } else {
                out.append(NFTSetElement(key: e.key, rangeEnd: nil, verdict: e.verdict))
                i += 1
            }
        }
        return out
    }
}
