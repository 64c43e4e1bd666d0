import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOConcurrencyHelpers
import RampartHTTP
import RampartSystem
#if canImport(Glibc)
import Glibc
#endif

/// The API served over HTTP/1.1 on a Unix domain socket (SwiftNIO). The socket is created with
/// mode 0600 (umask 0177 around bind), so only its owner (root) can connect.
///
/// Limits (each a `rampartd` flag): a connection with no complete request within `idleTimeout`
/// seconds of opening or of its last answer is closed (a client that sends nothing, or trickles
/// bytes, cannot hold a connection); beyond `maxConnections` open connections a new one is
/// answered 503 with Retry-After and closed at once, so idle sockets cannot lock clients out
/// for longer than the idle timeout.
public final class APIServer: Sendable {
    public struct Limits: Sendable {
        public var idleTimeout: Double
        public var maxConnections: Int
        public init(idleTimeout: Double = 10, maxConnections: Int = 128) {
            self.idleTimeout = idleTimeout
            self.maxConnections = max(1, maxConnections)
        }
    }

    public let socketPath: String
    public let router: APIRouter
    public let limits: Limits
    private let group: MultiThreadedEventLoopGroup
    private let channel: NIOLockedValueBox<Channel?> = NIOLockedValueBox(nil)
    private let bound: NIOLockedValueBox<(dev: UInt64, ino: UInt64)?> = NIOLockedValueBox(nil)
    private let logger: Logger
    private let cap: ConnectionCap

    public init(socketPath: String, router: APIRouter, limits: Limits = Limits(), logger: Logger = Logger(label: "rampartd.api")) {
        self.socketPath = socketPath
        self.router = router
        self.limits = limits
        cap = ConnectionCap(maxConnections: limits.maxConnections, refusal: Self.refusal)
        self.logger = logger
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    /// Connections open now (for tests and status).
    public var openConnections: Int { cap.openConnections }

    /// Binds the socket (replacing a stale one) and starts accepting.
    /// `mode` and `group` open the socket to a group of non-root clients when asked (the default
    /// is root only).
    ///
    /// Nothing but a socket is ever replaced, and nothing is followed through a symbolic link:
    /// the socket's directory must be owned by this user and writable by nobody else (so no one
    /// else can swap the entry between our checks and our calls); the entry is examined with
    /// `fstatat(AT_SYMLINK_NOFOLLOW)` relative to that directory's descriptor; a stale socket is
    /// removed with `unlinkat`; anything else at the path (a regular file, a directory, a
    /// symbolic link) is refused untouched. `bind` creates the socket 0600 (its mode set before
    /// `bind`, see `boundSocket`: no window in which others could connect) and never follows a link (it fails if the path
    /// exists); the group and mode are then set with `fchownat`/`fchmodat` with
    /// `AT_SYMLINK_NOFOLLOW` (the socket inode's own `fchmod` would not change the path's
    /// permissions, which are what `connect` checks).
    public func start(mode: mode_t = 0o600, group gid: gid_t? = nil) async throws {
        try await startListening(mode: mode, group: gid)
    }

    /// A Unix stream socket bound at `path`, created 0600 without touching the process's umask:
    /// on Linux, a socket's mode set with `fchmod` before `bind` is the mode `bind` gives the new
    /// file (less the umask). Changing the umask instead (as this did) is process-wide: a thread
    /// creating a directory meanwhile got it without search permission (seen: a test process's
    /// PostgreSQL data directory, created while a daemon bound its socket, refused to initdb).
    static func boundSocket(_ path: String) throws -> CInt {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ServerError(description: "socket(AF_UNIX): \(errno())") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let fits = withUnsafeMutableBytes(of: &addr.sun_path) { buf -> Bool in
            guard bytes.count < buf.count else { return false }
            for (i, b) in bytes.enumerated() { buf[i] = b }
            return true
        }
        let bound = fits && fchmod(fd, 0o600) == 0 && withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        } == 0
        guard bound else {
            let e = errno()
            close(fd)
            throw ServerError(description: "bind \(path): \(fits ? e : "path too long")")
        }
        return fd
    }

