import Foundation
#if canImport(Glibc)
import Glibc
#endif
import RampartSystem

/// A minimal blocking HTTP/1.1 client over a Unix domain socket, for the CLI's controller verbs
/// and the tests: one request per connection (`Connection: close`).
public struct DaemonClient: Sendable {
    public struct Response: Sendable {
        public var status: Int
        public var body: String
        /// The Retry-After header's seconds, when the daemon sent one (503: queue or connections full).
        public var retryAfter: Double? = nil
    }

    public struct ClientError: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    public let socketPath: String
    public var timeout: Double

    public init(socketPath: String, timeout: Double = 30) {
        self.socketPath = socketPath
        self.timeout = timeout
    }

    public func request(_ method: String, _ path: String, body: String? = nil) throws -> Response {
        let address: UnixSocketAddress
        do { address = try UnixSocketAddress(socketPath) } catch { throw ClientError(description: error.description) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ClientError(description: "socket: \(Errno.current)") }
        defer { close(fd) }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int(timeout.truncatingRemainder(dividingBy: 1) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        do { try address.connect(fd) } catch { throw ClientError(description: "connect \(socketPath): \(error.errno)") }
        let payload = Array((body ?? "").utf8)
        var req = "\(method) \(path) HTTP/1.1\r\nHost: rampartd\r\nConnection: close\r\nContent-Length: \(payload.count)\r\n"
        if body != nil { req += "Content-Type: application/json\r\n" }
        req += "\r\n"
        let out = Array(req.utf8) + payload
        var sent = 0
        var sendError: String?
        while sent < out.count {
            let n = out[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            // The daemon may have answered (503, connection refused over the cap) and closed
            // before reading the request: read what it said before reporting the send error.
            guard n > 0 else { sendError = "send: \(Errno.current)"; break }
            sent += n
        }
        var data: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n: Int
            do {
                n = try syscall("recv") { buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) } }
            } catch {
                if !data.isEmpty && error.errno == .ECONNRESET { break }  // closed with our request unread, after its answer
                throw ClientError(description: sendError ?? "recv: \(error.errno)")
            }
            if n == 0 { break }
            data += buf[0..<n]
        }
        if data.isEmpty, let sendError { throw ClientError(description: sendError) }
        guard let text = String(bytes: data, encoding: .utf8), let headEnd = text.range(of: "\r\n\r\n") else {
            throw ClientError(description: "malformed response from \(socketPath)")
        }
        let statusLine = text[..<headEnd.lowerBound].split(separator: "\r\n").first ?? ""
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else { throw ClientError(description: "malformed status line: \(statusLine)") }
        var retryAfter: Double?
        for line in text[..<headEnd.lowerBound].split(separator: "\r\n").dropFirst() {
            let kv = line.split(separator: ":", maxSplits: 1)
            if kv.count == 2, kv[0].lowercased() == "retry-after" { retryAfter = Double(kv[1].trimmingCharacters(in: .whitespaces)) }
        }
        return Response(status: status, body: String(text[headEnd.upperBound...]), retryAfter: retryAfter)
    }

    /// Delivers one refresh call; `wait` asks for the answer after the commit. A 503 with
    /// Retry-After (the daemon's queue or connection cap is full) is retried, `attempts` times
    /// in all, after the delay it asks for (at most 5 s).
    public func deliver(_ refresh: Refresh, wait: Bool = true, attempts: Int = 5) throws -> Response {
        var left = max(1, attempts)
        while true {
            let r = try request("POST", refresh.path + (wait ? "?wait=1" : ""))
            left -= 1
            guard r.status == 503, let delay = r.retryAfter, left > 0 else { return r }
            Thread.sleep(forTimeInterval: min(max(delay, 0.05), 5))
        }
    }

    /// The host a daemon serves (from `GET /v1/status`).
    public func host(attempts: Int = 5) throws -> String {
        var r = try request("GET", "/v1/status")
        var left = max(1, attempts) - 1
        while r.status == 503, let delay = r.retryAfter, left > 0 {  // over the connection cap
            Thread.sleep(forTimeInterval: min(max(delay, 0.05), 5))
            r = try request("GET", "/v1/status")
            left -= 1
        }
        guard let status = try? JSONDecoder().decode(StatusHost.self, from: Data(r.body.utf8)) else {
            throw ClientError(description: "unexpected status answer: \(r.body)")
        }
        return status.host
    }

    /// The one field of the daemon's status the controller reads.
    private struct StatusHost: Decodable { var host: String }
}

/// Delivers a verb's fan-out to the daemons listening on local sockets (the SQLite store; with
/// PostgreSQL the change log delivers): the controller verbs and the EC2 API share it.
public struct SocketDelivery: Sendable {
    /// What became of one refresh call.
    public enum Outcome: Sendable {
        /// Delivered and applied (the daemon's answer).
        case sent(String)
        /// Delivered; the daemon answered with an error status.
        case failed(status: Int, body: String)
        /// No daemon among the sockets serves the host.
        case noDaemon
        /// The call could not be made.
        case error(String)

        public var isFailure: Bool {
            switch self {
            case .failed, .error: true
            case .sent, .noDaemon: false
            }
        }
    }

    public let sockets: [String]
    private let known = KnownHosts()
    public init(sockets: [String]) { self.sockets = sockets }

    /// The daemons among the sockets that exist and answer, by the host each serves. A socket's
    /// host is asked (`GET /v1/status`) once per socket file: it is remembered with the file's
    /// identity (device, inode, change time), and asked again only when the file was made anew
    /// (a restarted daemon binds a new socket). A long-running caller (the EC2 API) thus pays
    /// one `stat` per socket and delivery, not a status call per socket (~1 ms each).
    public func daemons() -> [String: DaemonClient] {
        var out: [String: DaemonClient] = [:]
        for path in sockets {
            var st = stat()
            guard stat(path, &st) == 0 else { known.forget(path); continue }
            let identity = KnownHosts.Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino),
                                               changed: Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec))
            let c = DaemonClient(socketPath: path)
            if let h = known.host(path, identity) {
                out[h] = c
            } else if let h = try? c.host() {
                known.remember(path, identity, h)
                out[h] = c
            }
        }
        return out
    }

    /// Delivers each call, in order, to the daemon of its host. A call that cannot be made
    /// forgets what was remembered of that socket (the next delivery asks it again).
    public func deliver(_ deliveries: [Delivery]) -> [(Delivery, Outcome)] {
        guard !deliveries.isEmpty else { return [] }
        let daemons = daemons()
        return deliveries.map { d in
            guard let c = daemons[d.host] else { return (d, .noDaemon) }
            do {
                let r = try c.deliver(d.refresh)
                let body = r.body.trimmingCharacters(in: .whitespacesAndNewlines)
                return (d, r.status == 200 ? .sent(body) : .failed(status: r.status, body: body))
            } catch {
                known.forget(c.socketPath)
                return (d, .error("\(error)"))
            }
        }
    }
}

/// The host each socket file's daemon serves, as asked once per file identity.
final class KnownHosts: @unchecked Sendable {
    struct Identity: Hashable {
        var device: UInt64
        var inode: UInt64
        var changed: Int64
    }
    private let lock = NSLock()
    private var hosts: [String: (Identity, String)] = [:]

    func host(_ path: String, _ identity: Identity) -> String? {
        lock.withLock { hosts[path].flatMap { $0.0 == identity ? $0.1 : nil } }
    }

    func remember(_ path: String, _ identity: Identity, _ host: String) {
        lock.withLock { hosts[path] = (identity, host) }
    }

    func forget(_ path: String) {
        lock.withLock { hosts[path] = nil }
    }
}
