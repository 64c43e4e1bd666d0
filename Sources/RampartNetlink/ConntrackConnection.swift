#if canImport(Glibc)
import RampartSystem
import Glibc
#endif
import CNetfilter

// The ctnetlink connection: dump, count, delete and create conntrack entries over one netlink
// socket. The values are in ConntrackTypes.swift, the messages in ConntrackMessages.swift.

/// A ctnetlink connection to the conntrack table of one network namespace: dump (whole, per
/// family, or filtered by an address in the kernel) and delete by original tuple.
///
/// Not Sendable: one owner, like `NFTablesConnection` (replies are matched by sequence number).
public final class ConntrackConnection {
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

    // MARK: dump

    /// Every entry the filter selects, each passed to `body` as it is parsed (a dump of a big
    /// table never has to sit in memory whole). An entry the kernel flags as interrupted
    /// (NLM_F_DUMP_INTR) is not an error: conntrack changes all the time, and a dump is a
    /// best-effort walk by nature; the caller decides per entry.
    /// Returns the number of datagrams the dump took.
    @discardableResult
    public func dump(_ filter: ConntrackFilter, _ body: (ConntrackEntry) throws(NetlinkError) -> Void) throws(NetlinkError) -> Int {
        let seq = socket.reserveSequence(1)
        try withScratch(512) { (buf) throws(NetlinkError) in
            let n = ConntrackMessages.buildDump(into: buf, sequence: seq, filter: filter)
            try socket.send(buf, length: n)
        }
        var done = false
        var datagrams = 0
        while !done {
            datagrams += 1
            let got = try socket.receive(wait: true) { (nlh) throws(NetlinkError) in
                guard nlh.pointee.nlmsg_seq == seq else { return }
                switch Int32(nlh.pointee.nlmsg_type) {
                case NLMSG_DONE:
                    done = true
                case NLMSG_ERROR:
                    var err = rampart_nlerr()
                    _ = rampart_parse_nlerr(nlh, &err)
                    if err.error != 0 {
                        let text = err.message.map { ": " + String(cString: $0) } ?? ""
                        throw .systemCall("IPCTNL_MSG_CT_GET (dump\(text))", Errno(err.error))
                    }
                    done = true
                default:
                    let raw = UnsafeRawBufferPointer(start: UnsafeRawPointer(nlh), count: Int(nlh.pointee.nlmsg_len))
                    if let entry = try ConntrackMessages.parseEntry(message: raw) { try body(entry) }
                }
            }
            if !got { throw .protocolError("no reply to the conntrack dump") }
        }
        return datagrams
    }

    /// Every entry the filter selects, in an array.
    public func entries(_ filter: ConntrackFilter) throws(NetlinkError) -> [ConntrackEntry] {
        var all: [ConntrackEntry] = []
        try dump(filter) { (e) throws(NetlinkError) in all.append(e) }
        return all
    }

    /// How many entries the namespace's table holds now (IPCTNL_MSG_CT_GET_STATS, one round
    /// trip): what a whole dump would have to carry.
    public func count() throws(NetlinkError) -> Int {
        let seq = socket.reserveSequence(1)
        try withScratch(64) { (buf) throws(NetlinkError) in
            let nlh = ConntrackMessages.header(buf, type: IPCTNL_MSG_CT_GET_STATS.rawValue, flags: NLM_F_ACK, sequence: seq, family: nil)
            try socket.send(buf, length: Int(nlh.pointee.nlmsg_len))
        }
        var result: Int?
        var acked = false
        while result == nil || !acked {
            let got = try socket.receive(wait: true) { (nlh) throws(NetlinkError) in
                guard nlh.pointee.nlmsg_seq == seq else { return }
                if nlh.pointee.nlmsg_type == UInt16(NLMSG_ERROR) {
                    var err = rampart_nlerr()
                    _ = rampart_parse_nlerr(nlh, &err)
                    if err.error != 0 { throw .systemCall("IPCTNL_MSG_CT_GET_STATS", Errno(err.error)) }
                    acked = true
                    return
                }
                let raw = UnsafeRawBufferPointer(start: UnsafeRawPointer(nlh), count: Int(nlh.pointee.nlmsg_len))
                let start = MemoryLayout<nlmsghdr>.size + MemoryLayout<nfgenmsg>.size
                guard raw.count >= start else { throw .protocolError("short conntrack stats message") }
                try ConntrackMessages.attributes(UnsafeRawBufferPointer(rebasing: raw[start...])) { (type, payload) throws(NetlinkError) in
                    if UInt32(type) == CTA_STATS_GLOBAL_ENTRIES.rawValue { result = Int(try ConntrackMessages.be32(payload)) }
                }
                if result == nil { throw .protocolError("conntrack stats without an entry count") }
            }
            if !got { throw .protocolError("no reply to IPCTNL_MSG_CT_GET_STATS") }
        }
        return result!
    }

