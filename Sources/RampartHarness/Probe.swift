import Foundation
import RampartNetlink

// Probes: real packets from one namespace to an address, deciding "passed" or "denied".
//
// Everything here runs inside the test process, without starting `nc` or `socat`: sockets are
// created with the calling thread briefly inside the wanted namespace (a socket keeps the
// namespace it was made in), so a probe costs microseconds when it passes and exactly its
// timeout when it is dropped. Only ICMP starts a process (`ping`, spawned inside the source
// namespace). Listeners are bound to the destination address and port and kept for the life of
// their topology, so ports are never rebound between probes (no TIME_WAIT or reuse flakiness),
// and a probe never fails because "no one was listening".

/// One probe: from a node of a topology to an address.
public struct Probe: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable, CustomStringConvertible {
        /// TCP connect, then one line sent and echoed back.
        case tcp(port: UInt16)
        /// One datagram to a UDP echo listener (which answers with the same datagram).
        case udp(port: UInt16)
        /// One ICMP / ICMPv6 echo request (`ping -c 1`).
        case icmp

        public var description: String {
            switch self {
            case .tcp(let p): "tcp/\(p)"
            case .udp(let p): "udp/\(p)"
            case .icmp: "icmp"
            }
        }
    }

    public var kind: Kind
    /// The name of the node the probe starts from (an instance, an outside host, or `"hv"`).
    public var from: String
    /// The destination address (IPv4 or IPv6, no prefix length).
    public var to: String
    /// The source address to send from; nil lets the kernel choose (the node's first address of
    /// that family). For TCP and UDP it need not be assigned to the node (the socket is bound
    /// with IP_FREEBIND + IP_TRANSPARENT, so the packet leaves with that source even though
    /// no reply can come back); for ICMP it must be assigned (see `TopologyNode.addAddress`).
    public var source: String?
    /// Seconds to wait for the answer; a denied probe costs this much.
    public var timeout: Double

    public init(_ kind: Kind, from: String, to: String, source: String? = nil, timeout: Double = 1) {
        self.kind = kind
        self.from = from
        self.to = to
        self.source = source
        self.timeout = timeout
    }

    public static func tcp(from: String, to: String, port: UInt16, source: String? = nil, timeout: Double = 1) -> Probe {
        Probe(.tcp(port: port), from: from, to: to, source: source, timeout: timeout)
    }

    public static func udp(from: String, to: String, port: UInt16, source: String? = nil, timeout: Double = 1) -> Probe {
        Probe(.udp(port: port), from: from, to: to, source: source, timeout: timeout)
    }

    public static func icmp(from: String, to: String, source: String? = nil, timeout: Double = 1) -> Probe {
        Probe(.icmp, from: from, to: to, source: source, timeout: timeout)
    }

    public var description: String {
        "\(kind) \(from) → \(to)" + (source.map { " (from \($0))" } ?? "")
    }
}

/// What a probe saw.
public struct ProbeResult: Sendable, CustomStringConvertible {
    public var probe: Probe
    /// The verdict tests assert on. TCP: the connection was established and a line came back.
    /// UDP: the listener received the datagram (one-way; see `answered`). ICMP: a reply came.
    public var passed: Bool
    /// The destination received it (for ICMP: same as `answered`).
    public var delivered: Bool
    /// A reply came back to the source (TCP echo, UDP echo, ICMP echo reply): proves the
    /// return direction too, i.e. stateful return traffic.
    public var answered: Bool
    /// The source address as the listener saw it (TCP and UDP, when delivered).
    public var seenSource: String?
    /// Why it ended: "echoed", "timeout", "connection refused", "ping exit 1", ...
    public var detail: String
    /// Seconds from start to verdict.
    public var elapsed: Double

    public var description: String {
        "\(probe): \(passed ? "passed" : "DENIED") (\(detail)"
            + (seenSource.map { ", seen from \($0)" } ?? "") + String(format: ", %.3fs)", elapsed)
    }
}

