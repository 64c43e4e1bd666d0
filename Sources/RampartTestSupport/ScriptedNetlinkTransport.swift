#if canImport(Glibc)
import RampartSystem
import Glibc
#endif
import CNetfilter
import RampartNetlink

/// A netlink transport that plays the kernel from a script, for testing reply handling without
/// root or a socket (the role of google/nftables' test dialer).
///
/// Every datagram sent is recorded and handed to `respond`, whose answer (datagrams, or receive
/// failures such as ENOBUFS and EINTR) is queued; each receive takes the next queued event. An
/// empty queue is what a real socket gives when nothing came: nil (EAGAIN or the timeout).
///
///     let kernel = ScriptedNetlinkTransport { request in
///         [.datagram(NetlinkReply.newGeneration(7, seq: request.messages[0].seq))]
///     }
///     let nft = NFTablesConnection(transport: kernel)
public final class ScriptedNetlinkTransport: NetlinkTransport {
    /// What one receive gets.
    public enum Event: Sendable, Hashable {
        /// One datagram: netlink messages, each padded to 4 bytes (`NetlinkReply.datagram`).
        case datagram([UInt8])
        /// The receive fails with this errno (`ENOBUFS`, `EINTR`, ...), as the socket would.
        case failure(Errno)
    }

    /// Every datagram sent, in order.
    public private(set) var sent: [NetlinkRequest] = []
    /// The kernel's part: what it queues in answer to each datagram sent.
    public var respond: (NetlinkRequest) -> [Event]
    private var queue: [Event] = []
    /// The datagram handed out by the last receive (valid until the next one, like a socket's buffer).
    private var current: UnsafeMutableRawBufferPointer?

    public init(respond: @escaping (NetlinkRequest) -> [Event] = { _ in [] }) {
        self.respond = respond
    }

    deinit { current?.deallocate() }

    /// Events not received yet.
    public var queued: [Event] { queue }

    /// Queues events as if the kernel had sent them before the next request (stale replies, a
    /// pending ENOBUFS).
    public func enqueue(_ events: [Event]) { queue += events }

    package func send(_ datagram: UnsafeRawBufferPointer) throws(NetlinkError) {
        let request = NetlinkRequest(Array(datagram))
        sent.append(request)
        queue += respond(request)
    }

    package func receive(wait: Bool) throws(NetlinkError) -> UnsafeRawBufferPointer? {
        current?.deallocate()
        current = nil
        guard !queue.isEmpty else { return nil }
        switch queue.removeFirst() {
        case .failure(let e):
            throw .systemCall("recv(netlink)", e)
        case .datagram(let bytes):
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
            buffer.copyBytes(from: bytes)
            current = buffer
            return UnsafeRawBufferPointer(buffer)
        }
    }
}

/// One netlink message: its header fields, the nfgenmsg family, and its bytes.
public struct NetlinkMessage: Sendable, Hashable {
    public var type: UInt16
    public var flags: UInt16
    public var seq: UInt32
    /// The nfgenmsg family (the byte after the header), 0 if the message is too short.
    public var family: UInt8
    public var bytes: [UInt8]

    /// For an nf_tables message, its `NFT_MSG_*` number; nil for other subsystems and control messages.
    public var nftMessage: UInt32? {
        type >> 8 == UInt16(NFNL_SUBSYS_NFTABLES) ? UInt32(type & 0xff) : nil
    }
    public var isDump: Bool { flags & UInt16(NLM_F_DUMP) == UInt16(NLM_F_DUMP) }
}

/// A datagram sent to the kernel, split into its messages.
public struct NetlinkRequest: Sendable, Hashable {
    public var bytes: [UInt8]
    public var messages: [NetlinkMessage]

    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
        messages = []
        let header = MemoryLayout<nlmsghdr>.size
        var offset = 0
        while offset + header <= bytes.count {
            let h = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: nlmsghdr.self) }
            let len = Int(h.nlmsg_len)
            guard len >= header, offset + len <= bytes.count else { break }
            messages.append(NetlinkMessage(type: h.nlmsg_type, flags: h.nlmsg_flags, seq: h.nlmsg_seq,
                                           family: len > header ? bytes[offset + header] : 0,
                                           bytes: Array(bytes[offset..<(offset + len)])))
            offset += (len + 3) & ~3
        }
    }

    /// Whether this is an nf_tables batch (begin … end), that is a commit.
    public var isBatch: Bool { messages.first?.type == UInt16(NFNL_MSG_BATCH_BEGIN) }
}

