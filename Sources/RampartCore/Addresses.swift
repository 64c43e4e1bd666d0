import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An IP address family; also the `ethertype` of a rule.
public enum IPFamily: String, Hashable, Sendable, CaseIterable, Comparable {
    case ipv4, ipv6
    public static func < (a: IPFamily, b: IPFamily) -> Bool { a == .ipv4 && b == .ipv6 }
}

/// An IPv4 address, stored in host byte order so that prefix arithmetic is plain shifting.
public struct IPv4Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The address in host byte order.
    public var raw: UInt32
    public init(raw: UInt32) { self.raw = raw }

    /// Parses strict dotted-quad text (inet_pton: no leading zeros, no shorthand).
    public init?(_ text: String) {
        var a = in_addr()
        // No NUL: inet_pton would read the text only up to it ("10.0.0.1\0x" was 10.0.0.1).
        guard text.utf8.count <= 15, !text.utf8.contains(0), inet_pton(AF_INET, text, &a) == 1 else { return nil }
        raw = UInt32(bigEndian: a.s_addr)
    }

    public static func < (a: Self, b: Self) -> Bool { a.raw < b.raw }

    /// Canonical dotted-quad text.
    public var description: String {
        "\(raw >> 24).\((raw >> 16) & 0xff).\((raw >> 8) & 0xff).\(raw & 0xff)"
    }
}

/// An IPv6 address as two 64-bit halves in host byte order.
public struct IPv6Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The first 64 bits (host byte order).
    public var hi: UInt64
    /// The last 64 bits (host byte order).
    public var lo: UInt64
    public init(hi: UInt64, lo: UInt64) { self.hi = hi; self.lo = lo }

    /// Parses IPv6 text with inet_pton (no zone ids, no prefix length).
    public init?(_ text: String) {
        var a = in6_addr()
        guard text.utf8.count <= 45, !text.utf8.contains(0), inet_pton(AF_INET6, text, &a) == 1 else { return nil }
        var h: UInt64 = 0, l: UInt64 = 0
        withUnsafeBytes(of: &a) { b in
            for i in 0..<8 { h = h << 8 | UInt64(b[i]) }
            for i in 8..<16 { l = l << 8 | UInt64(b[i]) }
        }
        hi = h; lo = l
    }

    public static func < (a: Self, b: Self) -> Bool { (a.hi, a.lo) < (b.hi, b.lo) }

    /// The 16 bytes in network order (what a kernel set element carries).
    public var bytes: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: hi >> (56 - 8 * UInt64($0))) }
            + (0..<8).map { UInt8(truncatingIfNeeded: lo >> (56 - 8 * UInt64($0))) }
    }

    /// RFC 5952 text, as inet_ntop prints it.
    public var description: String {
        var a = in6_addr()
        let b = bytes
        withUnsafeMutableBytes(of: &a) { p in for i in 0..<16 { p[i] = b[i] } }
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        _ = inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count))
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// An address of either family.
public enum IPAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    case v4(IPv4Address)
    case v6(IPv6Address)

    /// Parses either family; IPv4 is tried first because it is the common case.
    public init?(_ text: String) {
        if let a = IPv4Address(text) { self = .v4(a) } else if let a = IPv6Address(text) { self = .v6(a) } else { return nil }
    }

    /// The address family.
    public var family: IPFamily {
        switch self { case .v4: .ipv4; case .v6: .ipv6 }
    }

    /// 127.0.0.0/8 or ::1: this machine's own loopback.
    public var isLoopback: Bool {
        switch self {
        case .v4(let x): x.raw >> 24 == 127
        case .v6(let x): x.hi == 0 && x.lo == 1
        }
    }

    public var description: String {
        switch self { case .v4(let a): a.description; case .v6(let a): a.description }
    }

    public static func < (a: Self, b: Self) -> Bool {
        switch (a, b) {
        case (.v4(let x), .v4(let y)): x < y
        case (.v6(let x), .v6(let y)): x < y
        case (.v4, .v6): true
        case (.v6, .v4): false
        }
    }
}

/// An IPv4 prefix whose host bits are zero (validation guarantees it).
public struct IPv4Prefix: Hashable, Sendable, CustomStringConvertible {
    /// The network address (host bits zero).
    public var address: IPv4Address
    /// Prefix length in bits.
    public var length: UInt8
    public init(address: IPv4Address, length: UInt8) { self.address = address; self.length = length }
    /// The network mask for `length` in host order.
    public var mask: UInt32 { length == 0 ? 0 : UInt32.max << (32 - UInt32(length)) }
    public var description: String { "\(address)/\(length)" }
    /// `0.0.0.0/32`: the source of a DHCP client that has no address yet.
    public static let unspecified = IPv4Prefix(address: IPv4Address(raw: 0), length: 32)
}

