import CNetfilter
import Foundation
import RampartTestSupport
@testable import RampartNetlink

typealias Event = ScriptedNetlinkTransport.Event

/// An nf_tables kernel played from a script, over `ScriptedNetlinkTransport`: it answers
/// NFT_MSG_GETGEN, GETTABLE and the dumps of chains, rules, sets and elements from `table`, with
/// messages built by libnftnl exactly as the kernel lays them out, and commits with `commit`.
/// Any request can be answered otherwise by `fault` (interruptions, errors, lost replies).
/// No socket and no root.
final class ScriptedKernel {
    var generation: UInt32 = 100
    var table: TableSnapshot?
    /// Requests seen so far, by `NFT_MSG_*` number.
    private(set) var seen: [UInt32: Int] = [:]
    /// Called before the `occurrence`th (from 1) request of type `msg` is answered: a change made
    /// here (someone else committing) shows in the answer.
    var willAnswer: (_ msg: UInt32, _ occurrence: Int) -> Void = { _, _ in }
    /// Replaces the answer to the `occurrence`th (from 1) request of type `msg`; nil keeps `normal`.
    var fault: (_ msg: UInt32, _ occurrence: Int, _ seq: UInt32, _ normal: [Event]) -> [Event]? = { _, _, _, _ in nil }
    /// The answer to a batch; by default it commits: NEWGEN echoed with the next generation.
    var commit: (NetlinkRequest) -> [Event]
    let transport: ScriptedNetlinkTransport
    private(set) lazy var nft = NFTablesConnection(transport: transport)

    init(table: TableSnapshot? = nil) {
        self.table = table
        transport = ScriptedNetlinkTransport()
        commit = { _ in [] }
        commit = { [unowned self] request in
            self.generation += 1
            return [NetlinkReply.datagram([NetlinkReply.newGeneration(self.generation, seq: request.messages[0].seq)])]
        }
        transport.respond = { [unowned self] request in self.answer(request) }
    }

    func count(_ msg: nf_tables_msg_types) -> Int { seen[msg.rawValue] ?? 0 }

    private func answer(_ request: NetlinkRequest) -> [Event] {
        if request.isBatch { return commit(request) }
        guard let m = request.messages.first, let msg = m.nftMessage else { return [] }
        seen[msg, default: 0] += 1
        willAnswer(msg, seen[msg]!)
        let normal = normalAnswer(msg, m)
        return fault(msg, seen[msg]!, m.seq, normal) ?? normal
    }

    /// One object message of a dump (or the answer to a GET of one object).
    static func object(_ msg: nf_tables_msg_types, seq: UInt32, family: NFTFamily, dump: Bool = true,
                       _ payload: some NftnlPayload) -> [UInt8] {
        NetlinkReply.nft(msg.rawValue, flags: dump ? UInt16(NLM_F_MULTI) : 0, seq: seq, family: family.rawValue) { payload.buildPayload($0) }
    }

    /// A whole dump: every object, then NLMSG_DONE, in one datagram.
    static func dump(_ objects: [[UInt8]], seq: UInt32, doneFlags: UInt16 = 0) -> [Event] {
        [NetlinkReply.datagram(objects + [NetlinkReply.done(seq: seq, extraFlags: doneFlags)])]
    }

