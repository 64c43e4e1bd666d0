#if canImport(Glibc)
import Glibc
#endif
import CNetfilter

/// The seam under the netlink connections: datagrams out, datagrams in. `NetlinkSocket` is the
/// real one (a NETLINK_NETFILTER socket); RampartTestSupport's `ScriptedNetlinkTransport` replays
/// canned kernel replies, so reply handling (errors, stale replies, interrupted dumps, lost
/// replies) is tested without root, as google/nftables does with its test dialer.
///
/// A transport knows nothing of messages or sequence numbers: framing and matching replies to
/// requests happen above it, in `NetlinkChannel`, the same code for the socket and the fake.
package protocol NetlinkTransport: AnyObject {
    /// Sends one datagram (a whole batch is one: the kernel handles all of it inside the call,
    /// so every reply is queued when this returns).
    func send(_ datagram: UnsafeRawBufferPointer) throws(NetlinkError)

    /// The next datagram the kernel queued, valid until the next call; nil if none came (none
    /// queued and `wait` is false, or the receive timeout passed).
    ///
    /// A failed receive throws `.systemCall(_, errno)` with the errno as the socket gave it:
    /// `EINTR` (a signal; nothing lost, the channel receives again) and `ENOBUFS` (the receive
    /// queue overflowed and the kernel dropped messages for this socket, which ones unknown;
    /// the messages still queued are intact and come next).
    func receive(wait: Bool) throws(NetlinkError) -> UnsafeRawBufferPointer?
}

/// Sequence numbers and message framing over a transport: one per connection.
///
/// Every request gets fresh sequence numbers; a reply is matched to its request by them, so a
/// reply left over from an earlier request (one abandoned after an error) is recognised and
/// skipped by the caller's sequence check.
final class NetlinkChannel {
    let transport: any NetlinkTransport
    private var nextSequence: UInt32

    /// Sequence numbers only need to differ between requests on this socket; starting from the
    /// clock keeps them distinct across restarts, which helps when reading traces.
    init(_ transport: any NetlinkTransport, firstSequence: UInt32 = UInt32(truncatingIfNeeded: time(nil))) {
        self.transport = transport
        nextSequence = firstSequence
    }

    /// Reserves `count` consecutive sequence numbers and returns the first.
    func reserveSequence(_ count: Int) -> UInt32 {
        let first = nextSequence
        nextSequence &+= UInt32(count)
        return first
    }

    /// Sends `length` bytes at `bytes` in one datagram.
    func send(_ bytes: UnsafeRawPointer, length: Int) throws(NetlinkError) {
        try transport.send(UnsafeRawBufferPointer(start: bytes, count: length))
    }

    /// Receives one datagram and calls `body` with each netlink message in it. Returns false,
    /// without calling `body`, if no datagram came. EINTR from the receive is retried (a signal
    /// loses nothing); every other receive error is thrown as is: the caller decides what it
    /// means (ENOBUFS: see `NetlinkTransport.receive`).
    func receive(wait: Bool, _ body: (UnsafePointer<nlmsghdr>) throws(NetlinkError) -> Void) throws(NetlinkError) -> Bool {
        var datagram: UnsafeRawBufferPointer?
        while true {
            do {
                datagram = try transport.receive(wait: wait)
                break
            } catch let error {
                if case .systemCall(_, let e) = error, e == .EINTR { continue }
                throw error
            }
        }
        guard let datagram else { return false }
        try Self.messages(in: datagram, body)
        return true
    }

    /// Receives without waiting until nothing is queued, discarding everything (and any receive
    /// error): after lost replies, the next request starts on an empty queue, and a dump the
    /// kernel was still feeding runs to its end (each receive lets it continue), so a new dump
    /// is not refused with EBUSY. Bounded, in case something keeps sending.
    func drain() {
        for _ in 0..<100_000 {
            do {
                if try transport.receive(wait: false) == nil { return }
            } catch {
                if case .systemCall(_, let e) = error, e == .ENOBUFS || e == .EINTR { continue }
                return
            }
        }
    }

    /// Calls `body` with each netlink message of a datagram, checking that lengths fit.
    static func messages(in datagram: UnsafeRawBufferPointer, _ body: (UnsafePointer<nlmsghdr>) throws(NetlinkError) -> Void) throws(NetlinkError) {
        guard let base = datagram.baseAddress else { return }
        let n = datagram.count
        var offset = 0
        let headerSize = MemoryLayout<nlmsghdr>.size
        while offset + headerSize <= n {
            let nlh = (base + offset).assumingMemoryBound(to: nlmsghdr.self)
            let len = Int(nlh.pointee.nlmsg_len)
            if len < headerSize || offset + len > n { throw .protocolError("malformed netlink message (length \(len))") }
            try body(nlh)
            offset += Int(rampart_nlmsg_align(UInt32(len)))
        }
    }
}
