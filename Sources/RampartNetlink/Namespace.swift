#if canImport(Glibc)
import Glibc
#endif
import CNetfilter

/// The network namespace a netlink socket talks to. A socket keeps the namespace it was
/// created in, so Rampart enters the target namespace only for the `socket()` call and returns
/// to its own at once (on the same thread), as `ip netns exec` would for a whole process.
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

    var filePath: String? {
        switch self {
        case .current: nil
        case .named(let n): "/run/netns/\(n)"
        case .path(let p): p
        }
    }

    /// Runs `body` with the calling thread inside this namespace, then moves the thread back.
    /// Only for short, synchronous work such as creating a socket, or starting a process that
    /// should live in the namespace (a child inherits the namespace of the thread that made it).
    public func perform<T>(_ body: () throws -> T) throws -> T {
        var result: Result<T, any Error>?
        try run { () throws(NetlinkError) in
            result = Result { try body() }
        }
        return try result!.get()
    }

    func run<T>(_ body: () throws(NetlinkError) -> T) throws(NetlinkError) -> T {
        guard let path = filePath else { return try body() }
        if case .named(let n) = self, n.isEmpty || n.contains("/") || n == "." || n == ".." {
            throw .noSuchNamespace(n)
        }
        let target = open(path, O_RDONLY | O_CLOEXEC)
        if target < 0 {
            if errno == ENOENT, case .named(let n) = self { throw .noSuchNamespace(n) }
            throw .systemCall("open(\(path))", Errno(errno))
        }
        defer { close(target) }
        let original = try syscall("open(/proc/thread-self/ns/net)") { open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC) }
        defer { close(original) }
        try syscall("setns(\(path))") { rampart_setns_net(target) }
        defer {
            // Failing to return would leave this thread in the wrong namespace for whatever
            // runs on it next: that must never go unnoticed.
            if rampart_setns_net(original) != 0 {
                fatalError("cannot return to the original network namespace: errno \(errno)")
            }
        }
        return try body()
    }
}
