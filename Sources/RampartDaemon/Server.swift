import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOConcurrencyHelpers

/// The API served over HTTP/1.1 on a Unix domain socket (SwiftNIO). The socket is created with
/// mode 0600 (umask 0177 around bind), so only its owner (root) can connect.
public final class APIServer: Sendable {
    public let socketPath: String
    public let router: APIRouter
    private let group: MultiThreadedEventLoopGroup
    private let channel: NIOLockedValueBox<Channel?> = NIOLockedValueBox(nil)
    private let logger: Logger

    public init(socketPath: String, router: APIRouter, logger: Logger = Logger(label: "rampartd.api")) {
        self.socketPath = socketPath
        self.router = router
        self.logger = logger
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    /// Binds the socket (replacing a stale one) and starts accepting.
    /// `mode` and `group` open the socket to a group of non-root clients when asked (the default
    /// is root only).
    public func start(mode: mode_t = 0o600, group gid: gid_t? = nil) async throws {
        let dir = (socketPath as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755]) }
        if Self.someoneListens(on: socketPath) {
            throw ServerError(description: "another process is serving on \(socketPath); not replacing its socket")
        }
        unlink(socketPath)  // a stale socket left by a crash
        let router = self.router
        let logger = self.logger
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(HTTPHandler(router: router, logger: logger))
                }
            }
        let old = umask(0o177)
        defer { umask(old) }
        let ch = try await bootstrap.bind(unixDomainSocketPath: socketPath).get()
        if let gid, chown(socketPath, uid_t.max, gid) != 0 {
            throw ServerError(description: "chown \(socketPath) to group \(gid): \(String(cString: strerror(errno)))")
        }
        chmod(socketPath, mode)
        channel.withLockedValue { $0 = ch }
    }

    public func stop() async {
        let ch = channel.withLockedValue { c -> Channel? in let x = c; c = nil; return x }
        try? await ch?.close()
        unlink(socketPath)
        try? await group.shutdownGracefully()
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
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return rc == 0
    }
}

private final class HTTPHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let router: APIRouter
    let logger: Logger
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false

    init(router: APIRouter, logger: Logger) {
        self.router = router
        self.logger = logger
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
        if !keepAlive {
            let ch = context.channel
            done.whenComplete { _ in ch.close(promise: nil) }
        }
    }
}