// MARK: - Socket addresses

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

private func errnoText(_ code: Int32) -> String { String(cString: strerror(code)).lowercased() }

private func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

private func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32 = 1) {
    var v = value
    _ = setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
}

/// A non-blocking, close-on-exec socket created inside `namespace` (by name).
func makeSocket(in namespace: String, family: Int32, stream: Bool) throws -> Int32 {
    let type = Int32(stream ? SOCK_STREAM.rawValue : SOCK_DGRAM.rawValue)
        | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
    let fd = try NetworkNamespace.named(namespace).perform { socket(family, type, 0) }
    guard fd >= 0 else { throw HarnessError("socket() in \(namespace): \(errnoText(errno))") }
    return fd
}

/// Binds a client socket to `source` (port 0), allowing an address the node does not own.
private func bindSource(_ fd: Int32, _ source: String, family: Int32) throws {
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

private func setNonBlockingCloseOnExec(_ fd: Int32) {
    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
}

private let tokenCounter = TokenCounter()

private final class TokenCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func next() -> String {
        lock.lock(); defer { lock.unlock() }
        value += 1
        return "rampart-probe-\(getpid())-\(value)"
    }
}

private func sendAll(_ fd: Int32, _ text: String) -> Bool {
    let bytes = Array(text.utf8)
    return bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == bytes.count
}

// MARK: - Echo listeners

/// TCP and UDP echo listeners in any number of namespaces, served by one thread with poll().
/// TCP: every line received is recorded and written back. UDP: every datagram is recorded and
/// sent back to its sender. "Recorded" = the token (the line) → the peer address seen, which is
/// how a probe learns that its datagram arrived even when no reply can come back.
final class EchoServer: @unchecked Sendable {
    private struct Key: Hashable {
        var namespace: String, stream: Bool, address: String, port: UInt16
    }
    private enum Entry {
        case listener(stream: Bool)
        case connection(peer: String, buffer: [UInt8])
    }

    private let lock = NSLock()
    private var listeners: [Key: Int32] = [:]
    private var entries: [Int32: Entry] = [:]
    private var seen: [String: String] = [:]
    private var stopping = false
    private var started = false
    private var wake: (read: Int32, write: Int32) = (-1, -1)
    private let finished = DispatchSemaphore(value: 0)

