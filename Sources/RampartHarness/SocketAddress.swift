import Foundation

// IPv4 and IPv6 socket addresses from text, for probes and crafted packets.

/// A socket address built from text; the harness only needs IPv4 and IPv6.
struct SocketAddress {
    var storage = sockaddr_storage()
    var length: socklen_t = 0
    var family: Int32 = 0

    init(_ text: String, port: UInt16) throws {
        let host = bareAddress(text)
        var a4 = in_addr()
        var a6 = in6_addr()
        if inet_pton(AF_INET, host, &a4) == 1 {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            sin.sin_addr = a4
            Self.copy(&sin, into: &storage)
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            family = AF_INET
        } else if inet_pton(AF_INET6, host, &a6) == 1 {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            sin6.sin6_addr = a6
            Self.copy(&sin6, into: &storage)
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            family = AF_INET6
        } else {
            throw HarnessError("not an IPv4 or IPv6 address: \(text)")
        }
    }

    private static func copy<T>(_ value: inout T, into storage: inout sockaddr_storage) {
        withUnsafeBytes(of: &value) { src in
            withUnsafeMutableBytes(of: &storage) { dst in dst.copyMemory(from: src) }
        }
    }

    func withPointer<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var s = storage
        return withUnsafePointer(to: &s) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }

    /// The address part of a socket address, as text (IPv4-mapped IPv6 shown as IPv4).
    static func text(of storage: sockaddr_storage) -> String {
        var s = storage
        var buffer = [CChar](repeating: 0, count: 64)
        return withUnsafePointer(to: &s) { p -> String in
            if Int32(storage.ss_family) == AF_INET {
                return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                    var a = sin.pointee.sin_addr
                    inet_ntop(AF_INET, &a, &buffer, socklen_t(buffer.count))
                    return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
                }
            }
            return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                var a = sin6.pointee.sin6_addr
                inet_ntop(AF_INET6, &a, &buffer, socklen_t(buffer.count))
                let t = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
                return t.hasPrefix("::ffff:") && t.contains(".") ? String(t.dropFirst(7)) : t
            }
        }
    }
}

/// "10.0.1.11/32" → "10.0.1.11".
func bareAddress(_ text: String) -> String {
    String(text.split(separator: "/", maxSplits: 1).first ?? Substring(text))
}

/// The canonical text of an address ("fd00:0::11" → "fd00::11"), or nil if it is none.
func canonicalAddress(_ text: String) -> String? {
    guard let a = try? SocketAddress(text, port: 0) else { return nil }
    return SocketAddress.text(of: a.storage)
}

/// True for an IPv6 address.
func isIPv6(_ text: String) -> Bool { bareAddress(text).contains(":") }
