#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An errno value with its symbolic name, e.g. `ENOENT (No such file or directory)`, as
/// swift-system's `Errno`. The only place in Rampart where an errno becomes text.
public struct Errno: Error, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: Int32
    public init(_ rawValue: Int32) { self.rawValue = rawValue }

    /// The calling thread's errno now (read it before any other call can change it).
    public static var current: Errno { Errno(Glibc.errno) }

    public static let ENOENT = Errno(Glibc.ENOENT)
    public static let EEXIST = Errno(Glibc.EEXIST)
    public static let EBUSY = Errno(Glibc.EBUSY)
    public static let EINVAL = Errno(Glibc.EINVAL)
    public static let ENOBUFS = Errno(Glibc.ENOBUFS)
    public static let EAGAIN = Errno(Glibc.EAGAIN)
    public static let EINTR = Errno(Glibc.EINTR)
    public static let EPERM = Errno(Glibc.EPERM)
    public static let ERESTART = Errno(Glibc.ERESTART)
    public static let EMSGSIZE = Errno(Glibc.EMSGSIZE)
    public static let ENFILE = Errno(Glibc.ENFILE)
    public static let EOPNOTSUPP = Errno(Glibc.EOPNOTSUPP)
    public static let ENOSPC = Errno(Glibc.ENOSPC)
    public static let EACCES = Errno(Glibc.EACCES)
    public static let ENAMETOOLONG = Errno(Glibc.ENAMETOOLONG)
    public static let EPIPE = Errno(Glibc.EPIPE)
    public static let ECONNRESET = Errno(Glibc.ECONNRESET)
    public static let ECONNREFUSED = Errno(Glibc.ECONNREFUSED)
    public static let EINPROGRESS = Errno(Glibc.EINPROGRESS)
    public static let ECHILD = Errno(Glibc.ECHILD)

    /// The symbolic name (`ENOENT`) when known.
    public var name: String {
        switch rawValue {
        case Glibc.EPERM: "EPERM"
        case Glibc.ENOENT: "ENOENT"
        case Glibc.EINTR: "EINTR"
        case Glibc.EBADF: "EBADF"
        case Glibc.EAGAIN: "EAGAIN"
        case Glibc.ENOMEM: "ENOMEM"
        case Glibc.EACCES: "EACCES"
        case Glibc.EBUSY: "EBUSY"
        case Glibc.EEXIST: "EEXIST"
        case Glibc.ENODEV: "ENODEV"
        case Glibc.EINVAL: "EINVAL"
        case Glibc.ENFILE: "ENFILE"
        case Glibc.EMFILE: "EMFILE"
        case Glibc.ENOSPC: "ENOSPC"
        case Glibc.ERANGE: "ERANGE"
        case Glibc.ELOOP: "ELOOP"
        case Glibc.ENAMETOOLONG: "ENAMETOOLONG"
        case Glibc.EMSGSIZE: "EMSGSIZE"
        case Glibc.EPROTONOSUPPORT: "EPROTONOSUPPORT"
        case Glibc.EOPNOTSUPP: "EOPNOTSUPP"
        case Glibc.EAFNOSUPPORT: "EAFNOSUPPORT"
        case Glibc.ENOBUFS: "ENOBUFS"
        case Glibc.ENOTEMPTY: "ENOTEMPTY"
        case Glibc.ERESTART: "ERESTART"
        case Glibc.EOVERFLOW: "EOVERFLOW"
        case Glibc.EPIPE: "EPIPE"
        case Glibc.ECHILD: "ECHILD"
        case Glibc.ESRCH: "ESRCH"
        case Glibc.ENOEXEC: "ENOEXEC"
        case Glibc.ENOTDIR: "ENOTDIR"
        case Glibc.EISDIR: "EISDIR"
        case Glibc.ECONNRESET: "ECONNRESET"
        case Glibc.ECONNREFUSED: "ECONNREFUSED"
        case Glibc.EINPROGRESS: "EINPROGRESS"
        case Glibc.ETIMEDOUT: "ETIMEDOUT"
        case Glibc.EHOSTUNREACH: "EHOSTUNREACH"
        case Glibc.ENETUNREACH: "ENETUNREACH"
        case Glibc.EADDRINUSE: "EADDRINUSE"
        case Glibc.EADDRNOTAVAIL: "EADDRNOTAVAIL"
        case Glibc.ENOTSOCK: "ENOTSOCK"
        case Glibc.ENOSYS: "ENOSYS"
        default: "errno \(rawValue)"
        }
    }

    /// The C library's text for it ("No such file or directory").
    public var message: String { String(cString: strerror(rawValue)) }

    public var description: String { "\(name) (\(message))" }
}
