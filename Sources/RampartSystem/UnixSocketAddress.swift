#if canImport(Glibc)
import Glibc
#endif

/// The address of a Unix domain socket: a path (`/run/rampart/rampartd.sock`) or, written with
/// a leading `@`, a name in the abstract namespace (as systemd's `NOTIFY_SOCKET` may be).
/// Checked when made: a path that does not fit a `sockaddr_un` is refused with a clear error
/// instead of being cut short (which would reach another socket).
public struct UnixSocketAddress: Sendable, Hashable, CustomStringConvertible {
    public let path: String
    /// The bytes of `sun_path` (an abstract name starts with a NUL byte instead of `@`).
    private let bytes: [UInt8]

    /// The longest path a `sockaddr_un` holds, in bytes (its `sun_path`, less the final NUL).
    public static let maximumPathLength = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    public init(_ path: String) throws(UnixSocketAddressError) {
        var bytes = Array(path.utf8)
        guard !bytes.isEmpty else { throw .empty }
        guard !bytes.contains(0) else { throw .containsNUL(path) }
        guard bytes.count <= Self.maximumPathLength else {
            throw .tooLong(path, bytes: bytes.count, limit: Self.maximumPathLength)
        }
        if bytes[0] == UInt8(ascii: "@") { bytes[0] = 0 }
        self.path = path
        self.bytes = bytes
    }

    /// True for a name in the abstract namespace (`@name`).
    public var isAbstract: Bool { bytes.first == 0 }

    /// Calls `body` with the packed `sockaddr_un` and its length (the whole structure for a
    /// path, as most programs pass it; exactly the name for an abstract address, whose
    /// trailing bytes would otherwise be part of the name).
    public func withSockaddr<R, E: Error>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws(E) -> R) throws(E) -> R {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let length = isAbstract
            ? socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
            : socklen_t(MemoryLayout<sockaddr_un>.size)
        return try withUnsafePointer(to: &addr) { (p) throws(E) -> R in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(E) -> R in try body(sa, length) }
        }
    }

    /// `connect(fd, self)`. Not through the funnel's EINTR retry: a connect interrupted by a
    /// signal goes on in the background, and calling it again fails (EALREADY).
    public func connect(_ fd: Int32) throws(SystemCallError) {
        try withSockaddr { (sa, length) throws(SystemCallError) in
            if Glibc.connect(fd, sa, length) != 0 { throw SystemCallError("connect(\(path))", .current) }
        }
    }

    /// `bind(fd, self)`, through the syscall funnel.
    public func bind(_ fd: Int32) throws(SystemCallError) {
        try withSockaddr { (sa, length) throws(SystemCallError) in
            _ = try syscall("bind(\(path))") { Glibc.bind(fd, sa, length) }
        }
    }

    public var description: String { path }
}

/// Why a text is not a Unix socket address.
public enum UnixSocketAddressError: Error, Sendable, Hashable, CustomStringConvertible {
    case empty
    case containsNUL(String)
    case tooLong(String, bytes: Int, limit: Int)

    public var description: String {
        switch self {
        case .empty: "a Unix socket path cannot be empty"
        case .containsNUL(let p): "the Unix socket path \(p.debugDescription) contains a NUL byte"
        case .tooLong(let p, let bytes, let limit):
            "the Unix socket path \(p) is \(bytes) bytes long; a Unix socket address holds at most \(limit) (choose a shorter path)"
        }
    }
}