/// An IPv6 prefix whose host bits are zero.
public struct IPv6Prefix: Hashable, Sendable, CustomStringConvertible {
    /// The network address (host bits zero).
    public var address: IPv6Address
    /// Prefix length in bits.
    public var length: UInt8
    public init(address: IPv6Address, length: UInt8) { self.address = address; self.length = length }
    /// `::/128`: the source of duplicate address detection.
    public static let unspecified = IPv6Prefix(address: IPv6Address(hi: 0, lo: 0), length: 128)
    /// `fe80::/10`: link-local unicast.
    public static let linkLocal = IPv6Prefix(address: IPv6Address(hi: 0xfe80 << 48, lo: 0), length: 10)
    /// The network mask as two halves.
    public var mask: (hi: UInt64, lo: UInt64) {
        let l = UInt64(length)
        let hi: UInt64 = l == 0 ? 0 : (l >= 64 ? .max : .max << (64 - l))
        let lo: UInt64 = l <= 64 ? 0 : (l >= 128 ? .max : .max << (128 - l))
        return (hi, lo)
    }
    public var description: String { "\(address)/\(length)" }
}

/// A prefix of either family: the `cidr` of a rule.
public enum IPPrefix: Hashable, Sendable, CustomStringConvertible {
    case v4(IPv4Prefix)
    case v6(IPv6Prefix)

    /// The address family.
    public var family: IPFamily {
        switch self { case .v4: .ipv4; case .v6: .ipv6 }
    }
    /// Prefix length in bits.
    public var length: UInt8 {
        switch self { case .v4(let p): p.length; case .v6(let p): p.length }
    }
    public var description: String {
        switch self { case .v4(let p): p.description; case .v6(let p): p.description }
    }

    /// Outcome of parsing prefix text: a prefix, or the reason it is not one.
    public enum ParseResult: Sendable {
        case ok(IPPrefix)
        case invalid(String)
    }

    /// Parses `a.b.c.d/len`, `x::/len` or a bare address (/32, /128). Host bits set is an error that
    /// names the prefix the author probably meant.
    ///
    /// Split at the first `/` byte and the length read as bytes (a rule's prefix is parsed on
    /// every rules verb and every daemon's rules refresh: `rampart-bench rules-json`). A
    /// combining mark after the `/` now fails as a bad length rather than a bad address.
    public static func parse(_ text: String) -> ParseResult {
        let slash = text.utf8.firstIndex(of: UInt8(ascii: "/"))
        guard let addr = IPAddress(slash.map { String(text[..<$0]) } ?? text) else {
            return .invalid("\(quoted(text)) is not an IPv4 or IPv6 prefix")
        }
        let maxLen = addr.family == .ipv4 ? 32 : 128
        var len = maxLen
        if let slash {
            let digits = text.utf8[text.utf8.index(after: slash)...]
            guard (1...3).contains(digits.count), digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                  !(digits.count > 1 && digits.first == UInt8(ascii: "0"))
            else { return .invalid("\(quoted(text)) has an invalid prefix length") }
            let l = digits.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
            guard l <= maxLen else { return .invalid("\(quoted(text)): prefix length \(l) is out of range 0-\(maxLen)") }
            len = l
        }
        switch addr {
        case .v4(let a):
            let p = IPv4Prefix(address: a, length: UInt8(len))
            let net = IPv4Prefix(address: IPv4Address(raw: a.raw & p.mask), length: UInt8(len))
            if net != p { return .invalid("\(text) has host bits set; did you mean \(net)") }
            return .ok(.v4(p))
        case .v6(let a):
            let p = IPv6Prefix(address: a, length: UInt8(len))
            let m = p.mask
            let net = IPv6Prefix(address: IPv6Address(hi: a.hi & m.hi, lo: a.lo & m.lo), length: UInt8(len))
            if net != p { return .invalid("\(text) has host bits set; did you mean \(net)") }
            return .ok(.v6(p))
        }
    }
}

/// A 48-bit Ethernet address.
public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    /// The 48 bits in the low end, first octet most significant.
    public var raw: UInt64
    public init(raw: UInt64) { self.raw = raw & 0xffff_ffff_ffff }

    /// Parses exactly `aa:bb:cc:dd:ee:ff` (two ASCII hex digits per octet, either case).
    ///
    /// Over the UTF-8 bytes: a daemon's members refresh parses every member's record, and this
    /// parse, splitting into `Character`s, was a quarter of the record's (`perf`, `rampart-bench
    /// daemon`'s membership refresh at host-1k).
    public init?(_ text: String) {
        var v: UInt64 = 0
        var n = 0
        for (i, c) in text.utf8.enumerated() {
            guard i < 17 else { return nil }
            if i % 3 == 2 {
                guard c == UInt8(ascii: ":") else { return nil }
                continue
            }
            guard let d = hexDigitValue(c) else { return nil }
            v = v << 4 | UInt64(d)
            n += 1
        }
        guard n == 12 else { return nil }
        raw = v
    }

    /// The 6 octets in wire order.
    public var bytes: [UInt8] { (0..<6).map { UInt8(truncatingIfNeeded: raw >> (40 - 8 * UInt64($0))) } }
    public var description: String { bytes.map { String(format: "%02x", $0) }.joined(separator: ":") }
}

/// The value of one ASCII hex digit (either case), or nil for any other byte: what a MAC
/// address's text and a percent-encoded form (the EC2 API's) are read with.
public func hexDigitValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
    default: nil
    }
}

/// Quotes a user string for an error message, so that empty and odd strings stay visible.
func quoted(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case _ where isControl(u): out += String(format: "\\u%04x", u.value)
        default: out.unicodeScalars.append(u)
        }
    }
    return out + "\""
}
