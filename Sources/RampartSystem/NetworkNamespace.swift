#if canImport(Glibc)
import Glibc
#endif
import CRampartSystem

/// A network namespace. A socket keeps the namespace it was created in, and a child process
/// starts in the namespace of the thread that spawned it, so Rampart enters a namespace only
/// for such a call and returns to its own at once (on the same thread), as `ip netns exec`
/// would for a whole process.
public enum NetworkNamespace: Sendable, Hashable, CustomStringConvertible {
    /// The namespace of the calling thread.
    case current
    /// A namespace created by `ip netns add NAME` (bind-mounted at `/run/netns/NAME`).
    case named(String)
    /// A namespace given by a path to its file (`/proc/PID/ns/net`, `/run/netns/NAME`).
    case path(String)

    public var description: String {
        switch self {
        case .current: "the current network namespace"
        case .named(let n): "network namespace \"\(n)\""
        case .path(let p): "network namespace \(p)"
        }
    }

    /// The namespace's file; nil for `.current`.
    public var filePath: String? {
        switch self {
        case .current: nil
        case .named(let n): "/run/netns/\(n)"
        case .path(let p): p
        }
    }

    /// Runs `body` with the calling thread inside this namespace, then moves the thread back.
    /// Only for short, synchronous work such as creating a socket, or starting a process that
    /// should live in the namespace. Throws `NoSuchNamespaceError` or `SystemCallError` when it
    /// cannot enter, and whatever `body` throws.
    public func perform<T, E: Error>(_ body: () throws(E) -> T) throws -> T {
        guard let path = filePath else { return try body() }
        if case .named(let n) = self, n.isEmpty || n.contains("/") || n == "." || n == ".." {
            throw NoSuchNamespaceError(name: n)
        }
        let target: Int32
        do {
            target = try syscall("open(\(path))") { open(path, O_RDONLY | O_CLOEXEC) }
        } catch {
            if error.errno == .ENOENT, case .named(let n) = self { throw NoSuchNamespaceError(name: n) }
            throw error
        }
        defer { close(target) }
        let original = try syscall("open(/proc/thread-self/ns/net)") { open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC) }
        defer { close(original) }
        try syscall("setns(\(path))") { rampart_setns_net(target) }
        defer {
            // Failing to return would leave this thread in the wrong namespace for whatever
            // runs on it next: that must never go unnoticed.
            do { try syscall("setns(back to the original namespace)") { rampart_setns_net(original) } } catch {
                fatalError("cannot return to the original network namespace: \(error)")
            }
        }
        return try body()
    }

    /// The identity of the calling thread's network namespace (device and inode of its file),
    /// e.g. to check that a thread came back.
    public static func currentIdentity() throws(SystemCallError) -> NamespaceIdentity {
        var st = stat()
        try syscall("stat(/proc/thread-self/ns/net)") { stat("/proc/thread-self/ns/net", &st) }
        return NamespaceIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }
}

/// Which namespace a namespace file is: two files are the same namespace iff these are equal.
public struct NamespaceIdentity: Sendable, Hashable {
    public var device: UInt64
    public var inode: UInt64
}

/// A named network namespace that does not exist (no `/run/netns/NAME`, or not a valid name).
public struct NoSuchNamespaceError: Error, Sendable, Hashable, CustomStringConvertible {
    public var name: String
    public init(name: String) { self.name = name }
    public var description: String { "network namespace \"\(name)\" does not exist" }
}
