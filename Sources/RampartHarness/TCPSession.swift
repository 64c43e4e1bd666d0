import Foundation

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
