import Foundation
import RampartSystem

// Sockets made inside a node's namespace, and the small helpers every probe shares.

/// An errno as the harness reports it ("connection refused"): RampartSystem's text, lowercased.
func errnoText(_ code: Int32) -> String { Errno(code).message.lowercased() }

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32 = 1) {
    var v = value
    _ = setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
}

/// A non-blocking, close-on-exec socket created inside `namespace` (by name).
func makeSocket(in namespace: String, family: Int32, stream: Bool) throws -> Int32 {
    let type = Int32(stream ? SOCK_STREAM.rawValue : SOCK_DGRAM.rawValue)
        | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
    return try namespacedSocket(namespace, "socket() in \(namespace)") { socket(family, type, 0) }
}

/// A descriptor made by `make` (socket(), …) with the calling thread inside `namespace`;
/// a failure reads "`what`: reason".
func namespacedSocket(_ namespace: String, _ what: @autoclosure () -> String, _ make: () -> Int32) throws -> Int32 {
    do {
        return try NetworkNamespace.named(namespace).perform { () throws(SystemCallError) in
            try syscall("socket") { make() }
        }
    } catch let error as SystemCallError {
        throw HarnessError("\(what()): \(errnoText(error.errno.rawValue))")
    }
}

/// Binds a client socket to `source` (port 0), allowing an address the node does not own.
func bindSource(_ fd: Int32, _ source: String, family: Int32) throws {
    let address = try SocketAddress(source, port: 0)
    guard address.family == family else { throw HarnessError("source \(source) is not of the destination's family") }
    if family == AF_INET {
        setOption(fd, 0 /* SOL_IP */, 15 /* IP_FREEBIND */)
        setOption(fd, 0, 19 /* IP_TRANSPARENT */)
    } else {
        setOption(fd, 41 /* SOL_IPV6 */, 78 /* IPV6_FREEBIND */)
        setOption(fd, 41, 75 /* IPV6_TRANSPARENT */)
    }
    let rc = address.withPointer { bind(fd, $0, $1) }
    guard rc == 0 else { throw HarnessError("bind(\(source)): \(errnoText(errno))") }
}

func setNonBlockingCloseOnExec(_ fd: Int32) {
    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
}

let tokenCounter = TokenCounter()

final class TokenCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func next() -> String {
        lock.lock(); defer { lock.unlock() }
        value += 1
        return "rampart-probe-\(getpid())-\(value)"
    }
}

func sendAll(_ fd: Int32, _ text: String) -> Bool {
    let bytes = Array(text.utf8)
    return bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == bytes.count
}