/// Builders of the messages the kernel sends, byte for byte as it lays them out.
public enum NetlinkReply {
    /// Concatenates messages into one datagram, each padded to 4 bytes.
    public static func datagram(_ messages: [[UInt8]]) -> ScriptedNetlinkTransport.Event {
        var out: [UInt8] = []
        for m in messages {
            out += m
            out += [UInt8](repeating: 0, count: (4 - m.count % 4) % 4)
        }
        return .datagram(out)
    }

    /// An nfnetlink message (header and nfgenmsg) of `type`, its attributes written by `payload`
    /// (libnftnl's `*_nlmsg_build_payload`, or libmnl's `mnl_attr_put*`).
    public static func message(type: UInt16, flags: UInt16 = 0, seq: UInt32, family: UInt8 = 0,
                               payload: (UnsafeMutablePointer<nlmsghdr>) -> Void = { _ in }) -> [UInt8] {
        let size = 64 * 1024
        let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        let nlh = mnl_nlmsg_put_header(buf)!
        nlh.pointee.nlmsg_type = type
        nlh.pointee.nlmsg_flags = flags
        nlh.pointee.nlmsg_seq = seq
        let nfg = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<nfgenmsg>.size)!.assumingMemoryBound(to: nfgenmsg.self)
        nfg.pointee.nfgen_family = family
        nfg.pointee.version = UInt8(NFNETLINK_V0)
        payload(nlh)
        return Array(UnsafeRawBufferPointer(start: buf, count: Int(nlh.pointee.nlmsg_len)))
    }

    /// An nf_tables message `NFT_MSG_*` (as a dump entry, `NLM_F_MULTI` by default).
    public static func nft(_ msg: UInt32, flags: UInt16 = UInt16(NLM_F_MULTI), seq: UInt32, family: UInt8,
                           payload: (UnsafeMutablePointer<nlmsghdr>) -> Void) -> [UInt8] {
        message(type: rampart_nft_msg_type(UInt16(msg)), flags: flags, seq: seq, family: family, payload: payload)
    }

    /// `NFT_MSG_NEWGEN` carrying the ruleset generation (the answer to GETGEN, and the echo of
    /// a committed batch).
    public static func newGeneration(_ generation: UInt32, seq: UInt32) -> [UInt8] {
        nft(NFT_MSG_NEWGEN.rawValue, flags: 0, seq: seq, family: UInt8(AF_UNSPEC)) { nlh in
            mnl_attr_put_u32(nlh, UInt16(NFTA_GEN_ID.rawValue), generation.bigEndian)
        }
    }

    /// `NLMSG_DONE`, the end of a dump (`extraFlags`: e.g. `NLM_F_DUMP_INTR`).
    public static func done(seq: UInt32, extraFlags: UInt16 = 0) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: MemoryLayout<nlmsghdr>.size + 4)
        var h = nlmsghdr(nlmsg_len: UInt32(bytes.count), nlmsg_type: UInt16(NLMSG_DONE),
                         nlmsg_flags: UInt16(NLM_F_MULTI) | extraFlags, nlmsg_seq: seq, nlmsg_pid: 0)
        withUnsafeBytes(of: &h) { for (i, b) in $0.enumerated() { bytes[i] = b } }
        return bytes
    }

    /// `NLMSG_ERROR` answering message `seq` (of `type`) with `errno` (0: an ack), as a socket
    /// with NETLINK_CAP_ACK and NETLINK_EXT_ACK gets it: the request's header only, and the
    /// kernel's text in NLMSGERR_ATTR_MSG when given.
    public static func error(seq: UInt32, errno: Int32, type: UInt16 = 0, message text: String? = nil) -> [UInt8] {
        let size = 4096
        let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        let nlh = mnl_nlmsg_put_header(buf)!
        nlh.pointee.nlmsg_type = UInt16(NLMSG_ERROR)
        nlh.pointee.nlmsg_flags = UInt16(NLM_F_CAPPED) | (text != nil ? UInt16(NLM_F_ACK_TLVS) : 0)
        nlh.pointee.nlmsg_seq = seq
        let err = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<nlmsgerr>.size)!.assumingMemoryBound(to: nlmsgerr.self)
        err.pointee.error = -errno
        err.pointee.msg = nlmsghdr(nlmsg_len: UInt32(MemoryLayout<nlmsghdr>.size), nlmsg_type: type,
                                   nlmsg_flags: UInt16(NLM_F_REQUEST), nlmsg_seq: seq, nlmsg_pid: 0)
        if let text { mnl_attr_put_strz(nlh, UInt16(NLMSGERR_ATTR_MSG.rawValue), text) }
        return Array(UnsafeRawBufferPointer(start: buf, count: Int(nlh.pointee.nlmsg_len)))
    }

    /// The ack of message `seq`.
    public static func ack(seq: UInt32) -> [UInt8] { error(seq: seq, errno: 0) }
}