    init() throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw HarnessError("pipe: \(errnoText(errno))") }
        for fd in fds { setNonBlockingCloseOnExec(fd) }
        wake = (fds[0], fds[1])
    }

    deinit {
        stop()
    }

    /// Makes sure an echo listener is bound to `address`:`port` in `namespace` (created and
    /// listening before this returns, so a following probe cannot race it).
    func ensureListener(namespace: String, stream: Bool, address: String, port: UInt16) throws {
        let canonical = canonicalAddress(address) ?? address
        let key = Key(namespace: namespace, stream: stream, address: canonical, port: port)
        lock.lock()
        let exists = listeners[key] != nil
        let isStopping = stopping
        lock.unlock()
        if exists { return }
        if isStopping { throw HarnessError("echo server stopped") }
        let sa = try SocketAddress(canonical, port: port)
        let fd = try makeSocket(in: namespace, family: sa.family, stream: stream)
        setOption(fd, SOL_SOCKET, SO_REUSEADDR)
        if sa.family == AF_INET6 { setOption(fd, 41, 26 /* IPV6_V6ONLY */) }
        var rc = sa.withPointer { bind(fd, $0, $1) }
        if rc == 0 && stream { rc = listen(fd, 128) }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw HarnessError("echo listener \(stream ? "tcp" : "udp") \(canonical) port \(port) in \(namespace): \(errnoText(e))")
        }
        lock.lock()
        if listeners[key] != nil {  // another thread won the race
            lock.unlock()
            close(fd)
            return
        }
        listeners[key] = fd
        entries[fd] = .listener(stream: stream)
        let startNow = !started
        started = true
        lock.unlock()
        if startNow {
            let thread = Thread { [self] in self.loop() }
            thread.name = "rampart-echo"
            thread.start()
        } else {
            poke()
        }
    }

    /// The peer address that sent `token`, if it arrived.
    func seenSource(of token: String) -> String? {
        lock.lock(); defer { lock.unlock() }
        return seen[token]
    }

    /// Stops the thread and closes every listener and connection. Idempotent.
    func stop() {
        lock.lock()
        let wasStarted = started && !stopping
        stopping = true
        lock.unlock()
        if wasStarted {
            poke()
            finished.wait()
        }
        lock.lock()
        for fd in entries.keys { close(fd) }
        entries.removeAll()
        listeners.removeAll()
        if wake.read >= 0 { close(wake.read); close(wake.write); wake = (-1, -1) }
        lock.unlock()
    }

    private func poke() {
        var b: UInt8 = 1
        _ = write(wake.write, &b, 1)
    }

    private func loop() {
        while true {
            lock.lock()
            if stopping { lock.unlock(); break }
            var fds = [pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
            for fd in entries.keys { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
            lock.unlock()
            let n = poll(&fds, nfds_t(fds.count), -1)
            if n < 0 { if errno == EINTR { continue } else { break } }
            if fds[0].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                while read(wake.read, &drain, drain.count) > 0 {}
            }
            lock.lock()
            for p in fds.dropFirst() where p.revents != 0 {
                guard let entry = entries[p.fd] else { continue }
                switch entry {
                case .listener(stream: true): acceptAll(p.fd)
                case .listener(stream: false): echoDatagrams(p.fd)
                case .connection(let peer, let buffer): serve(p.fd, peer: peer, buffer: buffer)
                }
            }
            lock.unlock()
        }
        finished.signal()
    }

    // Called with the lock held.
    private func acceptAll(_ fd: Int32) {
        while true {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let c = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    accept(fd, $0, &length)
                }
            }
            if c < 0 { return }
            setNonBlockingCloseOnExec(c)
            entries[c] = .connection(peer: SocketAddress.text(of: storage), buffer: [])
        }
    }

    private func echoDatagrams(_ fd: Int32) {
        var data = [UInt8](repeating: 0, count: 2048)
        while true {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let n = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &data, data.count, 0, $0, &length) }
            }
            if n < 0 { return }
            let token = String(decoding: data[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            seen[token] = SocketAddress.text(of: storage)
            _ = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, data, n, Int32(MSG_NOSIGNAL), $0, length) }
            }
        }
    }

    private func serve(_ fd: Int32, peer: String, buffer: [UInt8]) {
        var buffer = buffer
        var chunk = [UInt8](repeating: 0, count: 4096)
        var open = true
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n > 0 { buffer += chunk[0..<n]; continue }
            if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) { open = false }
            break
        }
        while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
            let line = Array(buffer[..<newline])
            buffer.removeSubrange(...newline)
            seen[String(decoding: line, as: UTF8.self)] = peer
            _ = (line + [UInt8(ascii: "\n")]).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
        if open {
            entries[fd] = .connection(peer: peer, buffer: buffer)
        } else {
            entries[fd] = nil
            close(fd)
        }
    }
}

// MARK: - Running probes

/// A probe with its namespaces resolved (by the topology).
struct ResolvedProbe {
    var probe: Probe
    var sourceNamespace: String
    /// Where the destination address lives (the listener's namespace); nil for ICMP.
    var destinationNamespace: String?
}

/// Runs probes concurrently from one thread: all sockets are non-blocking and driven by one
/// poll() loop, and ping processes are reaped with waitpid(WNOHANG) as they exit.
enum ProbeRunner {
    private final class Client {
        let probe: Probe
        let token = tokenCounter.next()
        var start = 0.0
        var deadline = 0.0
        var fd: Int32 = -1
        var pid: pid_t = 0
        var connected = false
        var buffer: [UInt8] = []
        var result: ProbeResult?

        init(_ probe: Probe) {
            self.probe = probe
        }

