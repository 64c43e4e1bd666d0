import RampartSystem

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
        case .systemCall(let call, let errno): SystemCallError(call, errno).description
        case .rejected(let failures):
            "the kernel rejected the transaction (nothing was changed): "
                + failures.map(\.description).joined(separator: "; ")
        case .generationChanged(let g):
            "the ruleset changed underneath us: another process committed after generation \(g); nothing was changed"
        case .outcomeUnknown(let why): "outcome unknown: \(why); read the table back before trusting it"
        case .protocolError(let why): "netlink protocol error: \(why)"
        case .noSuchNamespace(let name): NoSuchNamespaceError(name: name).description
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
        // The kernel's word for a set at its size is ENFILE, whose text ("too many open files
        // in system") would send an operator looking in the wrong place.
        if errno == .ENFILE, case .addElements? = operation { s += " (the set is full: its size is a hard limit)" }
        return s
    }
}

/// RampartSystem's syscall funnel (EINTR retried), its failure typed as this module's error.
@discardableResult
func syscall<T: BinaryInteger>(_ name: @autoclosure () -> String, _ body: () -> T) throws(NetlinkError) -> T {
    do {
        return try RampartSystem.syscall(name(), body)
    } catch {
        throw .systemCall(error.name, error.errno)
    }
}
