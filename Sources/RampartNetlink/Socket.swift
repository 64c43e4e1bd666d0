#if canImport(Glibc)
import Glibc
#endif
import CNetfilter
import RampartSystem

/// A `NETLINK_NETFILTER` socket: the real `NetlinkTransport`. One datagram out per batch,
/// replies drained after it.
///
/// Not Sendable on purpose: one owner per socket (the kernel matches replies to it by
/// sequence number, and interleaved batches from two threads would mix their replies).
final class NetlinkSocket: NetlinkTransport {
    let fd: Int32
    private(set) var sendBufferSize: Int = 0
    /// Receive buffer: large enough for any one datagram the kernel sends (dumps are capped
    /// at 32 KiB per datagram by the kernel, errors are small with NETLINK_CAP_ACK).
    private var receiveBuffer: UnsafeMutableRawBufferPointer

    init(namespace: NetworkNamespace) throws(NetlinkError) {
        fd = try namespace.run { () throws(NetlinkError) -> Int32 in
            try syscall("socket(AF_NETLINK, NETLINK_NETFILTER)") {
                socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), NETLINK_NETFILTER)
            }
        }
        receiveBuffer = .allocate(byteCount: 256 * 1024, alignment: 16)
        do {
            var addr = sockaddr_nl()
            addr.nl_family = sa_family_t(AF_NETLINK)
            _ = try withUnsafePointer(to: &addr) { (p) throws(NetlinkError) in
                try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(NetlinkError) in
                    try syscall("bind(netlink)") { bind(fd, sa, socklen_t(MemoryLayout<sockaddr_nl>.size)) }
                }
            }
            // Only failures reply, without echoing the request, and with the kernel's reason
            // and the offset of the offending attribute.
            try setOption(SOL_NETLINK, NETLINK_EXT_ACK, 1, "NETLINK_EXT_ACK")
            try setOption(SOL_NETLINK, NETLINK_CAP_ACK, 1, "NETLINK_CAP_ACK")
            // Room for replies to a big batch (every failing message replies) and for dumps.
            try setOption(SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20, "SO_RCVBUFFORCE")
            try ensureSendBuffer(1 << 20)
        } catch {
            close(fd)
            receiveBuffer.deallocate()
            throw error
        }
    }

    deinit {
        close(fd)
        receiveBuffer.deallocate()
    }

    private func setOption(_ level: Int32, _ name: Int32, _ value: Int32, _ label: String) throws(NetlinkError) {
        var v = value
        try syscall("setsockopt(\(label))") { setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) }
    }

    /// A batch is one datagram: the send buffer must hold all of it, or sendmsg fails with
    /// EMSGSIZE. SO_SNDBUFFORCE (root) ignores the wmem_max limit.
    func ensureSendBuffer(_ bytes: Int) throws(NetlinkError) {
        guard bytes > sendBufferSize else { return }
        let size = max(bytes + 64 * 1024, 1 << 20)
        guard size <= Int(Int32.max / 2) else { throw .systemCall("setsockopt(SO_SNDBUFFORCE)", .EMSGSIZE) }
        try setOption(SOL_SOCKET, SO_SNDBUFFORCE, Int32(size), "SO_SNDBUFFORCE")
        sendBufferSize = size
    }

    /// Sends one datagram to the kernel.
    func send(_ datagram: UnsafeRawBufferPointer) throws(NetlinkError) {
        let length = datagram.count
        try ensureSendBuffer(length)
        var kernel = sockaddr_nl()
        kernel.nl_family = sa_family_t(AF_NETLINK)
        let sent = try withUnsafePointer(to: &kernel) { (p) throws(NetlinkError) -> Int in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(NetlinkError) -> Int in
                try syscall("sendto(netlink, \(length) bytes)") {
                    sendto(fd, datagram.baseAddress, length, 0, sa, socklen_t(MemoryLayout<sockaddr_nl>.size))
                }
            }
        }
        if sent != length { throw .protocolError("short send: \(sent) of \(length) bytes") }
    }

    /// Receives one datagram into the socket's buffer (valid until the next receive). EAGAIN
    /// (nothing queued without waiting, or the receive timeout passed) is nil; every other
    /// errno, EINTR included, is thrown for the channel to decide.
    func receive(wait: Bool) throws(NetlinkError) -> UnsafeRawBufferPointer? {
        let flags = Int32(MSG_TRUNC) | (wait ? 0 : Int32(MSG_DONTWAIT))
        let n = recv(fd, receiveBuffer.baseAddress, receiveBuffer.count, flags)
        if n < 0 {
            let e = errno
            if e == EAGAIN || e == EWOULDBLOCK { return nil }
            throw .systemCall("recv(netlink)", Errno(e))
        }
        if n > receiveBuffer.count { throw .protocolError("reply of \(n) bytes truncated to \(receiveBuffer.count)") }
        return UnsafeRawBufferPointer(rebasing: receiveBuffer[0..<n])
    }

    func setReceiveBufferForTesting(_ bytes: Int32) throws(NetlinkError) {
        try setOption(SOL_SOCKET, SO_RCVBUFFORCE, bytes, "SO_RCVBUFFORCE")
    }

    /// A socket for request and reply (not for events): a reply that never comes fails the
    /// request after 10 s instead of blocking for ever.
    static func forRequests(in namespace: NetworkNamespace) throws(NetlinkError) -> NetlinkSocket {
        let socket = try NetlinkSocket(namespace: namespace)
        try socket.setReceiveTimeout(seconds: 10)
        return socket
    }

    /// Sets a receive timeout so a lost reply to a request cannot hang the caller forever.
    func setReceiveTimeout(seconds: Int) throws(NetlinkError) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        try syscall("setsockopt(SO_RCVTIMEO)") { setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)) }
    }
}