        /// Starts the clock.
        func begin() {
            start = now()
            // ping enforces its own timeout; give the process a grace period to exit.
            deadline = start + probe.timeout + (probe.kind == .icmp ? 2 : 0)
        }

        func finish(passed: Bool, delivered: Bool, answered: Bool, seen: String?, _ detail: String) {
            guard result == nil else { return }
            result = ProbeResult(probe: probe, passed: passed, delivered: delivered, answered: answered,
                                 seenSource: seen, detail: detail, elapsed: now() - start)
            if fd >= 0 { close(fd); fd = -1 }
        }
    }

    /// Probes in flight at once: far below the usual 1024 open files.
    static let maxInFlight = 256
    /// ping processes at once.
    static let maxPings = 64

    static func run(_ probes: [ResolvedProbe], server: EchoServer) throws -> [ProbeResult] {
        // Listeners first, so that no probe can race its listener.
        for p in probes {
            guard let ns = p.destinationNamespace else { continue }
            switch p.probe.kind {
            case .tcp(let port): try server.ensureListener(namespace: ns, stream: true, address: p.probe.to, port: port)
            case .udp(let port): try server.ensureListener(namespace: ns, stream: false, address: p.probe.to, port: port)
            case .icmp: break
            }
        }
        let clients = probes.map { Client($0.probe) }
        defer {
            for c in clients {
                if c.fd >= 0 { close(c.fd) }
                if c.pid > 0 { kill(c.pid, SIGKILL); reap(c.pid) }
            }
        }
        // At most `maxInFlight` at once (each holds a socket, and the listener side one more),
        // started in order as earlier ones finish.
        var next = 0
        var running: [Client] = []
        while true {
            running.removeAll { $0.result != nil }
            while next < clients.count && running.count < maxInFlight {
                if clients[next].probe.kind == .icmp && running.count(where: { $0.pid > 0 }) >= maxPings { break }
                clients[next].begin()
                try start(clients[next], in: probes[next].sourceNamespace, server: server)
                if clients[next].result == nil { running.append(clients[next]) }
                next += 1
            }
            let active = running
            if active.isEmpty { if next == clients.count { break } else { continue } }
            // ping processes are polled with waitpid(WNOHANG) every 10 ms; sockets by poll().
            let pinging = active.contains { $0.pid > 0 }
            let sockets = active.filter { $0.fd >= 0 }
            var fds = sockets.map { c in
                pollfd(fd: c.fd, events: Int16(c.probe.kind.isTCP && !c.connected ? POLLOUT : POLLIN), revents: 0)
            }
            var wait = max(0, (active.map(\.deadline).min()! - now()) * 1000)
            if pinging { wait = min(wait, 10) }
            _ = poll(&fds, nfds_t(fds.count), Int32(wait.rounded(.up)))
            for (c, p) in zip(sockets, fds) where p.revents != 0 {
                step(c, revents: p.revents, server: server)
            }
            for c in active where c.pid > 0 {
                var status: Int32 = 0
                guard waitpid(c.pid, &status, WNOHANG) == c.pid else { continue }
                c.pid = 0
                let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
                c.finish(passed: code == 0, delivered: code == 0, answered: code == 0, seen: nil,
                         code == 0 ? "echo reply" : "no reply (ping exit \(code))")
            }
            let t = now()
            for c in active where c.result == nil && t >= c.deadline {
                expire(c, server: server)
            }
        }
        return clients.map { $0.result! }
    }

