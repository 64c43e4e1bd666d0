import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A stand-in for a hypervisor's rampartd on a Unix socket: answers `GET /v1/status` with its
/// host and records every refresh call POSTed to it (one request per connection).
final class FakeDaemon: @unchecked Sendable {
    let path: String
    let host: String
    private let fd: Int32
    private let lock = NSLock()
    private var paths: [String] = []

    init(path: String, host: String) throws {
        self.path = path
        self.host = host
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { buf in
            for (i, b) in path.utf8.enumerated() where i < buf.count - 1 { buf[i] = b }
        }
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard ok == 0, listen(fd, 16) == 0 else { throw FixtureError(description: "fake daemon: cannot listen on \(path)") }
        let t = Thread { [self] in serve() }
        t.start()
    }

    private var statusCalls = 0

    /// The refresh calls received so far.
    var received: [String] { lock.withLock { paths } }
    /// How many times it was asked its status (which host it serves).
    var statusAsked: Int { lock.withLock { statusCalls } }

    private func serve() {
        while true {
            let c = accept(fd, nil, nil)
            if c < 0 { return }
            var data = [UInt8]()
            var buf = [UInt8](repeating: 0, count: 4096)
            while !String(decoding: data, as: UTF8.self).contains("\r\n\r\n") {
                let n = recv(c, &buf, buf.count, 0)
                if n <= 0 { break }
                data += buf[0..<n]
            }
            let line = String(decoding: data, as: UTF8.self).split(separator: "\r\n").first ?? ""
            let parts = line.split(separator: " ")
            var body = "{\"host\":\"\(host)\"}"
            if parts.count >= 2, parts[0] == "POST" {
                let p = String(parts[1].split(separator: "?").first ?? "")
                lock.withLock { paths.append(p) }
                body = "{\"applied\":true}"
            } else {
                lock.withLock { statusCalls += 1 }
            }
            let response = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
            _ = response.withCString { send(c, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
            close(c)
        }
    }

    /// Stops listening and removes the socket file (its thread holds it: deinit alone would
    /// not run while it serves).
    func stop() {
        shutdown(fd, Int32(SHUT_RDWR))
        unlink(path)
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        unlink(path)
    }
}
