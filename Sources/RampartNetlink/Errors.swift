#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An errno value with its symbolic name, e.g. `ENOENT (No such file or directory)`.
public struct Errno: Error, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: Int32
    public init(_ rawValue: Int32) { self.rawValue = rawValue }

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
    public static let EOPNOTSUPP = Errno(Glibc.EOPNOTSUPP)
    public static let ENOSPC = Errno(Glibc.ENOSPC)

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
        default: "errno \(rawValue)"
        }
    }

    public var description: String { "\(name) (\(String(cString: strerror(rawValue))))" }
}

/// Why a netlink request failed.
public enum NetlinkError: Error, Sendable, CustomStringConvertible {
    /// A system call failed (`socket`, `sendmsg`, `setns`, ...).
    case systemCall(String, Errno)
    /// The kernel rejected operations of a batch; the whole batch was aborted and nothing
    /// changed. Each failure names the operation (its index in the batch) and the errno.
    case rejected([OperationFailure])
    /// The batch was guarded by a generation and someone else committed since: nothing changed.
    case generationChanged(expected: UInt32)
    /// Replies were lost (ENOBUFS on receive) or never came: the batch may or may not have
    /// committed. Reconcile by reading back (or by the generation id) before trusting any state.
    case outcomeUnknown(String)
    /// A reply did not parse, or a dump was inconsistent more times than we retry.
    case protocolError(String)
    /// The named network namespace does not exist.
    case noSuchNamespace(String)

    public var description: String {
        switch self {
        case .systemCall(let call, let errno): "\(call) failed: \(errno)"
        case .rejected(let failures):
            "the kernel rejected the transaction (nothing was changed): "
                + failures.map(\.description).joined(separator: "; ")
        case .generationChanged(let g):
            "the ruleset changed underneath us: another process committed after generation \(g); nothing was changed"
        case .outcomeUnknown(let why): "outcome unknown: \(why); read the table back before trusting it"
        case .protocolError(let why): "netlink protocol error: \(why)"
        case .noSuchNamespace(let name): "network namespace \"\(name)\" does not exist"
        }
    }

    /// The errno of the first failure, if any (convenient in tests and exit codes).
    public var errno: Errno? {
        switch self {
        case .systemCall(_, let e): e
        case .rejected(let f): f.first?.errno
        case .generationChanged: .ERESTART
        default: nil
        }
    }
}

/// One operation the kernel refused.
public struct OperationFailure: Sendable, Hashable, CustomStringConvertible {
    /// Index of the operation in the batch, nil if the error concerned the batch as a whole.
    public var index: Int?
    /// The operation, as sent.
    public var operation: BatchOperation?
    public var errno: Errno
    /// The kernel's extended-ack text, when it gave one.
    public var kernelMessage: String?

    public var description: String {
        var s = operation.map { "operation #\(index ?? -1) (\($0))" } ?? "the batch"
        s += ": \(errno)"
        if let kernelMessage, !kernelMessage.isEmpty { s += ": \(kernelMessage)" }
        return s
    }
}

/// Runs a system call that returns -1 and sets errno on failure, retrying on EINTR, and turns
/// the failure into a typed error naming the call.
@discardableResult
func syscall<T: BinaryInteger>(_ name: @autoclosure () -> String, _ body: () -> T) throws(NetlinkError) -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let e = Glibc.errno
        if e == Glibc.EINTR { continue }
        throw .systemCall(name(), Errno(e))
    }
}