    private static func start(_ c: Client, in namespace: String, server: EchoServer) throws {
        let probe = c.probe
        switch probe.kind {
        case .icmp:
            try spawnPing(c, in: namespace)
        case .tcp(let port), .udp(let port):
            let stream = probe.kind.isTCP
            let destination = try SocketAddress(probe.to, port: port)
            c.fd = try makeSocket(in: namespace, family: destination.family, stream: stream)
            if let source = probe.source { try bindSource(c.fd, source, family: destination.family) }
            let rc = destination.withPointer { connect(c.fd, $0, $1) }
            let e = errno
            if stream {
                if rc == 0 { c.connected = true; sendToken(c) }
                else if e != EINPROGRESS { c.finish(passed: false, delivered: false, answered: false, seen: nil, errnoText(e)) }
            } else {
                guard rc == 0 else {
                    c.finish(passed: false, delivered: false, answered: false, seen: nil, errnoText(e))
                    return
                }
                if !sendAll(c.fd, c.token) {
                    c.finish(passed: false, delivered: false, answered: false, seen: nil, "send: " + errnoText(errno))
                }
            }
        }
    }

    private static func sendToken(_ c: Client) {
        if !sendAll(c.fd, c.token + "\n") {
            c.finish(passed: false, delivered: false, answered: false, seen: nil, "send: " + errnoText(errno))
        }
    }

    private static func step(_ c: Client, revents: Int16, server: EchoServer) {
        switch c.probe.kind {
        case .icmp:
            break
        case .tcp:
            if !c.connected {
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &error, &length)
                if error != 0 {
                    c.finish(passed: false, delivered: false, answered: false, seen: nil, errnoText(error))
                    return
                }
                c.connected = true
                sendToken(c)
                return
            }
            var chunk = [UInt8](repeating: 0, count: 512)
            let n = read(c.fd, &chunk, chunk.count)
            if n > 0 {
                c.buffer += chunk[0..<n]
                if String(decoding: c.buffer, as: UTF8.self).contains(c.token + "\n") {
                    c.finish(passed: true, delivered: true, answered: true, seen: server.seenSource(of: c.token), "echoed")
                }
            } else if n == 0 || errno != EAGAIN {
                let why = n == 0 ? "closed by peer" : errnoText(errno)
                let seen = server.seenSource(of: c.token)
                c.finish(passed: false, delivered: seen != nil, answered: false, seen: seen, why)
            }
        case .udp:
            var chunk = [UInt8](repeating: 0, count: 2048)
            let n = recv(c.fd, &chunk, chunk.count, 0)
            if n > 0 {
                if String(decoding: chunk[0..<n], as: UTF8.self) == c.token {
                    c.finish(passed: true, delivered: true, answered: true, seen: server.seenSource(of: c.token), "echoed")
                }
            } else if n < 0 && errno != EAGAIN {
                // An ICMP error (port/host unreachable) came back.
                let why = errnoText(errno)
                let seen = server.seenSource(of: c.token)
                c.finish(passed: seen != nil, delivered: seen != nil, answered: false, seen: seen, why)
            }
        }
    }

    private static func expire(_ c: Client, server: EchoServer) {
        switch c.probe.kind {
        case .icmp:
            if c.pid > 0 { kill(c.pid, SIGKILL); reap(c.pid); c.pid = 0 }
            c.finish(passed: false, delivered: false, answered: false, seen: nil, "ping did not exit")
        case .tcp:
            let seen = server.seenSource(of: c.token)
            c.finish(passed: false, delivered: seen != nil, answered: false, seen: seen,
                     c.connected ? "no echo (timeout)" : "timeout")
        case .udp:
            let seen = server.seenSource(of: c.token)
            c.finish(passed: seen != nil, delivered: seen != nil, answered: false, seen: seen,
                     seen != nil ? "delivered, no reply" : "timeout")
        }
    }

    /// Starts `ping -c 1` inside `namespace`; the run loop reaps it.
    private static func spawnPing(_ c: Client, in namespace: String) throws {
        let probe = c.probe
        var arguments = ["ping", isIPv6(probe.to) ? "-6" : "-4", "-n", "-q", "-c", "1",
                         "-W", String(format: "%.3f", probe.timeout)]
        if let source = probe.source { arguments += ["-I", bareAddress(source)] }
        arguments.append(bareAddress(probe.to))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var pid: pid_t = 0
        let rc = try NetworkNamespace.named(namespace).perform {
            posix_spawnp(&pid, pingPath, &actions, nil, argv, environ)
        }
        guard rc == 0 else { throw HarnessError("posix_spawn ping: \(errnoText(rc))") }
        c.pid = pid
    }

    /// iputils' ping, by absolute path when it is in the usual place.
    private static let pingPath: String = {
        let candidates: [String] = ["/usr/bin/ping", "/bin/ping"]
        return candidates.first { access($0, X_OK) == 0 } ?? "ping"
    }()

    /// Waits for `pid` and returns its exit status (128+signal when killed).
    @discardableResult
    static func reap(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return -1 }
        }
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}