    private func normalAnswer(_ msg: UInt32, _ m: NetlinkMessage) -> [Event] {
        let seq = m.seq
        switch msg {
        case NFT_MSG_GETGEN.rawValue:
            return [NetlinkReply.datagram([NetlinkReply.newGeneration(generation, seq: seq)])]
        case NFT_MSG_GETTABLE.rawValue:
            guard let t = table else { return [NetlinkReply.datagram([NetlinkReply.error(seq: seq, errno: ENOENT)])] }
            return [NetlinkReply.datagram([Self.object(NFT_MSG_NEWTABLE, seq: seq, family: t.table.family, dump: false, try! NftnlTable(t.table))]),
                    NetlinkReply.datagram([NetlinkReply.ack(seq: seq)])]
        case NFT_MSG_GETCHAIN.rawValue:
            let chains = table?.chains ?? []
            return Self.dump(chains.map { Self.object(NFT_MSG_NEWCHAIN, seq: seq, family: $0.family, try! NftnlChain($0)) }, seq: seq)
        case NFT_MSG_GETRULE.rawValue:
            guard let t = table else { return Self.dump([], seq: seq) }
            let rules = t.chains.flatMap { t.rules[$0.name] ?? [] }
            return Self.dump(rules.map { r in
                let encoded = try! NftnlRule(r)
                if let h = r.handle { nftnl_rule_set_u64(encoded.pointer, UInt16(NFTNL_RULE_HANDLE.rawValue), h) }
                return Self.object(NFT_MSG_NEWRULE, seq: seq, family: r.family, encoded)
            }, seq: seq)
        case NFT_MSG_GETSET.rawValue:
            let sets = table?.sets ?? []
            return Self.dump(sets.map { Self.object(NFT_MSG_NEWSET, seq: seq, family: $0.family, try! NftnlSet($0)) }, seq: seq)
        case NFT_MSG_GETSETELEM.rawValue:
            let name = Self.setName(of: m)
            guard let t = table, let d = t.set(name) else {
                return [NetlinkReply.datagram([NetlinkReply.error(seq: seq, errno: ENOENT)])]
            }
            let s = try! NftnlSet(family: d.family, table: d.table, name: d.name)
            for e in t.elements[name] ?? [] { try! s.addElement(e) }
            let message = Self.kernelElementList(Self.object(NFT_MSG_NEWSETELEM, seq: seq, family: d.family, NftnlSetElements(s)))
            return Self.dump([message], seq: seq)
        default:
            return [NetlinkReply.datagram([NetlinkReply.error(seq: seq, errno: EOPNOTSUPP)])]
        }
    }

    /// libnftnl numbers the elements of a list it builds 1, 2, 3, … (the kernel ignores the type
    /// of a list entry), but the kernel sends each as NFTA_LIST_ELEM, and libnftnl's parser
    /// insists on that: rewrite the entry types as the kernel writes them.
    static func kernelElementList(_ message: [UInt8]) -> [UInt8] {
        var m = message
        func u16(_ at: Int) -> Int { Int(m[at]) | Int(m[at + 1]) << 8 }
        var offset = MemoryLayout<nlmsghdr>.size + MemoryLayout<nfgenmsg>.size
        while offset + 4 <= m.count {
            let len = u16(offset)
            guard len >= 4 else { break }
            if u16(offset + 2) & 0x3fff == Int(NFTA_SET_ELEM_LIST_ELEMENTS.rawValue) {
                var inner = offset + 4
                while inner + 4 <= offset + len {
                    let l = u16(inner)
                    guard l >= 4 else { break }
                    let type = UInt16(NFTA_LIST_ELEM.rawValue) | UInt16(NLA_F_NESTED)
                    m[inner + 2] = UInt8(type & 0xff)
                    m[inner + 3] = UInt8(type >> 8)
                    inner += (l + 3) & ~3
                }
            }
            offset += (len + 3) & ~3
        }
        return m
    }

    /// The set a GETSETELEM request names.
    static func setName(of m: NetlinkMessage) -> String {
        let s = nftnl_set_alloc()!
        defer { nftnl_set_free(s) }
        let p = UnsafeMutableRawPointer.allocate(byteCount: m.bytes.count, alignment: 16)
        defer { p.deallocate() }
        p.copyMemory(from: m.bytes, byteCount: m.bytes.count)
        _ = nftnl_set_elems_nlmsg_parse(p.assumingMemoryBound(to: nlmsghdr.self), s)
        return String(cString: nftnl_set_get_str(s, UInt16(NFTNL_SET_NAME.rawValue)))
    }
}
