import Foundation

/// A TCP port on 127.0.0.1 that nobody listens on now (bound to port 0, read back, released),
/// for a server process that must be told its port (`rampart-relay --listen`).
public func freeLoopbackPort() throws -> Int {
    let (fd, port) = try boundLoopbackSocket()
    close(fd)
    return port
}

/// A socket listening on 127.0.0.1 that never accepts: the kernel completes a client's TCP
/// handshake and nothing ever answers (a server that hangs). The caller closes `fd`.
public func silentLoopbackListener() throws -> (fd: Int32, port: Int) {
    let (fd, port) = try boundLoopbackSocket()
    guard listen(fd, 8) == 0 else {
        let e = errno
        close(fd)
        throw HarnessError("listen(): \(errnoText(e))")
    }
    return (fd, port)
}

/// A TCP socket bound to 127.0.0.1 on a port the kernel picked, and that port.
private func boundLoopbackSocket() throws -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw HarnessError("socket(): \(errnoText(errno))") }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &addr) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard ok else {
        let e = errno
        close(fd)
        throw HarnessError("no free TCP port on 127.0.0.1: \(errnoText(e))")
    }
    return (fd, Int(UInt16(bigEndian: addr.sin_port)))
}

/// A blocking line-oriented TCP client of a server on 127.0.0.1: says what a well-behaved
/// client never would (tests), or asks one question (the bench's relay status).
public final class LoopbackLineClient {
    public let fd: Int32
    private var pending: [UInt8] = []

    /// Connects to 127.0.0.1:`port`; reads give up after `timeout` seconds. `receiveBuffer`
    /// shrinks SO_RCVBUF (before connecting, so that the window is small), to play a slow reader.
    public init(port: Int, timeout: Int = 5, receiveBuffer: Int? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket(): \(errnoText(errno))") }
        if let receiveBuffer { setOption(fd, SOL_SOCKET, SO_RCVBUF, Int32(receiveBuffer)) }
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw HarnessError("connect to 127.0.0.1:\(port): \(errnoText(e))")
        }
    }

    deinit { close(fd) }

    /// Sends `line` and a `\n`.
    public func send(_ line: String) { _ = sendAll(fd, line + "\n") }

    /// The next line's bytes (without its `\n`); nil at end of stream, error or timeout.
    public func receiveLine() -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            if let i = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(pending[..<i])
                pending.removeFirst(i + 1)
                return line
            }
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return nil }
            pending += buf[..<n]
        }
    }
}
