import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `struct sockaddr_ll` (20 bytes), built by hand: Glibc does not export <netpacket/packet.h>.
func linkAddress(ifindex: Int32, protocol: UInt16 = 0, mac: [UInt8] = []) -> [UInt8] {
    var a = [UInt8](repeating: 0, count: 20)
    withUnsafeBytes(of: UInt16(AF_PACKET)) { a.replaceSubrange(0..<2, with: $0) }
    a[2] = UInt8(`protocol` >> 8); a[3] = UInt8(`protocol` & 0xff)
    withUnsafeBytes(of: ifindex) { a.replaceSubrange(4..<8, with: $0) }
    a[11] = UInt8(mac.count)
    for (i, b) in mac.prefix(8).enumerated() { a[12 + i] = b }
    return a
}

let ethPAll: UInt16 = 0x0003
let packetOutgoing: UInt8 = 4

/// What arrived somewhere since the capture was opened: frames on a link (incoming only), IP
/// packets delivered to a node's stack (raw socket), or datagrams received by a UDP socket.
public final class PacketCapture: @unchecked Sendable, CustomStringConvertible {
    public enum Kind: Sendable { case link, delivered, udp }
    public let kind: Kind
    public let label: String
    private let outgoing: Bool
    private let lock = NSLock()
    private var fd: Int32
    private var packets: [[UInt8]] = []

    init(kind: Kind, fd: Int32, label: String, outgoing: Bool = false) {
        self.kind = kind
        self.outgoing = outgoing
        self.fd = fd
        self.label = label
    }

    deinit { close() }

    public func close() {
        lock.lock(); defer { lock.unlock() }
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    /// Reads whatever is queued.
    private func drainLocked() {
        guard fd >= 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            var from = [UInt8](repeating: 0, count: 128)
            var length = socklen_t(from.count)
            let n = from.withUnsafeMutableBytes { fp in
                buffer.withUnsafeMutableBytes { bp in
                    recvfrom(fd, bp.baseAddress, bp.count, Int32(MSG_DONTWAIT), fp.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
                }
            }
            if n < 0 { if errno == EINTR { continue }; return }
            if kind == .link && !outgoing && from[10] == packetOutgoing { continue }
            packets.append(Array(buffer[0..<n]))
        }
    }

    /// Everything received so far.
    public var received: [[UInt8]] {
        lock.lock(); defer { lock.unlock() }
        drainLocked()
        return packets
    }

    /// True as soon as a received packet satisfies `predicate`, waiting up to `within` seconds.
    public func saw(within: Double = 0, _ predicate: ([UInt8]) -> Bool) -> Bool {
        let deadline = now() + within
        var checked = 0
        while true {
            lock.lock()
            drainLocked()
            let current = packets
            let open = fd
            lock.unlock()
            if current[checked...].contains(where: predicate) { return true }
            checked = current.count
            let remaining = deadline - now()
            if remaining <= 0 || open < 0 { return false }
            var p = pollfd(fd: open, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, Int32(max(1, min(remaining, 0.05) * 1000)))
        }
    }

    /// True as soon as a packet containing `token` was received, waiting up to `within` seconds.
    public func saw(_ token: [UInt8], within: Double = 0) -> Bool {
        saw(within: within) { RawPacket.contains($0, token) }
    }

    /// Sends a datagram (UDP captures only).
    public func send(_ payload: [UInt8], to address: String, port: UInt16) throws {
        let sa = try SocketAddress(address, port: port)
        lock.lock(); defer { lock.unlock() }
        let n = sa.withPointer { p, l in payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, p, l) } }
        guard n == payload.count else { throw HarnessError("\(label): sendto \(address):\(port): \(errnoText(errno))") }
    }

    public var description: String { label }
}