extension Probe.Kind {
    var isTCP: Bool { if case .tcp = self { true } else { false } }
}

// MARK: - A long-lived TCP connection

/// One TCP connection kept open across time: opened once, then `exchange()` sends a line and
/// waits for its echo. For "an established connection keeps working across re-applies".
public final class TCPSession: @unchecked Sendable, CustomStringConvertible {
    public let from: String
    public let to: String
    public let port: UInt16
    /// The connection's own end (address and ephemeral port), e.g. to find it in conntrack.
    public let localAddress: String
    public let localPort: UInt16
    private let lock = NSLock()
    private var fd: Int32
    private var buffer: [UInt8] = []
    private let server: EchoServer

    init(from: String, sourceNamespace: String, to: String, destinationNamespace: String, port: UInt16,
         source: String?, timeout: Double, server: EchoServer) throws {
        self.from = from
        self.to = to
        self.port = port
        self.server = server
        try server.ensureListener(namespace: destinationNamespace, stream: true, address: to, port: port)
        let destination = try SocketAddress(to, port: port)
        let fd = try makeSocket(in: sourceNamespace, family: destination.family, stream: true)
        do {
            if let source { try bindSource(fd, source, family: destination.family) }
            let rc = destination.withPointer { connect(fd, $0, $1) }
            if rc != 0 {
                guard errno == EINPROGRESS else { throw HarnessError("connect \(to):\(port): \(errnoText(errno))") }
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                guard poll(&p, 1, Int32(timeout * 1000)) == 1 else {
                    throw HarnessError("TCP session \(from) → \(to):\(port): connect timed out")
                }
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
                guard error == 0 else { throw HarnessError("TCP session \(from) → \(to):\(port): \(errnoText(error))") }
            }
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            _ = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            localAddress = SocketAddress.text(of: storage)
            localPort = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
            }  // sin_port and sin6_port are at the same offset
        } catch {
            Glibc.close(fd)
            throw error
        }
        self.fd = fd
    }

    deinit { close() }

    public var isOpen: Bool {
        lock.lock(); defer { lock.unlock() }
        return fd >= 0
    }

    /// Sends one line and waits up to `timeout` seconds for it to come back. False when the
    /// echo does not arrive in time (dropped) or the connection broke (reset, closed). A line
    /// held up by a drop may still arrive later; it is then ignored.
    public func exchange(timeout: Double = 1) -> Bool {
        lock.lock(); defer { lock.unlock() }
        guard fd >= 0 else { return false }
        let token = tokenCounter.next()
        guard sendAll(fd, token + "\n") else { return false }
        let deadline = now() + timeout
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let remaining = deadline - now()
            if remaining <= 0 { return false }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32((remaining * 1000).rounded(.up)))
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { return false }
            let n = read(fd, &chunk, chunk.count)
            if n > 0 {
                buffer += chunk[0..<n]
                while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                    let line = String(decoding: buffer[..<newline], as: UTF8.self)
                    buffer.removeSubrange(...newline)
                    if line == token { return true }
                }
            } else if n == 0 || (errno != EAGAIN && errno != EINTR) {
                return false
            }
        }
    }

    /// Closes the connection (idempotent).
    public func close() {
        lock.lock(); defer { lock.unlock() }
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    public var description: String { "TCP session \(from) [\(localAddress):\(localPort)] → \(to):\(port)" }
}