    // MARK: delete

    /// Deletes these entries (by original tuple, zone and, when known, id), many per datagram
    /// (`requests`). ENOENT (already gone) is counted, not thrown; any other refusal is thrown
    /// after the rest were tried.
    @discardableResult
    public func delete(_ entries: [ConntrackEntry]) throws(NetlinkError) -> ConntrackDeletion {
        let (done, gone, failure) = try requests(entries, "IPCTNL_MSG_CT_DELETE") { ConntrackMessages.buildDelete(into: $0, sequence: $1, entry: $2) }
        if let failure { throw failure }
        return ConntrackDeletion(deleted: done, alreadyGone: gone)
    }

    /// Inserts entries (IPCTNL_MSG_CT_NEW with NLM_F_CREATE | NLM_F_EXCL), many per datagram:
    /// for tests and benchmarks that need a big table without real flows. `timeout` in seconds.
    public func create(_ entries: [ConntrackEntry], timeout: UInt32 = 600) throws(NetlinkError) {
        let (_, _, failure) = try requests(entries, "IPCTNL_MSG_CT_NEW") { ConntrackMessages.buildCreate(into: $0, sequence: $1, entry: $2, timeout: timeout) }
        if let failure { throw failure }
    }

    /// Sends one request per entry, packed into datagrams of at most 60 KiB, and counts the
    /// answers: done, ENOENT, and the first other failure. Only a datagram's last request asks
    /// for an ack: the kernel handles every message of a datagram inside `sendto`, in order, and
    /// queues each answer as a datagram of its own (one `recv` each), so a success is silence,
    /// a failure still answers, and the last one's ack comes after all of them. (An ack per
    /// request cost deleting 1,000 entries 1,000 `recv`s: 3.0–3.5 ms against 1.5–2.0 ms.)
    private func requests(_ entries: [ConntrackEntry], _ label: String,
                          _ build: (UnsafeMutableRawPointer, UInt32, ConntrackEntry) -> Int) throws(NetlinkError) -> (Int, Int, NetlinkError?) {
        var done = 0, gone = 0
        var firstFailure: NetlinkError?
        let capacity = 60 * 1024
        var index = 0
        while index < entries.count {
            let first = socket.reserveSequence(0)
            var count = 0
            try withScratch(capacity) { (buf) throws(NetlinkError) in
                var offset = 0
                var last: UnsafeMutablePointer<nlmsghdr>?
                while index < entries.count, offset + 512 <= capacity {
                    let nlh = (buf + offset).assumingMemoryBound(to: nlmsghdr.self)
                    offset += build(buf + offset, first &+ UInt32(count), entries[index])
                    nlh.pointee.nlmsg_flags &= ~UInt16(NLM_F_ACK)
                    last = nlh
                    index += 1
                    count += 1
                }
                last?.pointee.nlmsg_flags |= UInt16(NLM_F_ACK)
                _ = socket.reserveSequence(count)
                try socket.send(buf, length: offset)
            }
            var refused = 0
            var lastAnswered = false
            let lastSequence = first &+ UInt32(count - 1)
            while !lastAnswered {
                let got = try socket.receive(wait: true) { (nlh) throws(NetlinkError) in
                    guard nlh.pointee.nlmsg_type == UInt16(NLMSG_ERROR) else { return }
                    var err = rampart_nlerr()
                    guard rampart_parse_nlerr(nlh, &err) else { throw .protocolError("truncated error message") }
                    guard err.seq &- first < UInt32(count) else { return }
                    if err.seq == lastSequence { lastAnswered = true }
                    switch err.error {
                    case 0: break
                    case ENOENT:
                        gone += 1
                        refused += 1
                    default:
                        refused += 1
                        if firstFailure == nil {
                            let text = err.message.map { ": " + String(cString: $0) } ?? ""
                            firstFailure = .systemCall("\(label)\(text)", Errno(err.error))
                        }
                    }
                }
                if !got { throw .protocolError("no reply to \(label)") }
            }
            done += count - refused
        }
        return (done, gone, firstFailure)
    }
}