    private func startListening(mode: mode_t, group gid: gid_t?) async throws {
        // A path that does not fit a sockaddr_un is refused by name, before anything is touched.
        do { _ = try UnixSocketAddress(socketPath) } catch { throw ServerError(description: error.description) }
        var dir = (socketPath as NSString).deletingLastPathComponent
        if dir.isEmpty { dir = "." }
        let name = (socketPath as NSString).lastPathComponent
        var st = stat()
        if lstat(dir, &st) != 0 {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            chmod(dir, 0o755)
        }
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0 else { throw ServerError(description: "cannot open the socket's directory \(dir): \(Self.errno())") }
        defer { close(dfd) }
        guard fstat(dfd, &st) == 0 else { throw ServerError(description: "\(dir): \(Self.errno())") }
        if st.st_uid != geteuid() || st.st_mode & 0o022 != 0 {
            throw ServerError(description: "the socket's directory \(dir) (owner uid \(st.st_uid), mode \(String(st.st_mode & 0o7777, radix: 8))) "
                + "must be owned by uid \(geteuid()) and not writable by group or others")
        }
        if fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else {
                throw ServerError(description: "\(socketPath) exists and is \(Self.kind(st.st_mode)), not a socket; not replacing it (choose another --socket or remove it)")
            }
            if Self.someoneListens(on: socketPath) {
                throw ServerError(description: "another process is serving on \(socketPath); not replacing its socket")
            }
            // a stale socket left by a crash
            if unlinkat(dfd, name, 0) != 0 && Glibc.errno != ENOENT {
                throw ServerError(description: "cannot remove the stale socket \(socketPath): \(Self.errno())")
            }
        } else if Glibc.errno != ENOENT {
            throw ServerError(description: "\(socketPath): \(Self.errno())")
        }
        let router = self.router
        let logger = self.logger
        let limits = self.limits
        let cap = self.cap
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .childChannelInitializer { channel in
                cap.initialize(channel) { HTTPHandler(router: router, logger: logger, idleTimeout: limits.idleTimeout) }
            }
        let ch: Channel
        let fd = try Self.boundSocket(socketPath)
        do {
            ch = try await bootstrap.withBoundSocket(fd).get()
        } catch {
            // NIO owns the descriptor once handed over (it closes it when the channel fails):
            // closing it here too could close another thread's new file with the same number.
            unlinkat(dfd, name, 0)
            throw error
        }
        do {
            // Created 0600 (see boundSocket); a kernel that ignored the mode fails closed.
            guard fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & 0o077 == 0 else {
                throw ServerError(description: "\(socketPath) was not created private (mode \(String(st.st_mode & 0o7777, radix: 8))); not serving on it")
            }
            if let gid, fchownat(dfd, name, uid_t.max, gid, AT_SYMLINK_NOFOLLOW) != 0 {
                throw ServerError(description: "chown \(socketPath) to group \(gid): \(Self.errno())")
            }
            if mode != 0o600, fchmodat(dfd, name, mode, AT_SYMLINK_NOFOLLOW) != 0 {
                throw ServerError(description: "chmod \(String(mode, radix: 8)) \(socketPath): \(Self.errno())")
            }
            guard fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & S_IFMT == S_IFSOCK else {
                throw ServerError(description: "\(socketPath) is not our socket after bind")
            }
        } catch {
            try? await ch.close()
            unlinkat(dfd, name, 0)
            throw error
        }
        bound.withLockedValue { $0 = (UInt64(st.st_dev), UInt64(st.st_ino)) }
        channel.withLockedValue { $0 = ch }
    }

    public func stop() async {
        let ch = channel.withLockedValue { c -> Channel? in let x = c; c = nil; return x }
        try? await ch?.close()
        // Remove the socket only if the path still is the one we bound.
        if let b = bound.withLockedValue({ v -> (dev: UInt64, ino: UInt64)? in let x = v; v = nil; return x }) {
            var st = stat()
            if lstat(socketPath, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK, UInt64(st.st_dev) == b.dev, UInt64(st.st_ino) == b.ino {
                unlink(socketPath)
            }
        }
        try? await group.shutdownGracefully()
    }

    static func errno() -> String { Errno.current.description }

    static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: "a regular file"
        case S_IFDIR: "a directory"
        case S_IFLNK: "a symbolic link"
        case S_IFIFO: "a FIFO"
        case S_IFCHR, S_IFBLK: "a device"
        default: "not a socket"
        }
    }
}

public struct ServerError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

extension APIServer {
    /// Whether a process accepts connections on the Unix socket at `path`.
    static func someoneListens(on path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        guard let address = try? UnixSocketAddress(path) else { return false }
        return (try? address.connect(fd)) != nil
    }
}

private final class HTTPHandler: IdleClosingHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let router: APIRouter
    let logger: Logger
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false
    let idle: IdleDeadline

    init(router: APIRouter, logger: Logger, idleTimeout: Double) {
        self.router = router
        self.logger = logger
        idle = IdleDeadline(seconds: idleTimeout)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
            tooLarge = false
        case .body(var buf):
            if body.count + buf.readableBytes > APIRouter.maxBody {
                tooLarge = true
            } else if let bytes = buf.readBytes(length: buf.readableBytes) {
                body += bytes
            }
        case .end:
            guard let h = head else { return }
            head = nil
            idle.begin()
            let keepAlive = h.isKeepAlive && !tooLarge
            if tooLarge {
                write(context: context, response: .error(413, "request body larger than \(APIRouter.maxBody) bytes"), version: h.version, keepAlive: false)
                return
            }
            let router = self.router
            let req = (h.method.rawValue, h.uri, body)
            body = []
            let promise = context.eventLoop.makePromise(of: APIResponse.self)
            router.handle(method: req.0, uri: req.1, body: req.2) { promise.succeed($0) }
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            promise.futureResult.whenSuccess { resp in
                let (handler, ctx) = bound.value
                handler.write(context: ctx, response: resp, version: h.version, keepAlive: keepAlive)
            }
        }
    }

    func write(context: ChannelHandlerContext, response: APIResponse, version: HTTPVersion, keepAlive: Bool) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.utf8.count))
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        for (k, v) in response.headers { headers.add(name: k, value: v) }
        let head = HTTPResponseHead(version: version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        var buf = context.channel.allocator.buffer(capacity: response.body.utf8.count)
        buf.writeString(response.body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buf))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        idle.answered(context, keepAlive: keepAlive)
        if !keepAlive {
            let ch = context.channel
            done.whenComplete { _ in ch.close(promise: nil) }
        }
    }
}

extension APIServer {
    /// The answer to a connection over the cap.
    static let refusal = ConnectionRefuser.serviceUnavailable(contentType: "application/json", body: APIResponse.error(503, "too many connections; retry later").body)
}
